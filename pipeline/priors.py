"""Scene priors estimated from the training split: what PhysFit may know of the scenes beyond the
calibrated sensor (brightness range, target counts, group size and shape, PSF width, background
level).

A real sensor gives the PSF, bit depth, saturation and noise (:class:`~pipeline.sensor.Sensor`);
everything about the *scenes* must be learnt from data, as the networks learn it. This module
measures it on the annotated training split; the ``priors`` stage writes the result as JSON
(``reports/priors.json``) so it can be read and compared with the simulator's settings.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Mapping

import numpy as np
import pandas as pd
from scipy import optimize

from pipeline.config import ConfigError
from pipeline.data import SplitData
from pipeline.physics import render_batch
from pipeline.sensor import Sensor

BRIGHTNESS_QUANTILES = (0.01, 0.99)  # the brightness range is the central 98% of training targets
PSF_SEARCH = (0.5, 2.0)  # the PSF std is searched in [0.5, 2] x the sensor's value
COMPASS_DIRECTIONS = ((-1.0, 0.0), (1.0, 0.0), (0.0, -1.0), (0.0, 1.0))  # unit (dx, dy): up, down, left, right
CROSS_QUANTILE = 0.99  # the cross deviation reported is this quantile over the training groups


PRIOR_LOWER_BOUNDS = {  # field: (lowest value, whether the bound itself is refused): what a measurement can give
    "spread": (0.0, False), "separation": (0.0, False), "cross_deviation": (0.0, False), "psf_sigma": (0.0, True),
    "frames": (1, False), "targets": (1, False),
}


@dataclasses.dataclass(frozen=True)
class ScenePriors:
    """Scene statistics of a training split. Lengths in LR px, brightness in counts.

    brightness_low, brightness_high: 1st and 99th percentile of target brightness.
    k_min, k_max: fewest and most targets in a training frame.
    spread: median distance of a target from the centroid of its frame's targets.
    separation: median distance of a target to its nearest neighbour (frames with >= 2 targets).
    cross_deviation: how far the training groups are from compass crosses: the 99th percentile,
        over frames with 2-4 targets, of the rms distance of the targets from the best-fitting
        cross (a common point plus one common distance along distinct compass directions);
        ``spread`` when no frame has 2-4 targets.
    psf_sigma: Gaussian PSF std that best renders the training frames from their annotations
        (unclipped pixels, a constant level per frame fitted alongside); compare with the sensor's.
    background: median pixel value of the training frames.
    frames, targets: how many training frames and targets were measured.
    """

    brightness_low: float
    brightness_high: float
    k_min: int
    k_max: int
    spread: float
    separation: float
    cross_deviation: float
    psf_sigma: float
    background: float
    frames: int
    targets: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, given: Mapping, source: str = "priors") -> "ScenePriors":
        """Priors from a mapping (a priors JSON), checking that every field is there and numeric."""
        names = [field.name for field in dataclasses.fields(cls)]
        missing = [name for name in names if name not in given]
        if missing:
            raise ConfigError(f"{source}: missing scene prior(s) {', '.join(missing)}; rerun the priors stage")
        values = {}
        for field in dataclasses.fields(cls):
            value = given[field.name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ConfigError(f"{source}: scene prior {field.name} = {value!r} is not a finite number")
            values[field.name] = int(value) if field.type == "int" else float(value)
        priors = cls(**values)
        for name, (lower, strict) in PRIOR_LOWER_BOUNDS.items():
            value = getattr(priors, name)
            if value < lower or (strict and value == lower):
                raise ConfigError(f"{source}: scene prior {name} = {value!r} must be {'>' if strict else '>='} {lower}; "
                                  "rerun the priors stage (dvc repro priors)")
        if not 0 < priors.brightness_low <= priors.brightness_high:
            raise ConfigError(f"{source}: need 0 < brightness_low <= brightness_high, got "
                              f"{priors.brightness_low}, {priors.brightness_high}")
        if not 1 <= priors.k_min <= priors.k_max:
            raise ConfigError(f"{source}: need 1 <= k_min <= k_max, got {priors.k_min}, {priors.k_max}")
        return priors


def _padded_positions(targets: pd.DataFrame, n_frames: int) -> np.ndarray:
    """(N, K_max, 2) target positions of every frame holding targets, NaN-padded."""
    key = targets["t"].to_numpy() * n_frames + targets["f"].to_numpy()
    order = np.argsort(key, kind="stable")
    key = key[order]
    xy = targets[["x", "y"]].to_numpy()[order]
    _, first, counts = np.unique(key, return_index=True, return_counts=True)
    slot = np.arange(len(key)) - np.repeat(first, counts)
    frame = np.repeat(np.arange(len(counts)), counts)
    out = np.full((len(counts), counts.max(), 2), np.nan)
    out[frame, slot] = xy
    return out


def _geometry(positions: np.ndarray) -> tuple[float, float]:
    """(median distance to the frame's centroid, median nearest-neighbour distance)."""
    centroid = np.nanmean(positions, axis=1, keepdims=True)
    to_centre = np.linalg.norm(positions - centroid, axis=2)
    pair = np.linalg.norm(positions[:, :, None] - positions[:, None, :], axis=3)
    k = positions.shape[1]
    pair[:, np.arange(k), np.arange(k)] = np.nan
    nearest = np.nanmin(np.where(np.isnan(pair), np.inf, pair), axis=2)
    nearest = nearest[np.isfinite(nearest)]
    return float(np.nanmedian(to_centre)), float(np.median(nearest)) if nearest.size else 0.0


def refine_directions(directions) -> tuple[tuple[float, float], ...]:
    """The unit ``directions`` (dx, dy) followed by the bisector of every two angularly adjacent
    ones: a rose of twice the arms at half the angular step (the compass cross -> its eight points)."""
    dirs = np.asarray(directions, dtype=np.float64)
    angle = np.sort(np.arctan2(dirs[:, 1], dirs[:, 0]))
    gap = np.diff(np.append(angle, angle[0] + 2.0 * np.pi))
    middle = angle + gap / 2.0
    bisectors = np.stack([np.cos(middle), np.sin(middle)], axis=1)
    return tuple(map(tuple, dirs.tolist())) + tuple(map(tuple, bisectors.tolist()))


@functools.lru_cache(maxsize=64)
def _ordered_assignments(directions: tuple[tuple[float, float], ...], k: int) -> np.ndarray:
    """(C, K, 2): for every K-subset of ``directions`` and every cyclic shift h, the direction of
    the i-th target in angular order, subset[(i + h) mod K] (the subset sorted by angle)."""
    dirs = np.asarray(directions, dtype=np.float64)
    by_angle = dirs[np.argsort(np.arctan2(dirs[:, 1], dirs[:, 0]))]
    return np.stack([np.roll(by_angle[list(subset)], -shift, axis=0)
                     for subset in itertools.combinations(range(len(dirs)), k) for shift in range(k)])


def best_crosses(positions: np.ndarray, directions=COMPASS_DIRECTIONS) -> tuple[np.ndarray, np.ndarray]:
    """Best-fitting cross of each group: a common point c plus one common distance r >= 0 along
    distinct ``directions`` d_k, least squares.

    positions: (N, K, 2) groups of 2 <= K <= len(directions) targets (LR px). Returns the rms
    distance of the targets from that cross (N,) and the direction of each target (N, K, 2).
    For given directions the fit is closed-form: r = max(0, sum (p_k - p_mean).(d_k - d_mean)) /
    sum |d_k - d_mean|^2, c = p_mean - r d_mean. The directions tried are every K-subset matched
    to the targets in their angular order around the group's centroid (the order of points on a
    circle seen from inside their hull), at every cyclic shift: C(n, K) K options for n directions
    instead of n! / (n - K)!.
    """
    positions = np.asarray(positions, dtype=np.float64)
    n, k, _ = positions.shape
    if not 2 <= k <= len(directions):
        raise ValueError(f"a cross of {len(directions)} directions holds 2 to {len(directions)} targets, got {k}")
    centred = positions - positions.mean(axis=1, keepdims=True)
    order = np.argsort(np.arctan2(centred[..., 1], centred[..., 0]), axis=1, kind="stable")  # (N, K)
    ranked = np.take_along_axis(centred, order[..., None], axis=1)
    options = _ordered_assignments(tuple(map(tuple, np.asarray(directions, dtype=np.float64).tolist())), k)
    options_centred = options - options.mean(axis=1, keepdims=True)
    overlap = np.einsum("nki,cki->nc", ranked, options_centred).clip(min=0.0)  # r >= 0
    misfit = (ranked ** 2).sum(axis=(1, 2))[:, None] - overlap ** 2 / (options_centred ** 2).sum(axis=(1, 2))
    best = misfit.argmin(axis=1)
    assigned = np.empty_like(positions)
    np.put_along_axis(assigned, order[..., None], options[best], axis=1)
    rms = np.sqrt(np.maximum(misfit[np.arange(n), best], 0.0) / k)
    return rms, assigned


def cross_deviations(positions: np.ndarray, directions=COMPASS_DIRECTIONS) -> np.ndarray:
    """Rms distance (LR px) of each group's targets (N, K, 2) from its best-fitting cross (see
    :func:`best_crosses`). Returns (N,)."""
    return best_crosses(positions, directions)[0]


def _cross_deviation(positions: np.ndarray, spread: float) -> float:
    """CROSS_QUANTILE of :func:`cross_deviations` over the groups of 2-4 targets of NaN-padded
    positions (N, K_max, 2); ``spread`` when there are none."""
    counts = (~np.isnan(positions[..., 0])).sum(axis=1)
    found = [cross_deviations(positions[counts == k][:, :k]) for k in range(2, len(COMPASS_DIRECTIONS) + 1)
             if np.any(counts == k)]
    return float(np.quantile(np.concatenate(found), CROSS_QUANTILE)) if found else spread


def estimate_psf_sigma(images: np.ndarray, x: np.ndarray, y: np.ndarray, brightness: np.ndarray,
                       sensor: Sensor) -> float:
    """Gaussian PSF std (LR px) that renders ``images`` (N, m, m) best from the annotated targets
    (N, K) arrays (zero brightness = no target): least squares over the pixels strictly inside the
    sensor's range (clipped ones carry no value), with one constant level per frame fitted in
    closed form; a bounded scalar search in PSF_SEARCH x the sensor's std."""
    images = np.asarray(images, dtype=np.float64)
    usable = np.ones_like(images, dtype=bool)
    if sensor.quantised:
        usable &= images > 0
        if sensor.clip_high is not None:
            usable &= images < sensor.clip_high
    weight = usable.astype(np.float64)
    n_used = np.maximum(weight.sum(axis=(1, 2)), 1.0)

    def misfit(sigma: float) -> float:
        residual = images - render_batch(x, y, brightness, images.shape[-1], sigma)
        level = (residual * weight).sum(axis=(1, 2)) / n_used
        return float((((residual - level[:, None, None]) * weight) ** 2).sum())

    low, high = (bound * sensor.psf_sigma for bound in PSF_SEARCH)
    result = optimize.minimize_scalar(misfit, bounds=(low, high), method="bounded", options={"xatol": 1e-5})
    return float(result.x)


def estimate_priors(data: SplitData, sensor: Sensor, psf_frames: int) -> ScenePriors:
    """Scene priors of an annotated split (see :class:`ScenePriors`); the PSF std is fitted on
    ``psf_frames`` frames spread evenly over the split."""
    targets = data.targets
    if targets.empty:
        raise ValueError("the training split has no targets to estimate scene priors from")
    brightness = targets["brightness"].to_numpy()
    low, high = np.quantile(brightness, BRIGHTNESS_QUANTILES)
    counts = targets.groupby(["t", "f"]).size().to_numpy()
    positions = _padded_positions(targets, data.n_frames)
    spread, separation = _geometry(positions)

    n_total = data.images.shape[0] * data.n_frames
    chosen = np.unique(np.linspace(0, n_total - 1, min(psf_frames, n_total)).round().astype(int))
    t, f = np.divmod(chosen, data.n_frames)
    truths = data.frame_targets(t, f)
    k = max(1, max(len(truth) for truth in truths))
    arrays = np.zeros((3, len(chosen), k))
    for i, truth in enumerate(truths):
        arrays[:, i, :len(truth)] = truth.T
    sigma = estimate_psf_sigma(data.images[t, f], arrays[0], arrays[1], arrays[2], sensor)
    return ScenePriors(brightness_low=float(low), brightness_high=float(high), k_min=int(counts.min()),
                       k_max=int(counts.max()), spread=spread, separation=separation,
                       cross_deviation=_cross_deviation(positions, spread), psf_sigma=sigma,
                       background=float(np.median(data.images)), frames=int(n_total), targets=int(len(targets)))
