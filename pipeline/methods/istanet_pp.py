"""ISTA-Net++ (docs/methods.md §5.3): unfolded ISTA whose step sizes come from a condition network.

Phase k takes a gradient step with step lambda_k, then a residual CNN (input: the step's map and
a constant map of the phase's x_step_k) refines it. lambda_k and x_step_k come from a small MLP
of the sensor's PSF width.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.methods.base import MethodOutput, PhysicsOperator, UnmixingMethod
from pipeline.methods.blocks.unfolding import LeastSquaresData, ResidualBlock, with_constant_channel
from pipeline.methods.registry import register_model


class ConditionNetwork(nn.Module):
    """Linear 1->H, LeakyReLU, Linear H->H, LeakyReLU, Linear H->2K, LeakyReLU (slope 0.01 each,
    on the output too): a scalar condition -> K step sizes and K x_step values."""

    def __init__(self, phases: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(1, hidden), nn.LeakyReLU(0.01),
                                  nn.Linear(hidden, hidden), nn.LeakyReLU(0.01),
                                  nn.Linear(hidden, 2 * phases), nn.LeakyReLU(0.01))

    def forward(self, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scalar tensor -> ((K,) step sizes lambda, (K,) x_step values)."""
        return self.body(condition.reshape(1, 1)).reshape(2, -1).unbind(0)


class ISTANetPPPhase(nn.Module):
    """r + tail(res(res(head([r, x_step])))): head conv 2->C, two residual blocks (LeakyReLU 0.1),
    tail conv C->1; all 'same' convolutions with bias. 37,889 parameters for C = 32, 3x3."""

    def __init__(self, channels: int, kernel_size: int, blocks: int) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        padding = kernel_size // 2
        self.body = nn.Sequential(
            nn.Conv2d(2, channels, kernel_size, padding=padding),
            *(ResidualBlock(channels, kernel_size, True, lambda: nn.LeakyReLU(0.1))
              for _ in range(blocks)),
            nn.Conv2d(channels, 1, kernel_size, padding=padding))

    def forward(self, r: torch.Tensor, x_step: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) gradient step and a scalar -> (B, 1, H, W) refined estimate."""
        return r + self.body(with_constant_channel(r, x_step))


@register_model("ista_net_pp")
class ISTANetPP(UnmixingMethod):
    """ISTA-Net++: x_0 = Phi^T y (no Q_init, as published), then ``phases`` untied phases
    r = x - lambda_k Phi^T (Phi x - y), x = phase_k(r, x_step_k); single-frame.

    The condition network's input is the sensor's PSF std / 100 (0.005 for the official
    sigma = 0.5 LR px, the value the shipped code hard-codes); as it is constant, lambda_k and
    x_step_k are in effect 2K learned scalars. Loss: MSE only.

    Parameters: 760,220 at the defaults (20 phases x 37,889 + condition network 2,440), the
    published 0.76 M.
    """

    family = "deep_unfolding"
    label = "ISTA-Net++"
    smoke_params = {"phases": 2, "channels": 4, "hidden": 4}

    def __init__(self, physics: PhysicsOperator, phases: int = 20, channels: int = 32,
                 kernel_size: int = 3, blocks: int = 2, hidden: int = 32) -> None:
        super().__init__(physics)
        if phases < 1 or channels < 1 or hidden < 1 or blocks < 0:
            raise ValueError(f"phases, channels and hidden must be >= 1 and blocks >= 0, got "
                             f"{phases}, {channels}, {hidden} and {blocks}")
        self.condition = ConditionNetwork(phases, hidden)
        self.phases = nn.ModuleList(ISTANetPPPhase(channels, kernel_size, blocks)
                                    for _ in range(phases))

    def forward(self, lr: torch.Tensor) -> MethodOutput:
        """(B, W, m, m) raw LR windows -> hr (B, c m, c m)."""
        y = self.middle_frame(lr)
        data = LeastSquaresData(self.physics, y)
        condition = torch.tensor(self.sensor.psf_sigma / 100.0, dtype=y.dtype, device=y.device)
        steps, x_steps = self.condition(condition)
        x = self.physics.A_adjoint(y)
        for phase, step, x_step in zip(self.phases, steps, x_steps):
            r = self.to_map(data.gradient_step(x, step)).unsqueeze(1)
            x = phase(r, x_step).flatten(1)
        return MethodOutput(hr=self.to_map(x))
