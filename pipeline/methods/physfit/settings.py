"""Every number of the physics fit (:class:`PhysFitSettings`, built from the sensor) and its
result record (:class:`FitResult`)."""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch

from pipeline.methods.physfit.forward_model import background_basis
from pipeline.priors import COMPASS_DIRECTIONS, ScenePriors, refine_directions
from pipeline.sensor import Sensor

# Numerical guards only (not model knobs; the model's numbers are PhysFitSettings fields):
TINY = 1e-12  # floor of divisors and of the square-root residual
RIDGE = 1e-9  # relative ridge added to the small Gram matrices of the proposals
BACKGROUND_MODELS = ("none", "constant", "smooth", "auto")  # what the targets of a fit sit on


MAX_TARGETS = 16  # most targets per group PhysFit fits: the K-target fit costs O(K^3) a step per start


@functools.lru_cache(maxsize=16)
def _arm_roses(directions: tuple[tuple[float, float], ...],
               refinements: int) -> tuple[tuple[tuple[float, float], ...], ...]:
    """``directions`` refined 0, 1, ..., ``refinements`` times (:func:`pipeline.priors.refine_directions`)."""
    roses = [tuple(map(tuple, directions))]
    for _ in range(refinements):
        roses.append(refine_directions(roses[-1]))
    return tuple(roses)


