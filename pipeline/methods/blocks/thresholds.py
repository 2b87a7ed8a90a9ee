"""Shrinkage operators and step sizes of the learned-ISTA family (LISTA, LIHT, LAMP, TiLISTA)."""
from __future__ import annotations

import torch

from pipeline.methods.blocks import soft_threshold


def lipschitz_constant(phi: torch.Tensor) -> float:
    """||Phi||_2^2 (largest singular value squared, computed in float64): 1/L is the ISTA step."""
    return float(torch.linalg.matrix_norm(phi.detach().to(torch.float64), ord=2) ** 2)


def hard_threshold(x: torch.Tensor, theta: torch.Tensor | float) -> torch.Tensor:
    """x where |x| > theta, else 0, elementwise; ``theta`` broadcasts against ``x``.

    The gradient flows to ``x`` only (the threshold receives none, as in LIHT).
    """
    return torch.where(torch.abs(x) > theta, x, torch.zeros_like(x))


def support_selection_shrink(z: torch.Tensor, theta: torch.Tensor, percent: float) -> torch.Tensor:
    """TiLISTA's shrink with support selection on (B, n) rows.

    Entries whose magnitude exceeds both ``theta`` (broadcast against ``z``) and the per-row
    (1 - percent/100)-quantile of |z| (the largest ``percent`` % of the row) pass unshrunk; the
    others are soft-thresholded by ``theta`` (no clamp: a negative theta enlarges them). The
    support mask carries no gradient.
    """
    magnitude = torch.abs(z)
    with torch.no_grad():  # quantile needs float32/64 (bf16 under autocast)
        exact = magnitude.to(torch.promote_types(magnitude.dtype, torch.float32))
        cutoff = torch.quantile(exact, 1.0 - percent / 100.0, dim=1, keepdim=True)
        support = (magnitude > theta) & (magnitude > cutoff)
    return torch.where(support, z, soft_threshold(z, theta))
