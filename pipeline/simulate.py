"""The SeqCSIST simulator (papers/001 section III, docs/design.md "Simulation").

Per trajectory: a reference point starts at (x0, f(x0)), x0 an integer off the image border, and
moves ``step`` px per frame along x (forwards if x0 is left of the centre, else backwards),
staying on a random curve f (line, quadratic, circle arc). K targets sit in K distinct compass
directions at ``distance`` px from it (``layout: arms``; or, ``layout: disc``, at uniform random
points of the disc of radius ``distance`` around it) and drift outward by U(0, ``drift_max``) px
each frame.
Frames are rendered from the continuous positions with the closed-form pixel integral, then the
sensor model adds Gaussian noise and quantises. Optionally the targets sit on a background
(``background``: a seeded synthetic clutter field, or random crops of the user's own infrared
images), fixed per trajectory and added before the sensor. Everything is vectorised over
trajectories and frames; the scene's random draws come from one ``numpy.random.Generator`` seeded
by ``seed``, the background's from a second one seeded by ``[seed, 1]`` (so a dataset without a
background is the same with or without this option) and the disc layout's from a third, ``[seed, 2]``
(the same trajectories, counts and brightness as the arms layout, only the targets placed otherwise).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from scipy import ndimage

from pipeline.config import ConfigError
from pipeline.settings import ClutterConfig, SimulateConfig
from pipeline.images import read_background_images
from pipeline.physics import render_batch
from pipeline.sensor import Sensor

_DIAGONAL = 1.0 / np.sqrt(2.0)
# (dx, dy) unit vectors: up, down, left, right (x is the row), then the four diagonals.
DIRECTIONS = np.array([
    [-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0],
    [-_DIAGONAL, -_DIAGONAL], [-_DIAGONAL, _DIAGONAL], [_DIAGONAL, -_DIAGONAL], [_DIAGONAL, _DIAGONAL],
])
CARDINAL = 4


def _check_geometry(config: SimulateConfig, sensor: Sensor) -> None:
    """Cross-key checks: the path must stay on the circle, a clutter level below full scale."""
    travel = config.step * (config.frames - 1)
    if "circle" in config.curves and config.circle_radius[0] <= 2 * travel:
        raise ConfigError(
            f"simulate.circle_radius = {list(config.circle_radius)} is invalid: the low end must exceed "
            f"2 * step * (frames - 1) = {2 * travel:g} so the path stays on the arc")
    full_scale = sensor.full_scale
    if config.background == "clutter" and full_scale is not None and config.clutter.level[1] >= full_scale:
        raise ConfigError(
            f"simulate.clutter.level = {list(config.clutter.level)} is invalid: the mean level must stay below the "
            f"sensor's full scale {full_scale:g} (sensor.bit_depth = {sensor.bit_depth}), else the frames saturate")


def _curve_offsets(config: SimulateConfig, rng: np.random.Generator, dx: np.ndarray,
                   n: int) -> np.ndarray:
    """y(x0 + dx) - y(x0) for each trajectory's random curve; dx (T, F) -> (T, F)."""
    kind = rng.integers(0, len(config.curves), n)
    slope = rng.uniform(-config.line_slope_max, config.line_slope_max, n)
    curvature = rng.uniform(-config.quadratic_curvature_max, config.quadratic_curvature_max, n)
    radius = rng.uniform(*config.circle_radius, n)
    centre_shift = rng.uniform(-0.5, 0.5, n) * radius  # x0 - x_centre of the circle
    bulge = rng.choice([-1.0, 1.0], n)  # upper or lower half of the circle
    line = slope[:, None] * dx
    quadratic = line + curvature[:, None] * dx ** 2
    along = centre_shift[:, None] + dx
    circle = bulge[:, None] * (np.sqrt(radius[:, None] ** 2 - along ** 2)
                               - np.sqrt(radius ** 2 - centre_shift ** 2)[:, None])
    by_type = {"line": line, "quadratic": quadratic, "circle": circle}
    names = np.array(config.curves)[kind]
    offsets = np.zeros_like(dx)
    for name, values in by_type.items():
        offsets = np.where((names == name)[:, None], values, offsets)
    return offsets


