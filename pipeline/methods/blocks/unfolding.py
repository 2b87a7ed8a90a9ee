"""Pieces shared by the deep-unfolding networks: the data term and its two steps, residual
blocks, and per-phase scalars broadcast as an extra input channel."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from pipeline.methods.base import PhysicsOperator


class LeastSquaresData:
    """The data term ||y - Phi x||^2 / 2 of one batch of (B, m^2) frames ``y``.

    ``gradient_step`` is the ISTA/FISTA step every unfolded phase starts with; ``proximal_step``
    the exact closed-form data step of half-quadratic splitting (USRNet). Both use the physics'
    Phi, so they hold at any sub-pixel ratio and at the frame borders.
    """

    def __init__(self, physics: PhysicsOperator, y: torch.Tensor) -> None:
        self.physics = physics
        self.y = y

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n) HR rows -> (B, m^2) Phi x - y."""
        return self.physics.A(x) - self.y

    def gradient_step(self, x: torch.Tensor, step: torch.Tensor | float) -> torch.Tensor:
        """x - step Phi^T (Phi x - y) for (B, n) rows; ``step`` broadcasts against x."""
        return x - step * self.physics.A_adjoint(self.residual(x))

    def proximal_step(self, z: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """argmin_x ||y - Phi x||^2 + alpha ||x - z||^2 for (B, n) rows ``z``, scalar alpha > 0.

        By the push-through identity the solution is z - Phi^T (Phi Phi^T + alpha I)^-1 (Phi z - y):
        one m^2 x m^2 Cholesky solve instead of an n x n one. Runs in Phi's dtype even under
        autocast (no half-precision Cholesky).
        """
        phi = self.physics.phi
        with torch.autocast(phi.device.type, enabled=False):
            z, alpha = z.to(phi.dtype), alpha.to(phi.dtype)
            eye = torch.eye(phi.shape[0], dtype=phi.dtype, device=phi.device)
            factor = torch.linalg.cholesky(phi @ phi.T + alpha * eye)
            correction = torch.cholesky_solve(self.residual(z).T, factor).T
            return z - self.physics.A_adjoint(correction)


class ResidualBlock(nn.Module):
    """x + conv(act(conv(x))): two 'same' convolutions of ``channels`` channels."""

    def __init__(self, channels: int, kernel_size: int, bias: bool,
                 activation: Callable[[], nn.Module]) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, bias=bias),
            activation(),
            nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return x + self.body(x)


def with_constant_channel(maps: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) maps and a scalar tensor -> (B, C + 1, H, W), the last channel filled with it."""
    constant = value.to(maps.dtype).reshape(1, 1, 1, 1).expand(maps.shape[0], 1, *maps.shape[2:])
    return torch.cat([maps, constant], dim=1)
