"""Continuous sub-pixel unmixing by fitting the imaging physics ("beyond the papers").

Every published CSIST method outputs a 33x33 HR map, so its positions are quantised to 1/3 LR px.
This module instead fits K point sources (x, y, brightness) directly through the exact pixel-integral
model of :mod:`pipeline.physics`::

    model(r, s) = sum_k b_k * g(r - x_k) * g(s - y_k),
    g(d) = [erf((d + 1/2) / (sigma sqrt 2)) - erf((d - 1/2) / (sigma sqrt 2))] / 2,

with x the ROW and y the COLUMN in LR pixel units (pixel (i, j) centred at (i, j); see
:mod:`pipeline.coords`). The pieces:

* **Physics refinement** -- batched Levenberg-Marquardt on many problems at once (torch, float64,
  batched Cholesky solves of the (3K + 2M)-square normal equations) with an analytic Jacobian.
  The derivative of the pixel integral is a difference of two Gaussian densities::

      g'(d) = phi_sigma(d + 1/2) - phi_sigma(d - 1/2),   phi_sigma(u) = exp(-u^2 / (2 sigma^2)) / (sigma sqrt(2 pi)),

  so d/dx_k g(r - x_k) = phi_sigma(r - x_k - 1/2) - phi_sigma(r - x_k + 1/2).
* **Sensor model** -- residuals are whitened by sd = sqrt(noise_sigma^2 + quantum^2 / 12) (8-bit
  rounding is uniform noise of std 0.29 counts). A pixel at full scale only says
  "true value >= t = full_scale - quantum/2" (saturation-aware, one-sided): with
  ``censoring="hard"`` its residual is min(0, model - t) / sd, so a model above full scale is not
  penalised; the default ``censoring="tobit"`` uses the censored-Gaussian likelihood
  -2 log Phi((model - t) / sd) (as a square-root residual), which is the same one-sided rule
  smoothed by the noise. Pixels clipped at the floor (0) get the mirror image. Brightness and
  positions are box-bounded (LM steps with the bound-active parameters frozen, then projected).
* **Proposals** -- :func:`greedy_pursuit` (non-negative orthogonal matching pursuit on the columns
  of Phi with saturated pixels masked), :func:`starts_from_hr_maps` (local peaks of any 33x33 map,
  e.g. a network output), plus geometric "cross" templates around the intensity centroid and
  jittered starts. Several starts per K; the distinct local minima they reach are kept as
  competing solutions ("modes") for the scores, and the lowest BIC wins.
* **K selection** -- Bayesian information criterion chi^2 + penalty * D * ln(n) with the noise
  sd known, over ``k_min..k_max``.
* **Multi-frame joint fit** (:func:`fit_windows`) -- over a window of W frames the group moves
  rigidly, position_k(t) = p_k + v tau (+ a tau^2 / 2 with ``motion_order=2``; tau = t - t_mid),
  brightness shared; the middle-frame positions p_k are reported (noise averages down by about
  sqrt(W) with linear motion; a free acceleration costs most of that gain, and the SeqCSIST
  paths bend by < 0.003 px over 5 frames, so linear is the default). The per-target outward
  drift (<= 0.0014 px/frame) is ignored.
* **Scores** -- each detection's score = P_k * (1 - w sigma_k / (sigma_k + s0)), in (0, 1].
  P_k is its posterior support:
  the summed BIC weights exp(-BIC / 2) (normalised per frame) of all distinct solutions found
  (every K, every distinct local minimum) that put a target within ``support_radius`` of it, so
  detections that competing explanations disagree on rank low. sigma_k is the 1-sigma position
  uncertainty from the Gauss-Newton covariance (J^T J)^-1, inflated by sqrt(max(1, reduced
  chi^2)); s0 = ``score_scale`` (LR px), w = ``score_sd_weight``.
* **Group prior** (optional, ``group_prior_sd`` > 0) -- the SeqCSIST geometry: each target sits on
  its own compass arm of a common reference point at a common radius; enforced as soft linear
  residuals, which removes most of the ambiguity of 3-4 blended targets.

Everything is a function of arrays; no file I/O. Every number is a field of
:class:`PhysFitSettings`.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Sequence

import numpy as np
import torch

from pipeline.coords import Grid
from pipeline.physics import build_phi_closed_form

# Numerical guards only (not model knobs; the model's numbers are PhysFitSettings fields):
_TINY = 1e-12  # floor of divisors and of the square-root residual
_RIDGE = 1e-9  # relative ridge added to the small Gram matrices of the proposals
_INFEASIBLE = 1e6  # misfit added to cross assignments that need a negative radius

__all__ = [
    "PhysFitSettings",
    "FitResult",
    "pixel_integral_derivative_1d",
    "render_with_jacobian",
    "greedy_pursuit",
    "starts_from_hr_maps",
    "fit_frames",
    "fit_frames_detailed",
    "fit_windows",
    "fit_windows_detailed",
]


# --------------------------------------------------------------------------------------------
# Settings and results
# --------------------------------------------------------------------------------------------

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
        k_min, k_max: range of target counts tried. brightness_min/max: bounds on b_k.
        position_margin: positions are bounded to [-margin, size - 1 + margin].
        bic_penalty: multiplier of D ln(n) in the information criterion.
        motion_order: 0 = static, 1 = + velocity, 2 = + acceleration (windows only).
    Group prior (optional; the SeqCSIST geometry: targets on distinct compass arms of a common
    reference point at a common distance)
        group_prior_sd: sd (LR px) of each target's deviation from the best-fitting cross
        (reference + common radius along its arm); 0 disables the prior. The arm of each target
        is the assignment of ``template_directions`` that best fits its start. group_radius,
        group_radius_sd: Gaussian prior on the common radius (LR px).
    Starts
        use_pursuit: non-negative OMP starts. template_radius: radius (LR px) of the "cross"
        templates around the intensity centroid (0 disables). template_directions: unit
        directions (dx, dy) of the template arms. random_starts: jittered starts per K.
        start_jitter: their std (LR px). centroid_fraction: pixels below this fraction of the
        frame maximum are ignored by the centroid. seed: RNG seed of the jitter.
    Levenberg-Marquardt
        lm_iterations, lm_lambda0, lm_lambda_up, lm_lambda_down, lm_lambda_max, lm_rtol (relative
        cost decrease that counts as converged), lm_step_tol (LR px), lm_diag_floor (relative
        regularisation of the damping diagonal).
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
        score = P_k * (1 - w * sigma_k / (sigma_k + s0)), P_k the posterior support of the
        detection (see :func:`_support`), sigma_k its position sd; s0 = score_scale (LR px),
        w = score_sd_weight (in [0, 1); the support dominates, the sd orders within it).
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
    brightness_min: float = 215.0
    brightness_max: float = 255.0
    position_margin: float = 0.5
    bic_penalty: float = 1.0
    motion_order: int = 1
    group_prior_sd: float = 0.0
    group_radius: float = 0.315
    group_radius_sd: float = 0.03
    use_pursuit: bool = True
    template_radius: float = 0.3
    template_directions: tuple[tuple[float, float], ...] = ((-1.0, 0.0), (1.0, 0.0), (0.0, -1.0), (0.0, 1.0))
    random_starts: int = 2
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
    mode_separation: float = 0.05
    support_radius: float = 0.05
    max_modes: int = 4
    window_modes: int = 3
    window_bic_margin: float = 30.0
    score_scale: float = 0.05
    score_sd_weight: float = 0.3
    chunk_elements: int = 20_000_000
    block_size: int = 2048
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.k_min < 1 or self.k_max < self.k_min:
            raise ValueError(f"need 1 <= k_min <= k_max, got {self.k_min}, {self.k_max}")
        if not 0 < self.brightness_min < self.brightness_max:
            raise ValueError("need 0 < brightness_min < brightness_max")
        if self.censoring not in ("tobit", "hard"):
            raise ValueError(f"censoring must be 'tobit' or 'hard', got {self.censoring!r}")
        if self.motion_order not in (0, 1, 2):
            raise ValueError(f"motion_order must be 0, 1 or 2, got {self.motion_order}")
        if self.psf_sigma <= 0 or self.min_sd <= 0 or self.score_scale <= 0:
            raise ValueError("psf_sigma, min_sd and score_scale must be > 0")
        if self.group_prior_sd < 0 or (self.group_prior_sd > 0 and self.group_radius_sd <= 0):
            raise ValueError("group_prior_sd must be >= 0 and group_radius_sd > 0 when the prior is on")

    @property
    def noise_sd(self) -> float:
        """Whitening sd (counts): sqrt(noise_sigma^2 + quantum^2 / 12), at least ``min_sd``."""
        return max(math.sqrt(self.noise_sigma ** 2 + self.quantum ** 2 / 12.0), self.min_sd)

    @classmethod
    def for_sensor(cls, bit_depth: int = 8, noise_sigma: float = 0.0, saturate: bool = True,
                   **fields) -> "PhysFitSettings":
        """Settings matching a simulator sensor (pipeline.simulate.sensor): ``bit_depth`` 0 = float
        frames (no rounding, no clipping); else integer frames, clipped at 0 and, when
        ``saturate``, at full scale 2^bit_depth - 1. ``fields`` override any other field."""
        if bit_depth == 0:
            base = dict(full_scale=None, floor=None, quantum=0.0)
        else:
            base = dict(full_scale=float(2 ** bit_depth - 1) if saturate else None, floor=0.0, quantum=1.0)
        base.update(noise_sigma=float(noise_sigma))
        base.update(fields)
        return cls(**base)


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
        [x_1..x_K, y_1..y_K, b_1..b_K, (v_x, v_y) (, (a_x, a_y))] (motion terms for windows only;
        positions of the middle frame).
    """

    detections: list[np.ndarray]
    brightness: list[np.ndarray]
    position_sd: list[np.ndarray]
    k: np.ndarray
    bic: np.ndarray
    chi2: np.ndarray
    k_values: np.ndarray
    params: dict[int, np.ndarray]