def _disc_layout(config: SimulateConfig, n: int, k_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Directions (T, K, 2) and starting radii (T, 1, K) of targets uniform in the disc of radius
    ``distance`` around the reference point (seeded by ``[seed, 2]``)."""
    rng = np.random.default_rng([config.seed, 2])
    angle = rng.uniform(0.0, 2.0 * np.pi, (n, k_max))
    radius = config.distance * np.sqrt(rng.random((n, 1, k_max)))
    return np.stack([np.cos(angle), np.sin(angle)], axis=2), radius


def clutter_backgrounds(clutter: ClutterConfig, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(n, size, size) smooth random fields: white noise blurred by a Gaussian of std
    ``correlation`` (on a patch padded by 3 std, then cropped), centred and scaled to std
    ``amplitude`` over the frame, plus a mean level drawn per field from ``level``."""
    pad = int(np.ceil(3 * clutter.correlation))
    white = rng.standard_normal((n, size + 2 * pad, size + 2 * pad))
    field = ndimage.gaussian_filter(white, sigma=(0, clutter.correlation, clutter.correlation))[:, pad:pad + size,
                                                                                             pad:pad + size]
    field = field - field.mean(axis=(1, 2), keepdims=True)
    field = field / np.maximum(field.std(axis=(1, 2), keepdims=True), 1e-12)
    level = rng.uniform(*clutter.level, n)
    return level[:, None, None] + clutter.amplitude * field


def image_backgrounds(images: list[np.ndarray], n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(n, size, size) crops: per field a random image of ``images`` and a random position in it."""
    which = rng.integers(0, len(images), n)
    corner = rng.random((n, 2))
    out = np.empty((n, size, size))
    for index, image in enumerate(images):
        rows = np.flatnonzero(which == index)
        if rows.size:
            top = np.floor(corner[rows, 0] * (image.shape[0] - size + 1)).astype(int)
            left = np.floor(corner[rows, 1] * (image.shape[1] - size + 1)).astype(int)
            out[rows] = np.lib.stride_tricks.sliding_window_view(image, (size, size))[top, left]
    return out


def backgrounds(config: SimulateConfig, n: int, sensor: Sensor) -> np.ndarray | None:
    """The per-trajectory background (n, size, size) in counts, or None for ``background: none``;
    the user's images must hold values the sensor can record (finite, >= 0, <= full scale)."""
    rng = np.random.default_rng([config.seed, 1])
    size = sensor.frame_size
    if config.background == "clutter":
        return clutter_backgrounds(config.clutter, n, size, rng)
    if config.background == "images":
        images = read_background_images(config.background_dir, size, sensor.full_scale)
        return image_backgrounds(images, n, size, rng)
    return None


def simulate_arrays(config: SimulateConfig, sensor: Sensor) -> dict[str, np.ndarray]:
    """Simulate all trajectories as arrays, recorded through ``sensor``.

    Returns x, y, brightness, active (T, F, K_max) target arrays in LR px / counts (inactive
    slots are 0), n_targets (T,), and images (T, F, size, size) float32 after the sensor model
    (targets plus the trajectory's background, if any).
    """
    _check_geometry(config, sensor)
    n, frames, k_max, size = config.trajectories, config.frames, config.k_max, sensor.frame_size
    background = backgrounds(config, n, sensor)
    rng = np.random.default_rng(config.seed)
    centre = (size - 1) / 2
    x0 = rng.integers(1, size - 1, n).astype(np.float64)
    y0 = rng.uniform(1.0, size - 2.0, n)
    heading = np.where(x0 < centre, 1.0, -1.0)
    dx = heading[:, None] * config.step * np.arange(frames)[None, :]  # (T, F)
    ref_x = x0[:, None] + dx
    ref_y = y0[:, None] + _curve_offsets(config, rng, dx, n)

    n_targets = rng.integers(config.k_min, k_max + 1, n)
    n_directions = CARDINAL if k_max <= CARDINAL else len(DIRECTIONS)
    direction_index = np.argsort(rng.random((n, n_directions)), axis=1)[:, :k_max]  # (T, K)
    direction = DIRECTIONS[direction_index]  # (T, K, 2)
    drift = rng.uniform(0.0, config.drift_max, (n, frames, k_max))
    drift[:, 0] = 0.0
    start = np.full((n, 1, k_max), config.distance)
    if config.layout == "disc":
        direction, start = _disc_layout(config, n, k_max)
    radius = start + np.cumsum(drift, axis=1)  # (T, F, K)
    brightness = rng.uniform(*config.brightness, (n, k_max))
    active = np.arange(k_max)[None, :] < n_targets[:, None]  # (T, K)

    x = ref_x[:, :, None] + radius * direction[:, None, :, 0]
    y = ref_y[:, :, None] + radius * direction[:, None, :, 1]
    active_tfk = np.broadcast_to(active[:, None, :], x.shape)
    b = np.where(active_tfk, brightness[:, None, :], 0.0)
    x, y = np.where(active_tfk, x, 0.0), np.where(active_tfk, y, 0.0)
    clean = render_batch(x.reshape(n * frames, k_max), y.reshape(n * frames, k_max),
                         b.reshape(n * frames, k_max), size, sensor.psf_sigma).reshape(n, frames, size, size)
    if background is not None:
        clean = clean + background[:, None]
    images = sensor.record(clean, rng)
    return {"x": x, "y": y, "brightness": b, "active": active_tfk, "n_targets": n_targets, "images": images}


def to_tables(arrays: Mapping[str, np.ndarray]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Frames and targets tables (the data contract) from ``simulate_arrays`` output."""
    images = arrays["images"]
    n, frames = images.shape[:2]
    trajectory, frame = np.meshgrid(np.arange(n), np.arange(frames), indexing="ij")
    flat_images = images.reshape(n * frames, -1)
    frames_df = pd.DataFrame({
        "trajectory": trajectory.ravel().astype(np.int64),
        "frame": frame.ravel().astype(np.int64),
        "image": list(flat_images),
        "n_targets": np.repeat(arrays["n_targets"], frames).astype(np.int64),
    })
    t, f, k = np.nonzero(arrays["active"])
    targets_df = pd.DataFrame({
        "trajectory": t.astype(np.int64),
        "frame": f.astype(np.int64),
        "target": k.astype(np.int64),
        "x": arrays["x"][t, f, k],
        "y": arrays["y"][t, f, k],
        "brightness": arrays["brightness"][t, f, k],
    })
    return frames_df, targets_df


def simulate(section: Mapping | SimulateConfig, sensor: Sensor) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate the dataset from the ``simulate`` section of params.yaml, recorded by ``sensor``.

    Returns (frames, targets): frames has columns trajectory, frame, image (size^2 float32
    values, row-major), n_targets; targets has trajectory, frame, target, x, y (LR px, x = row),
    brightness. The same section gives byte-identical tables.
    """
    config = section if isinstance(section, SimulateConfig) else SimulateConfig.from_section(section)
    return to_tables(simulate_arrays(config, sensor))