@dataclasses.dataclass(frozen=True)
class PhysFitSettings:
    """Every number of the physics fit. Lengths in LR px, brightness and noise in counts.

    Sensor
        size: frame side m (pixels). psf_sigma: Gaussian PSF std (LR px).
        full_scale: saturation level (255 for 8-bit; None = no saturation handling).
        floor: lower clip level (0 for 8-bit; None = none). quantum: quantisation step (1 for
        integer frames, 0 for float frames). noise_sigma: additive Gaussian noise std.
        min_sd: lower bound on the whitening sd (keeps noise-free float fits well posed).
        saturation_aware: one-sided residuals at full scale / floor (False = treat clipped
        pixels as exact measurements, the naive fit). censoring: "tobit" (censored-Gaussian
        likelihood, exact for noisy clipped pixels) or "hard" (residual min(0, model - level)).
    Model
        k_min, k_max: range of target counts always tried. k_limit: the most targets ever tried
        (None = k_max): K = k_max + 1, ... is fitted, one at a time, only for the frames whose best
        K so far is the largest tried. brightness_min/max: the brightness box (bounds on b_k).
        brightness_limits: (min, max) wider bounds (None = none): frames or windows whose best fit
        leaves a whitened cost above relax_misfit times their unclipped pixels are fitted again
        within them, and the better fit (by BIC) is kept -- the prior first, relaxed where the
        data reject it.
        position_margin: positions are bounded to [-margin, size - 1 + margin].
        bic_penalty: multiplier of D ln(n) in the information criterion.
        motion_order: 0 = static, 1 = + velocity, 2 = + acceleration (windows only).
        background: "none" (targets on a zero floor), "constant" (one free level per frame, or per
        window in the joint fit), "smooth" (a free surface: the Legendre polynomials in row and
        column of total degree <= background_degree, shared by the frames of a window; structured
        clutter) or "auto" (smooth for the frames or windows whose median pixel exceeds the floor
        by more than background_threshold counts, none for the others). The background starts at
        a least-squares fit to the pixels that the targets leave alone (see
        :func:`pipeline.methods.physfit.proposals.background_start`).
    Group prior (optional; the SeqCSIST geometry: targets on distinct compass arms of a common
    reference point at a common distance)
        group_prior_sd: sd (LR px) of each target's deviation from the best-fitting cross
        (reference + common radius along its arm); 0 disables the prior. The arms are
        ``template_directions`` (see :meth:`arms`); the arm of each target is the assignment that
        best fits its start (:func:`pipeline.priors.best_crosses`). group_radius,
        group_radius_sd: Gaussian prior on the common radius (LR px).
        arm_refinements: groups of more targets than arms are held to a rose of twice the arms
        (the bisectors added: :func:`pipeline.priors.refine_directions`), up to this many times;
        arm_level: refinements always applied (0 = the template's own arms). Where the data reject
        a fit, it is redone one level finer and with the shape freed, the lower BIC kept (see
        ``relax_misfit``).
    Starts
        use_pursuit: non-negative OMP starts. template_radius: radius (LR px) of the "cross"
        templates around the intensity centroid (0 disables). template_directions: unit
        directions (dx, dy) of the template arms. ring_rotations: for K above the number of
        arms, K points evenly on a circle of template_radius around the centroid, in this many
        rotations. random_starts: jittered starts per K. max_starts: the most starts fitted per K
        and frame; where there are more (the rose's many templates), those with the lowest cost as
        they stand (brightness by least squares) are kept.
        start_jitter: their std (LR px). centroid_fraction: pixels below this fraction of the
        frame maximum are ignored by the centroid. seed: RNG seed of the jitter.
    Levenberg-Marquardt
        lm_iterations, lm_lambda0, lm_lambda_up, lm_lambda_down, lm_lambda_max, lm_rtol (relative
        cost decrease that counts as converged), lm_step_tol (LR px), lm_diag_floor (relative
        regularisation of the damping diagonal).
        start_lm_iterations: iterations of the single-frame fits that start a window fit (None =
        lm_iterations; they only need to reach the right basin, the joint fit refines them).
    Modes
        mode_separation: two fits of the same K are distinct solutions when the Hausdorff distance
        of their position sets is at least this (LR px). max_modes: distinct solutions kept per K;
        they enter the score through their BIC weights. support_radius: a solution supports a
        detection when it has a target within this distance (LR px).
    Windows
        window_modes: distinct single-frame solutions (per K) of the middle frame that start the
        joint fit. window_bic_margin: a K whose middle-frame BIC exceeds the best by more than
        this is not refined jointly.
    Scores
        score = P_k * (1 - w * sigma_k / (sigma_k + s0)) * min(1, b_k / dim_brightness)^2, P_k the
        posterior support of the detection (see :func:`_support`), sigma_k its position sd, b_k its
        brightness; s0 = score_scale (LR px), w = score_sd_weight (in [0, 1); the support
        dominates, the sd orders within it); dim_brightness (counts, 0 = off) ranks targets far
        dimmer than any seen in training below the others.
    PSF calibration (:func:`calibrate_psf`)
        psf_calibration: estimate the PSF std from the data: the std among ``calibration_steps``
        values spanning +-``calibration_span`` (relative) of psf_sigma whose best fits of
        ``calibration_windows`` sample windows have the lowest total BIC (refined by a parabola),
        kept only when it beats psf_sigma by more than ``calibration_margin`` per window.
    Execution
        chunk_elements: maximum number of Jacobian entries per batched chunk (memory bound).
        block_size: frames (or windows) processed together end to end (bounds the memory of the
        multi-start bookkeeping; results do not depend on it).
        threads: torch intra-op threads (None = leave as is).
    """

    size: int = 11
    psf_sigma: float = 0.5
    full_scale: float | None = 255.0
    floor: float | None = 0.0
    quantum: float = 1.0
    noise_sigma: float = 0.0
    min_sd: float = 1e-3
    saturation_aware: bool = True
    censoring: str = "tobit"
    k_min: int = 1
    k_max: int = 5
    k_limit: int | None = None
    brightness_min: float = 215.0
    brightness_max: float = 255.0
    brightness_limits: tuple[float, float] | None = None
    relax_misfit: float = 3.0
    position_margin: float = 0.5
    bic_penalty: float = 1.0
    motion_order: int = 1
    background: str = "none"
    background_degree: int = 8
    background_threshold: float = 1.0
    group_prior_sd: float = 0.0
    group_radius: float = 0.315
    group_radius_sd: float = 0.03
    arm_refinements: int = 1
    arm_level: int = 0
    use_pursuit: bool = True
    template_radius: float = 0.3
    template_directions: tuple[tuple[float, float], ...] = COMPASS_DIRECTIONS
    ring_rotations: int = 2
    random_starts: int = 2
    max_starts: int = 12
    start_jitter: float = 0.25
    centroid_fraction: float = 0.1
    seed: int = 0
    lm_iterations: int = 60
    lm_lambda0: float = 1e-3
    lm_lambda_up: float = 10.0
    lm_lambda_down: float = 0.2
    lm_lambda_max: float = 1e10
    lm_rtol: float = 1e-7
    lm_step_tol: float = 1e-6
    lm_diag_floor: float = 1e-9
    start_lm_iterations: int | None = None
    mode_separation: float = 0.05
    support_radius: float = 0.05
    max_modes: int = 4
    window_modes: int = 3
    window_bic_margin: float = 30.0
    score_scale: float = 0.05
    score_sd_weight: float = 0.3
    dim_brightness: float = 0.0
    psf_calibration: bool = False
    calibration_windows: int = 32
    calibration_margin: float = 2.0
    calibration_span: float = 0.15
    calibration_steps: int = 13
    chunk_elements: int = 20_000_000
    block_size: int = 2048
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.max_starts < 1:
            raise ValueError(f"max_starts must be >= 1, got {self.max_starts}")
        if self.k_min < 1 or self.k_max < self.k_min:
            raise ValueError(f"need 1 <= k_min <= k_max, got {self.k_min}, {self.k_max}")
        if self.k_limit is not None and self.k_limit < self.k_max:
            raise ValueError(f"k_limit must be None or >= k_max = {self.k_max}, got {self.k_limit}")
        if (self.start_lm_iterations is not None and self.start_lm_iterations < 1) or self.ring_rotations < 0:
            raise ValueError(f"need start_lm_iterations None or >= 1 and ring_rotations >= 0, got "
                             f"{self.start_lm_iterations}, {self.ring_rotations}")
        if self.calibration_windows < 1 or self.calibration_steps < 3 or not 0 < self.calibration_span < 1:
            raise ValueError("need calibration_windows >= 1, calibration_steps >= 3 and 0 < calibration_span < 1")
        if not 0 < self.brightness_min < self.brightness_max:
            raise ValueError("need 0 < brightness_min < brightness_max")
        if self.brightness_limits is not None and not (
                0 < self.brightness_limits[0] <= self.brightness_min and self.brightness_max <= self.brightness_limits[1]):
            raise ValueError(f"brightness_limits must be None or (min, max) around the box "
                             f"[{self.brightness_min}, {self.brightness_max}], got {self.brightness_limits}")
        if self.censoring not in ("tobit", "hard"):
            raise ValueError(f"censoring must be 'tobit' or 'hard', got {self.censoring!r}")
        if self.background not in BACKGROUND_MODELS:
            raise ValueError(f"background must be one of {BACKGROUND_MODELS}, got {self.background!r}")
        if self.background_degree < 0:
            raise ValueError(f"background_degree must be >= 0, got {self.background_degree}")
        if self.motion_order not in (0, 1, 2):
            raise ValueError(f"motion_order must be 0, 1 or 2, got {self.motion_order}")
        if self.psf_sigma <= 0 or self.min_sd <= 0 or self.score_scale <= 0:
            raise ValueError("psf_sigma, min_sd and score_scale must be > 0")
        if self.group_prior_sd < 0 or (self.group_prior_sd > 0 and self.group_radius_sd <= 0):
            raise ValueError("group_prior_sd must be >= 0 and group_radius_sd > 0 when the prior is on")
        if not 0 <= self.arm_level <= self.arm_refinements:
            raise ValueError(f"need 0 <= arm_level <= arm_refinements, got {self.arm_level}, {self.arm_refinements}")
        if max(self.k_max, self.k_limit or 0) > MAX_TARGETS:
            raise ValueError(f"k_max and k_limit must be <= {MAX_TARGETS} targets per group, got {self.k_max}, "
                             f"{self.k_limit}")
        counts = {"lm_iterations": self.lm_iterations, "random_starts": self.random_starts,
                  "window_modes": self.window_modes, "max_modes": self.max_modes, "block_size": self.block_size,
                  "chunk_elements": self.chunk_elements}
        low = {name: value for name, value in counts.items() if value < (0 if name == "random_starts" else 1)}
        if low:
            raise ValueError(f"need lm_iterations, window_modes, max_modes, block_size, chunk_elements >= 1 "
                             f"and random_starts >= 0, got {low}")

    @property
    def noise_sd(self) -> float:
        """Whitening sd (counts): sqrt(noise_sigma^2 + quantum^2 / 12), at least ``min_sd``."""
        return max(math.sqrt(self.noise_sigma ** 2 + self.quantum ** 2 / 12.0), self.min_sd)

    @property
    def background_surfaces(self) -> torch.Tensor | None:
        """(size^2, B) background surfaces of a fit (see
        :func:`pipeline.methods.physfit.forward_model.background_basis`), None without a background
        ("none", and "auto" before it is resolved per frame)."""
        if self.background == "constant":
            return background_basis(self.size, 0)
        if self.background == "smooth":
            return background_basis(self.size, self.background_degree)
        return None

    @property
    def n_background(self) -> int:
        """Background parameters of a fit: B, the number of surfaces (0 without a background)."""
        surfaces = self.background_surfaces
        return 0 if surfaces is None else surfaces.shape[1]

    def arms(self, k: int) -> tuple[tuple[float, float], ...] | None:
        """Arm directions of the group prior for K targets: ``template_directions`` refined
        ``arm_level`` times, then further (up to ``arm_refinements`` in all) while they are fewer
        than K; None when the prior is off, K < 2 or K exceeds the finest arms."""
        if self.group_prior_sd <= 0 or k < 2:
            return None
        roses = _arm_roses(self.template_directions, self.arm_refinements)[self.arm_level:]
        return next((rose for rose in roses if len(rose) >= k), None)

    @property
    def k_values(self) -> list[int]:
        """The target counts always tried, k_min..k_max."""
        return list(range(self.k_min, self.k_max + 1))

    @property
    def k_top(self) -> int:
        """The most targets ever tried: k_limit, or k_max without it."""
        return self.k_max if self.k_limit is None else self.k_limit

    @classmethod
    def for_sensor(cls, sensor: Sensor, **fields) -> "PhysFitSettings":
        """Settings for frames recorded by ``sensor`` (frame size, PSF, noise, rounding, clipping):
        float frames (bit depth 0) are neither rounded nor clipped; integer frames clip at 0 and,
        when the sensor saturates, at its full scale. ``fields`` override any other field."""
        base = dict(size=sensor.frame_size, psf_sigma=sensor.psf_sigma, noise_sigma=sensor.noise_sigma,
                    quantum=sensor.quantum, full_scale=sensor.clip_high,
                    floor=0.0 if sensor.quantised else None)
        base.update(fields)
        return cls(**base)

    @classmethod
    def for_scene(cls, sensor: Sensor, priors: ScenePriors, brightness_margin: float = 0.0,
                  brightness_headroom: float = 4.0, cross_tolerance: float = 0.1, cross_floor: float = 0.01,
                  **fields) -> "PhysFitSettings":
        """Settings for ``sensor`` with the scene knowledge taken from training-split ``priors``
        (see :mod:`pipeline.priors`), none from the simulator's configuration: brightness bounded
        to the training range widened by ``brightness_margin`` (relative), relaxed to
        [low / h, high * h] (h = ``brightness_headroom``) where the data reject it (scenes
        brighter or dimmer than the training ones), K tried up to the most seen in training on every
        frame and one more (``k_limit``, which ``fields`` may raise) where the largest K tried wins,
        cross starts at the training groups' spread, and detections dimmer than half the training
        range ranked below the others. Where the training groups are compass crosses (their
        ``cross_deviation`` at most ``cross_tolerance`` x their spread) the group prior holds them
        to a cross within that deviation (at least ``cross_floor`` x the spread), with a weak prior
        (sd one spread) on its size; larger groups, and groups the data do not let sit on the
        cross, are held to the rose of twice the arms (:meth:`arms`), and the fit frees the shape
        where the data reject that too. ``fields`` override any of these."""
        if brightness_headroom < 1 or not 0 <= brightness_margin < 1 or cross_tolerance < 0 or cross_floor <= 0:
            raise ValueError(f"need brightness_headroom >= 1, 0 <= brightness_margin < 1, cross_tolerance >= 0 and "
                             f"cross_floor > 0, got {brightness_headroom}, {brightness_margin}, {cross_tolerance}, "
                             f"{cross_floor}")
        crosses = priors.cross_deviation <= cross_tolerance * priors.spread
        scene = dict(brightness_min=priors.brightness_low * (1.0 - brightness_margin),
                     brightness_max=priors.brightness_high * (1.0 + brightness_margin),
                     brightness_limits=(priors.brightness_low / brightness_headroom,
                                        priors.brightness_high * brightness_headroom),
                     k_max=min(priors.k_max, fields.get("k_limit") or priors.k_max),
                     k_limit=priors.k_max + 1,
                     template_radius=priors.spread,
                     dim_brightness=priors.brightness_low / 2.0,
                     group_prior_sd=max(priors.cross_deviation, cross_floor * priors.spread) if crosses else 0.0,
                     group_radius=priors.spread, group_radius_sd=priors.spread)
        scene.update(fields)
        return cls.for_sensor(sensor, **scene)


