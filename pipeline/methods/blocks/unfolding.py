"""Pieces shared by the deep-unfolding networks: the data term and its two steps, residual
blocks, per-phase scalars broadcast as an extra input channel, and the ISTA-Net phases."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from pipeline.methods.base import PhysicsOperator
from pipeline.methods.blocks import bias_free_conv, soft_threshold


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


# ISTA-Net phases (docs/methods.md §2, §5.1, §5.2), shared by ISTA-Net, ISTA-Net+ and DeRefNet.

class PhaseBase(nn.Module):
    """Learned step rho and threshold theta plus the gradient step every phase starts with."""

    def __init__(self, step_init: float, threshold_init: float) -> None:
        super().__init__()
        self.step = nn.Parameter(torch.tensor(float(step_init)))
        self.threshold = nn.Parameter(torch.tensor(float(threshold_init)))

    def gradient_step(self, x: torch.Tensor, gram: torch.Tensor, adjoint_y: torch.Tensor,
                      side: int) -> torch.Tensor:
        """r = x - rho x Phi^T Phi + rho y Phi, from (B, n) rows to (B, 1, side, side) maps."""
        r = x - self.step * (x @ gram) + self.step * adjoint_y
        return r.reshape(x.shape[0], 1, side, side)

    @staticmethod
    def wants_symmetry() -> bool:
        """The symmetry residual only enters the loss: it is computed when gradients are
        recorded and skipped (None) under ``torch.no_grad``, which saves a third of a phase."""
        return torch.is_grad_enabled()

    def backward_transform(self, features: torch.Tensor) -> torch.Tensor:
        """F~ = backward_out(ReLU(backward_in(features))), with the subclass's two convs."""
        return self.backward_out(torch.relu(self.backward_in(features)))


class ISTANetPhase(PhaseBase):
    """One ISTA-Net phase (§2), non-residual: x = F~(soft(F(r), theta)); sym = F~(F(r)) - r.

    F = conv 1->C, ReLU, conv C->C; F~ = conv C->C, ReLU, conv C->1 (bias-free, Xavier-normal).
    19,010 parameters for C = 32 and 3x3 kernels.
    """

    def __init__(self, channels: int, kernel_size: int, step_init: float,
                 threshold_init: float) -> None:
        super().__init__(step_init, threshold_init)
        self.forward_in = bias_free_conv(1, channels, kernel_size)
        self.forward_out = bias_free_conv(channels, channels, kernel_size)
        self.backward_in = bias_free_conv(channels, channels, kernel_size)
        self.backward_out = bias_free_conv(channels, 1, kernel_size)

    def forward(self, x: torch.Tensor, gram: torch.Tensor, adjoint_y: torch.Tensor, side: int
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, n) estimate -> ((B, n) new estimate, (B, 1, side, side) symmetry residual or None,
        see :meth:`wants_symmetry`)."""
        r = self.gradient_step(x, gram, adjoint_y, side)
        features = self.forward_out(torch.relu(self.forward_in(r)))
        x_new = self.backward_transform(soft_threshold(features, self.threshold))
        sym = self.backward_transform(features) - r if self.wants_symmetry() else None
        return x_new.reshape(x.shape), sym


class ISTANetPlusPhase(PhaseBase):
    """One ISTA-Net+ phase (§5.2), residual: x = r + G(F~(soft(F(D(r)), theta))).

    D = conv 1->C; F = conv C->C, ReLU, conv C->C; F~ likewise; G = conv C->1; all bias-free,
    Xavier-normal. sym = F~(F(D(r))) - D(r). 37,442 parameters for C = 32 and 3x3 kernels.
    """

    def __init__(self, channels: int, kernel_size: int, step_init: float,
                 threshold_init: float) -> None:
        super().__init__(step_init, threshold_init)
        self.conv_d = bias_free_conv(1, channels, kernel_size)
        self.forward_in = bias_free_conv(channels, channels, kernel_size)
        self.forward_out = bias_free_conv(channels, channels, kernel_size)
        self.backward_in = bias_free_conv(channels, channels, kernel_size)
        self.backward_out = bias_free_conv(channels, channels, kernel_size)
        self.conv_g = bias_free_conv(channels, 1, kernel_size)

    def forward(self, x: torch.Tensor, gram: torch.Tensor, adjoint_y: torch.Tensor, side: int
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, n) estimate -> ((B, n) new estimate, (B, C, side, side) symmetry residual or None)."""
        r = self.gradient_step(x, gram, adjoint_y, side)
        x_d = self.conv_d(r)
        features = self.forward_out(torch.relu(self.forward_in(x_d)))
        x_g = self.conv_g(self.backward_transform(soft_threshold(features, self.threshold)))
        sym = self.backward_transform(features) - x_d if self.wants_symmetry() else None
        return (r + x_g).reshape(x.shape), sym
