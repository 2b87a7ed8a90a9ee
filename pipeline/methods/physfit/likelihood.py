"""The fitting problem: whitened, saturation-aware (censored) residuals of the sensor model, their
Gauss-Newton normal equations, and the optional group prior (targets on compass arms)."""
from __future__ import annotations

import dataclasses
import math

import torch

from pipeline.methods.physfit.forward_model import model_and_jacobian
from pipeline.methods.physfit.settings import TINY, PhysFitSettings
from pipeline.priors import best_crosses


@dataclasses.dataclass
class Problem:
    """Data of N fitting problems: frames (N, R) with R = W * size^2 and censoring masks."""

    data: torch.Tensor
    high: torch.Tensor  # (N, R) bool: pixel at full scale (only a lower bound on the truth)
    low: torch.Tensor  # (N, R) bool: pixel at the floor (only an upper bound on the truth)
    k: int
    basis: torch.Tensor
    settings: PhysFitSettings
    prior_matrix: torch.Tensor | None = None  # (N, Q, 2K): prior residual rows on [x_1..x_K, y_1..y_K]
    prior_offset: torch.Tensor | None = None  # (N, Q)

    def subset(self, index: torch.Tensor) -> "Problem":
        prior = {}
        if self.prior_matrix is not None:
            prior = dict(prior_matrix=self.prior_matrix[index], prior_offset=self.prior_offset[index])
        return dataclasses.replace(self, data=self.data[index], high=self.high[index], low=self.low[index],
                                   **prior)

    def with_prior(self, directions: torch.Tensor | None) -> "Problem":
        """The same problem with the group prior for per-problem arm directions (N, K, 2)."""
        if directions is None:
            return dataclasses.replace(self, prior_matrix=None, prior_offset=None)
        matrix, offset = _group_prior(directions, self.settings)
        return dataclasses.replace(self, prior_matrix=matrix, prior_offset=offset)


def censor_masks(data: torch.Tensor, s: PhysFitSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks of pixels at full scale and at the floor (all False when not aware)."""
    high = torch.zeros_like(data, dtype=torch.bool)
    low = torch.zeros_like(data, dtype=torch.bool)
    if s.saturation_aware:
        if s.full_scale is not None:
            high = data >= s.full_scale
        if s.floor is not None:
            low = data <= s.floor
    return high, low


def _whitened(problem: Problem, model: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
            c_c = (rho > TINY).to(z.dtype) * mills / (sd * rho.clamp(min=TINY))
        r[mask] = r_c
        c[mask] = c_c
    return r, c


def evaluate(problem: Problem, theta: torch.Tensor, need_normal: bool = True):
    """Cost (N,) = sum of squared whitened residuals (+ prior rows) and, when asked, the
    Gauss-Newton normal matrix A = J^T J (N, D, D) and gradient g = J^T r (N, D)."""
    s = problem.settings
    model, jt = model_and_jacobian(theta, problem.k, problem.basis, s.size, s.psf_sigma, need_normal,
                                   s.background_surfaces)
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


def assign_directions(positions: torch.Tensor, s: PhysFitSettings) -> torch.Tensor | None:
    """Arm directions (N, K, 2) that best explain positions (N, K, 2) as a cross of the prior's
    arms for K (:meth:`PhysFitSettings.arms`, :func:`pipeline.priors.best_crosses`); None when the
    prior is off or K does not fit the arms."""
    arms = s.arms(positions.shape[1])
    if arms is None:
        return None
    _, directions = best_crosses(positions.detach().cpu().numpy(), arms)
    return torch.from_numpy(directions).to(positions.dtype)