@dataclasses.dataclass
class FitResult:
    """Per-frame (or per-window) outcome of a fit; F = number of frames or windows.

    detections: list of F arrays (n_f, 3) = (x, y, score), x = row, y = column (LR px),
        sorted by descending score; n_f = chosen K.
    brightness: list of F arrays (n_f,) fitted brightness (counts), same order as detections.
    position_sd: list of F arrays (n_f,) 1-sigma position uncertainty (LR px) used in the score.
    k: (F,) chosen K.
    bic: (F, n_K) information criterion per K in ``k_values``; chi2: (F, n_K) whitened cost.
    k_values: (n_K,) the K tried.
    params: dict K -> (F, D_K) lowest-cost parameter vector for that K,
        [x_1..x_K, y_1..y_K, b_1..b_K, (v_x, v_y) (, (a_x, a_y)), (c_1..c_B)] (motion terms for
        windows only; the B background coefficients with a background; positions of the middle
        frame).
    """

    detections: list[np.ndarray]
    brightness: list[np.ndarray]
    position_sd: list[np.ndarray]
    k: np.ndarray
    bic: np.ndarray
    chi2: np.ndarray
    k_values: np.ndarray
    params: dict[int, np.ndarray]

    def take(self, index: np.ndarray) -> "FitResult":
        """The results of the frames (or windows) ``index``, in that order."""
        return FitResult(detections=[self.detections[i] for i in index], brightness=[self.brightness[i] for i in index],
                         position_sd=[self.position_sd[i] for i in index], k=self.k[index], bic=self.bic[index],
                         chi2=self.chi2[index], k_values=self.k_values,
                         params={k: v[index] for k, v in self.params.items()})

    def misfit(self) -> np.ndarray:
        """(F,) whitened cost of the chosen K's best fit."""
        column = np.searchsorted(self.k_values, self.k)
        return self.chi2[np.arange(len(self.k)), column]
