"""A generic batched, box-constrained Levenberg-Marquardt solver over many problems at once."""
from __future__ import annotations

import math

import torch

from pipeline.methods.physfit.likelihood import Problem, evaluate
from pipeline.methods.physfit.settings import TINY, PhysFitSettings


def _bounds(k: int, m: int, s: PhysFitSettings, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(D,) lower and upper bounds: positions inside the field, brightness in its box, motion and
    background level free."""
    lo_pos, hi_pos = -s.position_margin, s.size - 1 + s.position_margin
    free = 2 * m + s.n_background
    lower = [lo_pos] * (2 * k) + [s.brightness_min] * k + [-math.inf] * free
    upper = [hi_pos] * (2 * k) + [s.brightness_max] * k + [math.inf] * free
    return torch.tensor(lower, dtype=dtype), torch.tensor(upper, dtype=dtype)


def _solve_damped(a: torch.Tensor, g: torch.Tensor, lam: torch.Tensor, s: PhysFitSettings,
                  frozen: torch.Tensor):
    """Solve (A + lam diag(A)) step = -g for a batch, with the ``frozen`` (N, D) parameters (at a
    bound that the gradient pushes against) held fixed; returns step (N, D) and an ok mask (N,)."""
    free = (~frozen).to(a.dtype)
    a = a * free[:, :, None] * free[:, None, :]
    g = g * free
    diag = a.diagonal(dim1=1, dim2=2)
    scale = diag.amax(dim=1, keepdim=True).clamp(min=TINY)
    damp = lam[:, None] * (diag + s.lm_diag_floor * scale) + (1.0 - free) * scale
    damped = a + torch.diag_embed(damp)
    chol, info = torch.linalg.cholesky_ex(damped)
    ok = info == 0
    step = torch.cholesky_solve(-g[..., None], chol)[..., 0]
    ok = ok & torch.isfinite(step).all(dim=1)
    return torch.where(ok[:, None], step, torch.zeros_like(step)), ok


def _levenberg_marquardt(problem: Problem, theta: torch.Tensor, lower: torch.Tensor,
                         upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise the cost for N problems at once from theta (N, D); returns theta and cost (N,).

    Per-problem damping: a (box-projected) step is accepted only if it lowers that problem's cost;
    problems that converged (relative decrease < lm_rtol, step < lm_step_tol or damping beyond
    lm_lambda_max) drop out of the batch.
    """
    s = problem.settings
    theta = torch.maximum(torch.minimum(theta, upper), lower).clone()
    cost, a, g = evaluate(problem, theta)
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
        cost_t, a_t, g_t = evaluate(problem.subset(idx), trial)
        old = cost[idx]
        accept = ok & (cost_t < old)
        moved = (trial - th).abs().amax(dim=1)
        acc_idx = idx[accept]
        theta[acc_idx] = trial[accept]
        cost[acc_idx] = cost_t[accept]
        a[acc_idx] = a_t[accept]
        g[acc_idx] = g_t[accept]
        lam_sub = torch.where(accept, lam[idx] * s.lm_lambda_down, lam[idx] * s.lm_lambda_up)
        lam[idx] = lam_sub.clamp(min=TINY)
        small = accept & ((old - cost_t) <= s.lm_rtol * old)
        tiny_step = accept & (moved < s.lm_step_tol)
        done = small | tiny_step | (lam_sub > s.lm_lambda_max)
        active[idx[done]] = False
    return theta, cost


def fit_batched(problem: Problem, theta0: torch.Tensor, s: PhysFitSettings) -> tuple[torch.Tensor, torch.Tensor]:
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


def covariance(problem: Problem, theta: torch.Tensor, s: PhysFitSettings) -> torch.Tensor:
    """Gauss-Newton covariance (J^T J)^-1 (whitened J, prior rows included; units of theta^2),
    shape (N, D, D); pseudo-inverse for rank-deficient problems."""
    out = []
    d = theta.shape[1]
    per = max(1, s.chunk_elements // max(1, problem.data.shape[1] * d))
    for start in range(0, theta.shape[0], per):
        index = torch.arange(start, min(theta.shape[0], start + per))
        _, a, _ = evaluate(problem.subset(index), theta[index])
        out.append(torch.linalg.pinv(a, hermitian=True))
    return torch.cat(out)