# --------------------------------------------------------------------------------------------
# Physics: profiles, model and analytic Jacobian
# --------------------------------------------------------------------------------------------

def pixel_integral_derivative_1d(offset: np.ndarray, sigma: float) -> np.ndarray:
    """g'(d) = phi_sigma(d + 1/2) - phi_sigma(d - 1/2), the derivative of
    :func:`pipeline.physics.pixel_integral_1d` with respect to the offset d (pixel - target, LR px).
    The derivative with respect to the target position is its negative."""
    d = np.asarray(offset, dtype=np.float64)
    norm = 1.0 / (sigma * math.sqrt(2.0 * math.pi))
    two_var = 2.0 * sigma * sigma
    return norm * (np.exp(-(d + 0.5) ** 2 / two_var) - np.exp(-(d - 0.5) ** 2 / two_var))


def _profiles(positions: torch.Tensor, size: int, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D pixel responses of targets along one axis (torch twin of
    :func:`pipeline.physics.pixel_integral_1d`, kept in torch for the batched fit; the tests check
    that frames rendered here equal :func:`pipeline.physics.render_batch`).

    positions: (...,) LR px. Returns g (..., size) = g(r - pos) for r = 0..size-1 and its
    derivative with respect to pos (..., size).
    """
    pixels = torch.arange(size, dtype=positions.dtype, device=positions.device)
    d = pixels - positions[..., None]
    scale = sigma * math.sqrt(2.0)
    g = 0.5 * (torch.erf((d + 0.5) / scale) - torch.erf((d - 0.5) / scale))
    norm = 1.0 / (sigma * math.sqrt(2.0 * math.pi))
    two_var = 2.0 * sigma * sigma
    dg_dpos = norm * (torch.exp(-(d - 0.5) ** 2 / two_var) - torch.exp(-(d + 0.5) ** 2 / two_var))
    return g, dg_dpos


def _motion_basis(n_frames: int, order: int, dtype=torch.float64) -> torch.Tensor:
    """(W, order) basis tau^j / j! (j = 1..order), tau = frame index - middle index."""
    tau = torch.arange(n_frames, dtype=dtype) - (n_frames - 1) / 2.0
    columns = [tau ** j / math.factorial(j) for j in range(1, order + 1)]
    if not columns:
        return torch.zeros(n_frames, 0, dtype=dtype)
    return torch.stack(columns, dim=1)


def _model_and_jacobian(theta: torch.Tensor, k: int, basis: torch.Tensor, size: int,
                        sigma: float, need_jacobian: bool = True):
    """Rendered frames and the analytic Jacobian of a (possibly moving) group.

    theta: (N, D) with D = 3K + 2M: [x_1..x_K, y_1..y_K, b_1..b_K, (vx_j, vy_j) for j = 1..M].
    basis: (W, M) motion basis (see :func:`_motion_basis`); target k in frame w sits at
    (x_k + sum_j vx_j basis[w, j], y_k + sum_j vy_j basis[w, j]).
    Returns model (N, R) with R = W * size^2 (frame-major, then row-major pixels) and the
    TRANSPOSED Jacobian jt (N, D, R) = d model / d theta (None when not needed).
    """
    n, w, m = theta.shape[0], basis.shape[0], basis.shape[1]
    p = size * size
    x0, y0, b = theta[:, :k], theta[:, k:2 * k], theta[:, 2 * k:3 * k]
    motion = theta[:, 3 * k:].reshape(n, m, 2)
    shift = torch.einsum("wj,njc->nwc", basis, motion)  # (N, W, 2)
    xs = x0[:, :, None] + shift[:, None, :, 0]  # (N, K, W)
    ys = y0[:, :, None] + shift[:, None, :, 1]
    gx, dgx = _profiles(xs, size, sigma)  # (N, K, W, size)
    gy, dgy = _profiles(ys, size, sigma)
    bgx = b[:, :, None, None] * gx
    model = torch.einsum("nkwr,nkws->nwrs", bgx, gy).reshape(n, w * p)
    if not need_jacobian:
        return model, None
    jx = (b[:, :, None, None, None] * dgx[..., :, None] * gy[..., None, :]).reshape(n, k, w * p)
    jy = (bgx[..., :, None] * dgy[..., None, :]).reshape(n, k, w * p)
    jb = (gx[..., :, None] * gy[..., None, :]).reshape(n, k, w * p)
    columns = [jx, jy, jb]
    if m:
        sx = jx.sum(dim=1).reshape(n, 1, w, p)  # derivative w.r.t. a common shift along x
        sy = jy.sum(dim=1).reshape(n, 1, w, p)
        per_term = basis.T[None, :, :, None]  # (1, M, W, 1)
        jm = torch.stack([sx * per_term, sy * per_term], dim=2)  # (N, M, 2, W, P)
        columns.append(jm.reshape(n, 2 * m, w * p))
    return model, torch.cat(columns, dim=1)


def render_with_jacobian(x: np.ndarray, y: np.ndarray, brightness: np.ndarray, size: int = 11,
                         sigma: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Frames and analytic Jacobian for static targets (public for tests and diagnostics).

    x, y, brightness: (F, K). Returns frames (F, size, size) and J (F, size^2, 3K) with columns
    [d/dx_1..d/dx_K, d/dy_1..d/dy_K, d/db_1..d/db_K] (pixel counts per LR px or per count).
    """
    theta = torch.from_numpy(np.concatenate([np.asarray(x, np.float64), np.asarray(y, np.float64),
                                             np.asarray(brightness, np.float64)], axis=1))
    k = theta.shape[1] // 3
    model, jt = _model_and_jacobian(theta, k, _motion_basis(1, 0), size, sigma)
    return model.reshape(-1, size, size).numpy(), jt.transpose(1, 2).numpy()


# --------------------------------------------------------------------------------------------
# Sensor model: whitened, one-sided residuals
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Problem:
    """Data of N fitting problems: frames (N, R) with R = W * size^2 and censoring masks."""

    data: torch.Tensor
    high: torch.Tensor  # (N, R) bool: pixel at full scale (only a lower bound on the truth)
    low: torch.Tensor  # (N, R) bool: pixel at the floor (only an upper bound on the truth)
    k: int
    basis: torch.Tensor
    settings: PhysFitSettings
    prior_matrix: torch.Tensor | None = None  # (N, Q, 2K): prior residual rows on [x_1..x_K, y_1..y_K]
    prior_offset: torch.Tensor | None = None  # (N, Q)

    def subset(self, index: torch.Tensor) -> "_Problem":
        prior = {}
        if self.prior_matrix is not None:
            prior = dict(prior_matrix=self.prior_matrix[index], prior_offset=self.prior_offset[index])
        return dataclasses.replace(self, data=self.data[index], high=self.high[index], low=self.low[index],
                                   **prior)

    def with_prior(self, directions: torch.Tensor | None) -> "_Problem":
        """The same problem with the group prior for per-problem arm directions (N, K, 2)."""
        if directions is None:
            return dataclasses.replace(self, prior_matrix=None, prior_offset=None)
        matrix, offset = _group_prior(directions, self.settings)
        return dataclasses.replace(self, prior_matrix=matrix, prior_offset=offset)


def _censor_masks(data: torch.Tensor, s: PhysFitSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks of pixels at full scale and at the floor (all False when not aware)."""
    high = torch.zeros_like(data, dtype=torch.bool)
    low = torch.zeros_like(data, dtype=torch.bool)
    if s.saturation_aware:
        if s.full_scale is not None:
            high = data >= s.full_scale
        if s.floor is not None:
            low = data <= s.floor
    return high, low


def _whitened(problem: _Problem, model: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whitened residuals r (N, R) and row factors c (N, R) with dr/dtheta = c * d model/dtheta.

    Uncensored pixels: r = (model - data) / sd, c = 1 / sd. Pixels at full scale (truth >=
    t_hi = full_scale - quantum/2) and at the floor (truth <= t_lo = floor + quantum/2):
    ``censoring="hard"``: r = min(0, model - t_hi) / sd (resp. max(0, model - t_lo) / sd), c = 0
    where the constraint is inactive; ``censoring="tobit"``: r = sqrt(-2 log Phi(z)) with
    z = (model - t_hi) / sd (resp. (t_lo - model) / sd), the censored-Gaussian likelihood, and its
    exact derivative. Without ``saturation_aware`` every pixel is treated as uncensored.
    """
    s = problem.settings
    sd = s.noise_sd
    r = (model - problem.data) / sd
    c = torch.full_like(r, 1.0 / sd)
    half = 0.5 * s.quantum
    for mask, level, sign in ((problem.high, None if s.full_scale is None else s.full_scale - half, 1.0),
                              (problem.low, None if s.floor is None else s.floor + half, -1.0)):
        if level is None or not s.saturation_aware or not bool(mask.any()):
            continue
        z = sign * (model[mask] - level) / sd  # > 0: the model satisfies the censoring bound
        if s.censoring == "hard":
            r_c = sign * z.clamp(max=0.0)  # = min(0, model - t_hi) / sd, resp. max(0, model - t_lo) / sd
            c_c = (z < 0).to(z.dtype) / sd
        else:
            log_cdf = torch.special.log_ndtr(z)
            rho = torch.sqrt((-2.0 * log_cdf).clamp(min=0.0))
            mills = torch.exp(-0.5 * z * z - 0.5 * math.log(2.0 * math.pi) - log_cdf)  # phi(z) / Phi(z)
            r_c = -sign * rho  # dr/dmodel = phi(z) / (Phi(z) sd rho) > 0 with this sign
            c_c = (rho > _TINY).to(z.dtype) * mills / (sd * rho.clamp(min=_TINY))
        r[mask] = r_c
        c[mask] = c_c
    return r, c


def _evaluate(problem: _Problem, theta: torch.Tensor, need_normal: bool = True):
    """Cost (N,) = sum of squared whitened residuals (+ prior rows) and, when asked, the
    Gauss-Newton normal matrix A = J^T J (N, D, D) and gradient g = J^T r (N, D)."""
    s = problem.settings
    model, jt = _model_and_jacobian(theta, problem.k, problem.basis, s.size, s.psf_sigma, need_normal)
    r, c = _whitened(problem, model)
    cost = (r * r).sum(dim=1)
    a = g = None
    if need_normal:
        jw = jt * c[:, None, :]
        a = jw @ jw.transpose(1, 2)
        g = (jw @ r[..., None])[..., 0]
    if problem.prior_matrix is not None:
        k2 = 2 * problem.k
        lm = problem.prior_matrix
        r_prior = (lm @ theta[:, :k2, None])[..., 0] - problem.prior_offset
        cost = cost + (r_prior * r_prior).sum(dim=1)
        if need_normal:
            a[:, :k2, :k2] += lm.transpose(1, 2) @ lm
            g[:, :k2] += (lm.transpose(1, 2) @ r_prior[..., None])[..., 0]
    return cost, a, g


# --------------------------------------------------------------------------------------------
# Optional group prior: targets on distinct compass arms around a common reference point
# --------------------------------------------------------------------------------------------

def _arm_design(directions: torch.Tensor) -> torch.Tensor:
    """(N, 2K, 3) linear map from (ref_x, ref_y, radius) to stacked positions [x_1..x_K, y_1..y_K]
    for targets at ref + radius * direction_k; directions (N, K, 2)."""
    n, k, _ = directions.shape
    design = torch.zeros(n, 2 * k, 3, dtype=directions.dtype)
    design[:, :k, 0] = 1.0
    design[:, k:, 1] = 1.0
    design[:, :k, 2] = directions[..., 0]
    design[:, k:, 2] = directions[..., 1]
    return design


def _group_prior(directions: torch.Tensor, s: PhysFitSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear prior residual rows (N, 2K + 1, 2K) and offsets (N, 2K + 1).

    Rows 0..2K-1: (I - A A^+) p / group_prior_sd, the deviation of positions p from the cross that
    fits them best (A from :func:`_arm_design`); last row: (radius_hat(p) - group_radius) /
    group_radius_sd with radius_hat the least-squares common radius.
    """
    design = _arm_design(directions)
    pinv = torch.linalg.pinv(design)  # (N, 3, 2K)
    eye = torch.eye(design.shape[1], dtype=design.dtype)
    projector = eye - design @ pinv
    matrix = torch.cat([projector / s.group_prior_sd, pinv[:, 2:3, :] / s.group_radius_sd], dim=1)
    offset = torch.zeros(matrix.shape[:2], dtype=design.dtype)
    offset[:, -1] = s.group_radius / s.group_radius_sd
    return matrix, offset


def _arm_assignments(k: int, s: PhysFitSettings) -> np.ndarray:
    """(A, K, 2) every injective assignment of ``template_directions`` to K targets."""
    dirs = np.asarray(s.template_directions, dtype=np.float64)
    return np.stack([dirs[list(p)] for p in itertools.permutations(range(len(dirs)), k)])


def _assign_directions(positions: torch.Tensor, s: PhysFitSettings) -> torch.Tensor | None:
    """Arm directions (N, K, 2) that best explain positions (N, K, 2) as a cross (least-squares
    reference and radius, radius >= 0); None when the prior is off or K does not fit the arms."""
    n, k, _ = positions.shape
    if s.group_prior_sd <= 0 or k < 2 or k > len(s.template_directions):
        return None
    options = torch.from_numpy(_arm_assignments(k, s)).to(positions.dtype)  # (A, K, 2)
    design = _arm_design(options)  # (A, 2K, 3)
    pinv = torch.linalg.pinv(design)
    stacked = torch.cat([positions[..., 0], positions[..., 1]], dim=1)  # (N, 2K)
    coef = torch.einsum("acp,np->nac", pinv, stacked)  # (N, A, 3)
    fitted = torch.einsum("apc,nac->nap", design, coef)
    misfit = ((stacked[:, None, :] - fitted) ** 2).sum(dim=2) + _INFEASIBLE * (coef[..., 2] < 0)
    return options[misfit.argmin(dim=1)]


# --------------------------------------------------------------------------------------------
# Batched, box-constrained Levenberg-Marquardt
# --------------------------------------------------------------------------------------------

def _bounds(k: int, m: int, s: PhysFitSettings, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(D,) lower and upper bounds: positions inside the field, brightness in its box, motion free."""
    lo_pos, hi_pos = -s.position_margin, s.size - 1 + s.position_margin
    lower = [lo_pos] * (2 * k) + [s.brightness_min] * k + [-math.inf] * (2 * m)
    upper = [hi_pos] * (2 * k) + [s.brightness_max] * k + [math.inf] * (2 * m)
    return torch.tensor(lower, dtype=dtype), torch.tensor(upper, dtype=dtype)


def _solve_damped(a: torch.Tensor, g: torch.Tensor, lam: torch.Tensor, s: PhysFitSettings,
                  frozen: torch.Tensor):
    """Solve (A + lam diag(A)) step = -g for a batch, with the ``frozen`` (N, D) parameters (at a
    bound that the gradient pushes against) held fixed; returns step (N, D) and an ok mask (N,)."""
    free = (~frozen).to(a.dtype)
    a = a * free[:, :, None] * free[:, None, :]
    g = g * free
    diag = a.diagonal(dim1=1, dim2=2)
    scale = diag.amax(dim=1, keepdim=True).clamp(min=_TINY)
    damp = lam[:, None] * (diag + s.lm_diag_floor * scale) + (1.0 - free) * scale
    damped = a + torch.diag_embed(damp)
    chol, info = torch.linalg.cholesky_ex(damped)
    ok = info == 0
    step = torch.cholesky_solve(-g[..., None], chol)[..., 0]
    ok = ok & torch.isfinite(step).all(dim=1)
    return torch.where(ok[:, None], step, torch.zeros_like(step)), ok


def _levenberg_marquardt(problem: _Problem, theta: torch.Tensor, lower: torch.Tensor,
                         upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise the cost for N problems at once from theta (N, D); returns theta and cost (N,).

    Per-problem damping: a (box-projected) step is accepted only if it lowers that problem's cost;
    problems that converged (relative decrease < lm_rtol, step < lm_step_tol or damping beyond
    lm_lambda_max) drop out of the batch.
    """
    s = problem.settings
    theta = torch.maximum(torch.minimum(theta, upper), lower).clone()
    cost, a, g = _evaluate(problem, theta)
    n = theta.shape[0]
    lam = torch.full((n,), s.lm_lambda0, dtype=theta.dtype)
    active = torch.ones(n, dtype=torch.bool)
    for _ in range(s.lm_iterations):
        idx = active.nonzero()[:, 0]
        if idx.numel() == 0:
            break
        th, gi = theta[idx], g[idx]
        frozen = ((th <= lower) & (gi > 0)) | ((th >= upper) & (gi < 0))
        step, ok = _solve_damped(a[idx], gi, lam[idx], s, frozen)
        trial = torch.maximum(torch.minimum(th + step, upper), lower)
        cost_t, a_t, g_t = _evaluate(problem.subset(idx), trial)
        old = cost[idx]
        accept = ok & (cost_t < old)
        moved = (trial - th).abs().amax(dim=1)
        acc_idx = idx[accept]
        theta[acc_idx] = trial[accept]
        cost[acc_idx] = cost_t[accept]
        a[acc_idx] = a_t[accept]
        g[acc_idx] = g_t[accept]
        lam_sub = torch.where(accept, lam[idx] * s.lm_lambda_down, lam[idx] * s.lm_lambda_up)
        lam[idx] = lam_sub.clamp(min=_TINY)
        small = accept & ((old - cost_t) <= s.lm_rtol * old)
        tiny_step = accept & (moved < s.lm_step_tol)
        done = small | tiny_step | (lam_sub > s.lm_lambda_max)
        active[idx[done]] = False
    return theta, cost


def _fit_batched(problem: _Problem, theta0: torch.Tensor, s: PhysFitSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """LM over N problems in chunks bounded by ``chunk_elements`` Jacobian entries."""
    n, d = theta0.shape
    lower, upper = _bounds(problem.k, problem.basis.shape[1], s, theta0.dtype)
    per = max(1, s.chunk_elements // max(1, problem.data.shape[1] * d))
    thetas, costs = [], []
    for start in range(0, n, per):
        index = torch.arange(start, min(n, start + per))
        t, c = _levenberg_marquardt(problem.subset(index), theta0[index], lower, upper)
        thetas.append(t)
        costs.append(c)
    return torch.cat(thetas), torch.cat(costs)


def _covariance(problem: _Problem, theta: torch.Tensor, s: PhysFitSettings) -> torch.Tensor:
    """Gauss-Newton covariance (J^T J)^-1 (whitened J, prior rows included; units of theta^2),
    shape (N, D, D); pseudo-inverse for rank-deficient problems."""
    out = []
    d = theta.shape[1]
    per = max(1, s.chunk_elements // max(1, problem.data.shape[1] * d))
    for start in range(0, theta.shape[0], per):
        index = torch.arange(start, min(theta.shape[0], start + per))
        _, a, _ = _evaluate(problem.subset(index), theta[index])
        out.append(torch.linalg.pinv(a, hermitian=True))
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# Proposals
# --------------------------------------------------------------------------------------------

def greedy_pursuit(frames: np.ndarray, phi: np.ndarray | None = None, grid: Grid | None = None,
                   k_max: int = 5, *, full_scale: float | None = 255.0,
                   sigma: float = 0.5) -> np.ndarray:
    """Non-negative orthogonal matching pursuit on the HR-grid columns of Phi, batched.

    frames: (F, m, m) counts. phi: (m^2, (c m)^2) sampling matrix (closed form built when None).
    grid: its :class:`Grid` (inferred from phi when None). Pixels at or above ``full_scale`` are
    masked out (their value is unknown). Each step picks the HR cell whose normalised column
    correlates best with the residual, then refits all picked amplitudes by least squares on the
    unmasked pixels (clipped at 0).
    Returns (F, k_max, 3): (x, y, amplitude) of the atoms in the order picked (LR px, counts).
    """
    frames = np.asarray(frames, dtype=np.float64)
    f, m = frames.shape[0], frames.shape[-1]
    if phi is None:
        grid = grid or Grid(m, 3)
        phi = build_phi_closed_form(grid.size, grid.c, sigma)
    grid = grid or Grid.from_phi(phi)
    y = torch.from_numpy(frames.reshape(f, -1))
    ph = torch.from_numpy(np.asarray(phi, dtype=np.float64))  # (P, H)
    weight = torch.ones_like(y) if full_scale is None else (y < full_scale).to(y.dtype)
    norms = torch.sqrt((weight @ (ph * ph)).clamp(min=_TINY))  # (F, H)
    residual = weight * y
    chosen = torch.zeros(f, 0, dtype=torch.long)
    taken = torch.zeros(f, ph.shape[1], dtype=torch.bool)
    amplitude = torch.zeros(f, 0, dtype=y.dtype)
    rows = torch.arange(f)
    for _ in range(k_max):
        corr = (residual @ ph) / norms
        corr = corr.masked_fill(taken, -math.inf)
        pick = corr.argmax(dim=1)
        taken[rows, pick] = True
        chosen = torch.cat([chosen, pick[:, None]], dim=1)
        atoms = ph.T[chosen].transpose(1, 2) * weight[..., None]  # (F, P, k)
        gram = atoms.transpose(1, 2) @ atoms
        ridge = _RIDGE * gram.diagonal(dim1=1, dim2=2).amax(dim=1).clamp(min=_TINY)
        gram = gram + ridge[:, None, None] * torch.eye(gram.shape[1], dtype=y.dtype)
        rhs = atoms.transpose(1, 2) @ (weight * y)[..., None]
        amplitude = torch.nan_to_num(torch.linalg.solve_ex(gram, rhs)[0][..., 0], nan=0.0).clamp(min=0.0)
        residual = weight * y - (atoms @ amplitude[..., None])[..., 0]
    cells = chosen.numpy()
    rr, cc = np.divmod(cells, grid.hr_size)
    return np.stack([grid.to_lr_coordinate(rr), grid.to_lr_coordinate(cc), amplitude.numpy()], axis=2)


def starts_from_hr_maps(hr_maps: np.ndarray, grid: Grid | None = None, k_max: int = 5, *,
                        peak_threshold: float = 0.0) -> np.ndarray:
    """Candidate positions from HR maps (e.g. a network's 33x33 output), batched.

    hr_maps: (F, c m, c m) (or (F, (c m)^2)); grid: the map's :class:`Grid` (c = 3 assumed when
    None). Cells above ``peak_threshold`` that are local maxima of their 3x3 neighbourhood come
    first by descending value, then the remaining cells by value, so every frame yields exactly
    ``k_max`` candidates.
    Returns (F, k_max, 3): (x, y, map value) in LR px / map units.
    """
    maps = np.asarray(hr_maps, dtype=np.float64)
    f = maps.shape[0]
    side = int(round(math.sqrt(maps[0].size)))
    maps = maps.reshape(f, side, side)
    grid = grid or Grid(side // 3, 3)
    t = torch.from_numpy(maps)[:, None]
    pooled = torch.nn.functional.max_pool2d(t, 3, stride=1, padding=1)[:, 0]
    peak = ((torch.from_numpy(maps) >= pooled) & (torch.from_numpy(maps) > peak_threshold)).reshape(f, -1).numpy()
    flat = maps.reshape(f, -1)
    order = np.lexsort((-flat, ~peak), axis=1)[:, :k_max]  # peaks first, each group by value
    rr, cc = np.divmod(order, side)
    values = np.take_along_axis(flat, order, axis=1)
    return np.stack([grid.to_lr_coordinate(rr), grid.to_lr_coordinate(cc), values], axis=2)


def _centroids(frames: np.ndarray, s: PhysFitSettings) -> np.ndarray:
    """(F, 2) intensity centroid (row, column) of pixels above centroid_fraction * max."""
    f, m = frames.shape[0], frames.shape[-1]
    flat = frames.reshape(f, -1)
    peak = flat.max(axis=1, keepdims=True)
    w = np.clip(flat - s.centroid_fraction * peak, 0.0, None)
    w_sum = np.maximum(w.sum(axis=1), _TINY)
    rows, cols = np.divmod(np.arange(m * m), m)
    cx = (w @ rows) / w_sum
    cy = (w @ cols) / w_sum
    empty = flat.max(axis=1) <= 0
    cx[empty] = cy[empty] = (m - 1) / 2.0
    return np.stack([cx, cy], axis=1)


def _template_starts(k: int, centroid: np.ndarray, s: PhysFitSettings) -> list[np.ndarray]:
    """Cross templates: K arms of ``template_directions`` at ``template_radius`` around a reference
    placed so that the template's mean position is the centroid. Each: (F, K, 2)."""
    dirs = np.asarray(s.template_directions, dtype=np.float64)
    if s.template_radius <= 0 or k > len(dirs):
        return []
    out = []
    for subset in itertools.combinations(range(len(dirs)), k):
        arms = s.template_radius * dirs[list(subset)]  # (K, 2)
        ref = centroid - arms.mean(axis=0)
        out.append(ref[:, None, :] + arms[None])
    return out


def _jitter(n_frames: int, s: PhysFitSettings) -> dict[int, np.ndarray]:
    """Standard-normal offsets of the jittered starts, K -> (F, max(1, random_starts), K, 2), drawn
    once per call so that results do not depend on how frames are split into blocks."""
    n = max(1, s.random_starts)
    return {k: np.random.default_rng([s.seed, k]).standard_normal((n_frames, n, k, 2)) for k in _k_values(s)}


def _collect_starts(k: int, centroid: np.ndarray, proposals: Sequence[np.ndarray],
                    s: PhysFitSettings, jitter: np.ndarray) -> np.ndarray:
    """All start positions for K targets: (F, S, K, 2). jitter: (F, R, K, 2) standard normal."""
    starts = []
    for prop in proposals:
        if prop.shape[1] >= k:
            starts.append(prop[:, :k, :2])
    starts.extend(_template_starts(k, centroid, s))
    n_random = s.random_starts if starts else max(1, s.random_starts)
    for j in range(n_random):
        starts.append(centroid[:, None, :] + s.start_jitter * jitter[:, j])
    return np.stack(starts, axis=1)


def _initial_brightness(problem: _Problem, positions: torch.Tensor, s: PhysFitSettings) -> torch.Tensor:
    """Least-squares brightness (N, K) for fixed positions (N, K, 2) of static targets, using the
    uncensored pixels of the first frame, clipped to the brightness box."""
    k = positions.shape[1]
    gx, _ = _profiles(positions[..., 0], s.size, s.psf_sigma)
    gy, _ = _profiles(positions[..., 1], s.size, s.psf_sigma)
    p = s.size * s.size
    atoms = (gx[..., :, None] * gy[..., None, :]).reshape(-1, k, p).transpose(1, 2)  # (N, P, K)
    data = problem.data[:, :p]
    usable = (~(problem.high[:, :p] | problem.low[:, :p])).to(data.dtype)
    atoms_w = atoms * usable[..., None]
    gram = atoms_w.transpose(1, 2) @ atoms_w
    ridge = _RIDGE * gram.diagonal(dim1=1, dim2=2).amax(dim=1).clamp(min=_TINY)
    gram = gram + ridge[:, None, None] * torch.eye(k, dtype=data.dtype)
    rhs = atoms_w.transpose(1, 2) @ (usable * data)[..., None]
    b = torch.linalg.solve_ex(gram, rhs)[0][..., 0]
    b = torch.nan_to_num(b, nan=s.brightness_min)
    return b.clamp(s.brightness_min, s.brightness_max)


# --------------------------------------------------------------------------------------------
# Single-frame and multi-frame fits
# --------------------------------------------------------------------------------------------

def _prepare(frames: np.ndarray, s: PhysFitSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    data = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float64))
    data = data.reshape(data.shape[0], -1)
    high, low = _censor_masks(data, s)
    return data, high, low


def _k_values(s: PhysFitSettings) -> list[int]:
    return list(range(s.k_min, s.k_max + 1))


def _bic(cost: torch.Tensor, n_obs: int, d: int, s: PhysFitSettings) -> torch.Tensor:
    return cost + s.bic_penalty * d * math.log(n_obs)


def _positions(theta: torch.Tensor, k: int) -> torch.Tensor:
    """(N, K, 2) positions from parameter vectors (N, D)."""
    return torch.stack([theta[:, :k], theta[:, k:2 * k]], dim=2)


def _n_params(k: int, m: int, s: PhysFitSettings) -> int:
    """Effective number of free parameters: 3K + 2M, less the 2K - 3 cross constraints when the
    group prior is on (the soft radius prior is not counted)."""
    d = 3 * k + 2 * m
    if s.group_prior_sd > 0 and 2 <= k <= len(s.template_directions):
        d -= 2 * k - 3
    return d


def _distinct_modes(theta: torch.Tensor, cost: torch.Tensor, k: int, s: PhysFitSettings,
                    keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``keep`` lowest-cost distinct solutions among S fits of the same K, per frame.

    theta (F, S, D), cost (F, S) (inf = no solution). Two solutions are the same mode when the
    Hausdorff distance between their position sets is below ``mode_separation``. Returns modes
    (F, keep, D) and their costs (F, keep), sorted by cost, padded with the best solution at
    cost +inf.
    """
    f, n_s, d = theta.shape
    order = torch.argsort(cost, dim=1)
    cost = torch.gather(cost, 1, order)
    theta = torch.gather(theta, 1, order[..., None].expand(-1, -1, d))
    pos = torch.stack([theta[..., :k], theta[..., k:2 * k]], dim=3)  # (F, S, K, 2)
    dist = (pos[:, :, None, :, None, :] - pos[:, None, :, None, :, :]).norm(dim=-1)  # (F, S, S, K, K)
    hausdorff = torch.maximum(dist.amin(dim=4).amax(dim=3), dist.amin(dim=3).amax(dim=3))
    finite = torch.isfinite(cost)
    is_mode = torch.zeros(f, n_s, dtype=torch.bool)
    is_mode[:, 0] = finite[:, 0]
    for j in range(1, n_s):
        duplicate = ((hausdorff[:, j, :j] < s.mode_separation) & is_mode[:, :j]).any(dim=1)
        is_mode[:, j] = finite[:, j] & ~duplicate
    rank = torch.cumsum(is_mode.to(torch.int64), dim=1) - 1
    take = is_mode & (rank < keep)
    out_theta = theta[:, :1].expand(-1, keep, -1).clone()
    out_cost = torch.full((f, keep), math.inf, dtype=cost.dtype)
    rows, cols = take.nonzero(as_tuple=True)
    out_theta[rows, rank[rows, cols]] = theta[rows, cols]
    out_cost[rows, rank[rows, cols]] = cost[rows, cols]
    return out_theta, out_cost


def _support(positions: torch.Tensor, frames: torch.Tensor, modes: dict[int, torch.Tensor],
             weights: torch.Tensor, ks: list[int], s: PhysFitSettings) -> torch.Tensor:
    """Posterior support of each detection: the total BIC weight of the solutions (every K, every
    distinct mode) that place a target within ``support_radius`` of it.

    positions (n, K, 2) of the chosen solutions of ``frames`` (n,); weights (F, nK, J) sum to 1
    per frame. Returns (n, K) in (0, 1].
    """
    support = torch.zeros(positions.shape[:2], dtype=positions.dtype)
    for i, k in enumerate(ks):
        theta = modes[k][frames]  # (n, J, D)
        other = torch.stack([theta[..., :k], theta[..., k:2 * k]], dim=3)  # (n, J, K', 2)
        dist = (positions[:, None, :, None, :] - other[:, :, None, :, :]).norm(dim=-1)  # (n, J, K, K')
        near = (dist.amin(dim=3) <= s.support_radius).to(positions.dtype)  # (n, J, K)
        support += (weights[frames, i, :, None] * near).sum(dim=1)
    return support.clamp(max=1.0)


def _finish(problems: dict[int, _Problem], modes: dict[int, torch.Tensor], mode_costs: dict[int, torch.Tensor],
            n_obs: int, s: PhysFitSettings) -> FitResult:
    """Choose (K, mode) by BIC, compute covariances and scores, assemble per-frame detections.

    modes[k]: (F, J, D) distinct solutions for K = k sorted by cost; mode_costs[k]: (F, J).
    The score's model probability is the BIC weight exp(-BIC / 2) of the chosen solution among
    all distinct solutions of all K.
    """
    ks = sorted(modes)
    n_frames = next(iter(modes.values())).shape[0]
    m = next(iter(problems.values())).basis.shape[1]
    bic_all = torch.stack([_bic(mode_costs[k], n_obs, _n_params(k, m, s), s) for k in ks], dim=1)  # (F, nK, J)
    flat = bic_all.reshape(n_frames, -1)
    best_flat = flat.argmin(dim=1)
    n_modes = bic_all.shape[2]
    chosen = best_flat // n_modes
    chosen_mode = best_flat % n_modes
    lowest = flat.gather(1, best_flat[:, None])
    weights = torch.exp(-0.5 * (flat - lowest))  # exp(-inf) = 0 for missing modes
    weights = (weights / weights.sum(dim=1, keepdim=True)).reshape(bic_all.shape)  # (F, nK, J)
    k_arr = torch.tensor(ks)[chosen]
    detections: list[np.ndarray] = [np.zeros((0, 3))] * n_frames
    brightness: list[np.ndarray] = [np.zeros(0)] * n_frames
    position_sd: list[np.ndarray] = [np.zeros(0)] * n_frames
    params = {}
    for i, k in enumerate(ks):
        params[k] = modes[k][:, 0].numpy()
        frames_k = (chosen == i).nonzero()[:, 0]
        if frames_k.numel() == 0:
            continue
        theta = modes[k][frames_k, chosen_mode[frames_k]]
        cost = mode_costs[k][frames_k, chosen_mode[frames_k]]
        problem = problems[k].subset(frames_k).with_prior(_assign_directions(_positions(theta, k), s))
        cov = _covariance(problem, theta, s)
        dof = max(1, n_obs - _n_params(k, m, s))
        inflate = (cost / dof).clamp(min=1.0)
        var = cov.diagonal(dim1=1, dim2=2)
        sd = torch.sqrt((var[:, :k] + var[:, k:2 * k]).clamp(min=0.0) * inflate[:, None])  # (n, K)
        support = _support(_positions(theta, k), frames_k, modes, weights, ks, s)  # (n, K)
        score = support * (1.0 - s.score_sd_weight * sd / (sd + s.score_scale))
        th, sc, sdn = theta.numpy(), score.numpy(), sd.numpy()
        for row, frame in enumerate(frames_k.tolist()):
            order = np.argsort(-sc[row], kind="stable")
            detections[frame] = np.stack([th[row, :k], th[row, k:2 * k], sc[row]], axis=1)[order]
            brightness[frame] = th[row, 2 * k:3 * k][order]
            position_sd[frame] = sdn[row][order]
    return FitResult(detections=detections, brightness=brightness, position_sd=position_sd,
                     k=k_arr.numpy(), bic=bic_all[:, :, 0].numpy(), chi2=torch.stack(
                         [mode_costs[k][:, 0] for k in ks], dim=1).numpy(),
                     k_values=np.asarray(ks), params=params)


def _merge(results: list[FitResult], s: PhysFitSettings) -> FitResult:
    """Concatenate the FitResults of consecutive blocks."""
    if len(results) == 1:
        return results[0]
    if not results:
        ks = np.asarray(_k_values(s))
        return FitResult([], [], [], np.zeros(0, np.int64), np.zeros((0, len(ks))), np.zeros((0, len(ks))),
                         ks, {int(k): np.zeros((0, 0)) for k in ks})
    first = results[0]
    return FitResult(
        detections=[d for r in results for d in r.detections],
        brightness=[b for r in results for b in r.brightness],
        position_sd=[p for r in results for p in r.position_sd],
        k=np.concatenate([r.k for r in results]),
        bic=np.concatenate([r.bic for r in results]),
        chi2=np.concatenate([r.chi2 for r in results]),
        k_values=first.k_values,
        params={k: np.concatenate([r.params[k] for r in results]) for k in first.params},
    )


def _as_proposals(starts, n: int) -> list[np.ndarray]:
    if starts is None:
        return []
    if isinstance(starts, np.ndarray):
        starts = [starts]
    out = []
    for item in starts:
        arr = np.asarray(item, dtype=np.float64)
        if arr.ndim != 3 or arr.shape[0] != n or arr.shape[2] < 2:
            raise ValueError(f"starts must be (F, J, 2 or 3) arrays with F = {n}, got {arr.shape}")
        out.append(arr)
    return out


def _settings(settings: PhysFitSettings | None, overrides: dict) -> PhysFitSettings:
    """Settings with keyword overrides; ``k_range=(lo, hi)`` and ``sigma`` are accepted as aliases
    of (k_min, k_max) and psf_sigma."""
    s = settings or PhysFitSettings()
    overrides = dict(overrides)
    if "k_range" in overrides:
        overrides["k_min"], overrides["k_max"] = (int(v) for v in overrides.pop("k_range"))
    if "sigma" in overrides:
        overrides["psf_sigma"] = overrides.pop("sigma")
    if overrides:
        s = dataclasses.replace(s, **overrides)
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    return s


def _single_frame_fits(frames: np.ndarray, s: PhysFitSettings, proposals: list[np.ndarray], keep: int,
                       jitter: dict[int, np.ndarray]):
    """Multi-start single-frame LM for every K (jitter from :func:`_jitter`, rows of these frames).

    Returns problems (K -> _Problem over the F frames, no prior attached), modes (K -> (F, keep, D))
    and their costs (K -> (F, keep)), see :func:`_distinct_modes`.
    """
    f = frames.shape[0]
    data, high, low = _prepare(frames, s)
    basis = _motion_basis(1, 0)
    centroid = _centroids(frames, s)
    if s.use_pursuit:
        proposals = [greedy_pursuit(frames, None, Grid(s.size, 3), s.k_max,
                                    full_scale=s.full_scale if s.saturation_aware else None,
                                    sigma=s.psf_sigma)] + list(proposals)
    problems, modes, costs = {}, {}, {}
    for k in _k_values(s):
        problem = _Problem(data, high, low, k, basis, s)
        problems[k] = problem
        starts = _collect_starts(k, centroid, proposals, s, jitter[k])  # (F, S, K, 2)
        n_starts = starts.shape[1]
        pos = torch.from_numpy(starts.reshape(f * n_starts, k, 2))
        rep = torch.arange(f).repeat_interleave(n_starts)
        expanded = problem.subset(rep).with_prior(_assign_directions(pos, s))
        b0 = _initial_brightness(expanded, pos, s)
        theta0 = torch.cat([pos[..., 0], pos[..., 1], b0], dim=1)
        theta, cost = _fit_batched(expanded, theta0, s)
        modes[k], costs[k] = _distinct_modes(theta.reshape(f, n_starts, -1), cost.reshape(f, n_starts),
                                             k, s, keep)
    return problems, modes, costs


def fit_frames_detailed(frames: np.ndarray, settings: PhysFitSettings | None = None, *,
                        starts: np.ndarray | Sequence[np.ndarray] | None = None,
                        **overrides) -> FitResult:
    """Fit every frame independently; see :class:`FitResult`.

    frames: (F, m, m) counts (8-bit frames as floats are fine). settings: a
    :class:`PhysFitSettings` (default: 8-bit sensor, no additive noise; see
    :meth:`PhysFitSettings.for_sensor`). starts: optional extra proposals, one (F, J, 2 or 3) array
    or a list of them (e.g. from :func:`starts_from_hr_maps` or :func:`greedy_pursuit`); the first
    K rows of each are one start for K targets. overrides: fields of :class:`PhysFitSettings`
    (e.g. ``full_scale=None``, ``noise_sigma=2.0`` -- the ADDITIVE noise; 8-bit rounding is added
    through ``quantum``), plus the aliases ``k_range=(1, 5)`` and ``sigma=0.5`` (PSF).
    """
    s = _settings(settings, overrides)
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 3 or frames.shape[1:] != (s.size, s.size):
        raise ValueError(f"frames must be (F, {s.size}, {s.size}), got {frames.shape}")
    proposals = _as_proposals(starts, frames.shape[0])
    jitter = _jitter(frames.shape[0], s)
    results = []
    with torch.no_grad():
        for lo in range(0, frames.shape[0], s.block_size):
            block = slice(lo, lo + s.block_size)
            problems, modes, costs = _single_frame_fits(frames[block], s, [p[block] for p in proposals],
                                                        s.max_modes, {k: v[block] for k, v in jitter.items()})
            results.append(_finish(problems, modes, costs, s.size * s.size, s))
    return _merge(results, s)


def fit_frames(frames: np.ndarray, settings: PhysFitSettings | None = None, *,
               starts: np.ndarray | Sequence[np.ndarray] | None = None, **overrides) -> list[np.ndarray]:
    """Per-frame detections: list of F arrays (n_f, 3) = (x row, y column, score), LR px.

    Shorthand for ``fit_frames_detailed(...).detections``; brightness and diagnostics are in
    :func:`fit_frames_detailed`.
    """
    return fit_frames_detailed(frames, settings, starts=starts, **overrides).detections


def _frame_shift_estimate(windows: np.ndarray, s: PhysFitSettings) -> np.ndarray:
    """(B, 2M) start for the motion terms [(v_x, v_y), (a_x, a_y)]: slope of the per-frame
    intensity centroids against tau (velocity); acceleration starts at 0."""
    b, w = windows.shape[:2]
    cent = _centroids(windows.reshape(b * w, s.size, s.size), s).reshape(b, w, 2)
    out = np.zeros((b, s.motion_order, 2))
    if s.motion_order and w > 1:
        tau = _motion_basis(w, 1).numpy()[:, 0]
        centred = cent - cent.mean(axis=1, keepdims=True)
        out[:, 0, :] = (tau[None, :, None] * centred).sum(axis=1) / max(float((tau * tau).sum()), _TINY)
    return out.reshape(b, -1)


def fit_windows_detailed(windows: np.ndarray, settings: PhysFitSettings | None = None, *,
                         starts: np.ndarray | Sequence[np.ndarray] | None = None,
                         **overrides) -> FitResult:
    """Joint fit of W-frame windows; detections are for the middle frame.

    windows: (B, W, m, m) counts, W odd. The group translates rigidly,
    position_k(t) = p_k + v tau + a tau^2 / 2 (tau = t - t_mid, ``motion_order`` terms), brightness
    shared by all frames; p_k are reported. Starts: the ``window_modes`` best distinct
    single-frame solutions of the middle frame per K, with the centroid-derived velocity; a K whose
    middle-frame BIC exceeds the best by more than ``window_bic_margin`` is not refined (it cannot
    win). ``starts``: extra proposals for the middle frame ((B, J, 2 or 3)). K and the solution are
    chosen by BIC over all W m^2 pixels.
    """
    s = _settings(settings, overrides)
    windows = np.asarray(windows, dtype=np.float64)
    if windows.ndim != 4 or windows.shape[2:] != (s.size, s.size) or windows.shape[1] % 2 == 0:
        raise ValueError(f"windows must be (B, W odd, {s.size}, {s.size}), got {windows.shape}")
    proposals = _as_proposals(starts, windows.shape[0])
    jitter = _jitter(windows.shape[0], s)
    results = []
    with torch.no_grad():
        for lo in range(0, windows.shape[0], s.block_size):
            block = slice(lo, lo + s.block_size)
            results.append(_fit_windows_block(windows[block], s, [p[block] for p in proposals],
                                              {k: v[block] for k, v in jitter.items()}))
    return _merge(results, s)


def _fit_windows_block(windows: np.ndarray, s: PhysFitSettings, proposals: list[np.ndarray],
                       jitter: dict[int, np.ndarray]) -> FitResult:
    """:func:`fit_windows_detailed` on one block of windows (B, W, m, m)."""
    b, w = windows.shape[:2]
    mid = w // 2
    _, single, single_cost = _single_frame_fits(windows[:, mid], s, proposals, s.window_modes, jitter)
    ks = sorted(single)
    single_bic = torch.stack([_bic(single_cost[k][:, 0], s.size * s.size, _n_params(k, 0, s), s)
                              for k in ks], dim=1)
    worth = single_bic <= single_bic.min(dim=1, keepdim=True).values + s.window_bic_margin  # (B, nK)
    data, high, low = _prepare(windows.reshape(b, -1), s)
    basis = _motion_basis(w, s.motion_order)
    motion0 = torch.from_numpy(_frame_shift_estimate(windows, s))
    problems, modes, costs = {}, {}, {}
    for i, k in enumerate(ks):
        problem = _Problem(data, high, low, k, basis, s)
        problems[k] = problem
        n_keep = single[k].shape[1]
        theta0 = torch.cat([single[k], motion0[:, None, :].expand(-1, n_keep, -1)], dim=2)
        run = worth[:, i:i + 1] & torch.isfinite(single_cost[k])  # (B, keep)
        cost = torch.full((b, n_keep), math.inf, dtype=theta0.dtype)
        theta = theta0.clone()
        rows, cols = run.nonzero(as_tuple=True)
        if rows.numel():
            start = theta0[rows, cols]
            sub = problem.subset(rows).with_prior(_assign_directions(_positions(start, k), s))
            fitted, fitted_cost = _fit_batched(sub, start, s)
            theta[rows, cols] = fitted
            cost[rows, cols] = fitted_cost
        modes[k], costs[k] = _distinct_modes(theta, cost, k, s, s.max_modes)
    return _finish(problems, modes, costs, w * s.size * s.size, s)


def fit_windows(windows: np.ndarray, settings: PhysFitSettings | None = None, *,
                starts: np.ndarray | Sequence[np.ndarray] | None = None, **overrides) -> list[np.ndarray]:
    """Middle-frame detections of each window: list of B arrays (n_b, 3) = (x, y, score).

    Shorthand for ``fit_windows_detailed(...).detections``.
    """
    return fit_windows_detailed(windows, settings, starts=starts, **overrides).detections
