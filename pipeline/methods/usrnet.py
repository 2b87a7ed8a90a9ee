"""USRNet (docs/methods.md §5.9): half-quadratic splitting unfolded into exact data steps and a
shared ResUNet prior, with the splitting weights from a hyper-parameter network.

The shipped model blurs with a 3x3 Gaussian of std 0.5 HR px and samples HR index c p for LR
pixel p (docs/methods.md B7), neither of which is this sensor. Here the degradation is the physics'
Phi itself (pixel-integrated Gaussian PSF of the sensor's std, sampled at the HR cell centred on
each LR pixel, no circular wrap at the borders), so the data step is exact for the data.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.methods.base import MethodOutput, PhysicsOperator, UnmixingMethod
from pipeline.methods.blocks.unfolding import LeastSquaresData, ResidualBlock, with_constant_channel
from pipeline.methods.registry import register_model

NOISE_LEVEL_UNIT = 255.0
"""USRNet's noise-level input is a std on the [0, 1] scale of 8-bit images: counts / 255."""


class HyPaNet(nn.Module):
    """1x1 convs 2->H, ReLU, H->H, ReLU, H->2K, Softplus, + 1e-6: (noise level, scale factor)
    -> K data weights alpha_k and K prior levels beta_k, all positive."""

    def __init__(self, iterations: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, hidden, 1), nn.ReLU(),
                                  nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
                                  nn.Conv2d(hidden, 2 * iterations, 1), nn.Softplus())

    def forward(self, noise_level: float, scale: float, like: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ((K,) alpha, (K,) beta) in the dtype and device of ``like``."""
        inputs = torch.tensor([noise_level, scale], dtype=like.dtype, device=like.device)
        return (self.body(inputs.reshape(1, 2, 1, 1)) + 1e-6).reshape(2, -1).unbind(0)


class ResUNet(nn.Module):
    """USRNet's prior: a 4-level residual U-Net without biases, (B, 2, H, W) -> (B, 1, H, W).

    Head conv 3x3 in->C0; down level i: ``blocks`` residual blocks (conv-ReLU-conv) at C_i, then
    a stride-2 2x2 conv to C_{i+1}; body: residual blocks at C3; up level i: 2x2 transposed conv
    to C_i, then residual blocks; skips are added, each upsampled map first resized (bilinear)
    to its skip's size when the halvings were not exact (33 -> 16 -> 8 -> 4 -> 8 -> 16 -> 32 -> 33
    at c = 3, as shipped); tail conv 3x3 C0->1.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], blocks: int) -> None:
        super().__init__()
        channels = tuple(channels)
        if len(channels) < 2 or min(channels) < 1 or blocks < 0:
            raise ValueError(f"ResUNet needs >= 2 channel counts >= 1 and blocks >= 0, got "
                             f"{channels} and {blocks}")

        def residual(width: int) -> list[nn.Module]:
            return [ResidualBlock(width, 3, False, nn.ReLU) for _ in range(blocks)]

        self.head = nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False)
        self.down = nn.ModuleList(
            nn.Sequential(*residual(width), nn.Conv2d(width, wider, 2, stride=2, bias=False))
            for width, wider in zip(channels[:-1], channels[1:]))
        self.body = nn.Sequential(*residual(channels[-1]))
        self.up = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(wider, width, 2, stride=2, bias=False), *residual(width))
            for width, wider in zip(channels[:-1], channels[1:]))
        self.tail = nn.Conv2d(channels[0], 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W) -> (B, 1, H, W)."""
        skips = [self.head(x)]
        for level in self.down:
            skips.append(level(skips[-1]))
        x = self.body(skips[-1])
        for level, skip in zip(reversed(self.up), reversed(skips[1:])):
            x = level(_resized(x, skip) + skip)
        return self.tail(_resized(x, skips[0]) + skips[0])


def _resized(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` resized (bilinear) to the spatial size of ``like`` if it differs."""
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


@register_model("usrnet")
class USRNet(UnmixingMethod):
    """USRNet: x_0 = Q y, then ``iterations`` x (data step, prior step); single-frame.

    Data step k: x = argmin ||y - Phi x||^2 + alpha_k ||x - z||^2, solved exactly with Phi
    (:meth:`LeastSquaresData.proximal_step`). Prior step k: z = ResUNet([x, beta_k]) (one network
    shared by all iterations). (alpha_k, beta_k) = HyPaNet(noise level, c) with the noise level
    the sensor's per-pixel read noise std (additive noise and rounding) / 255 and c the grid's
    sub-pixel ratio. Output: the last z.

    Deviations from the shipped model (docs/methods.md B7): its degradation (3x3 blur of std 0.5 HR
    px, top-left sampling at HR index c p, circular boundaries) is replaced by this physics'
    Phi, and its nearest-neighbour start by Q_init, the physics' own estimate in HR brightness
    units. The noise input is the sensor's (the shipped code feeds 0). Batch size is free.

    Parameters: 1,068,736 at the defaults (ResUNet 1,063,344 + HyPaNet 5,392), the published
    1.07 M. Loss: MSE.
    """

    family = "deep_unfolding"
    label = "USRNet"
    smoke_params = {"iterations": 2, "channels": (4, 4, 8, 8), "blocks": 1, "hidden": 8}

    def __init__(self, physics: PhysicsOperator, iterations: int = 8,
                 channels: Sequence[int] = (16, 32, 64, 128), blocks: int = 2,
                 hidden: int = 64) -> None:
        super().__init__(physics)
        if iterations < 1 or hidden < 1:
            raise ValueError(f"iterations and hidden must be >= 1, got {iterations} and {hidden}")
        self.hyper = HyPaNet(iterations, hidden)
        self.prior = ResUNet(2, channels, blocks)

    def forward(self, lr: torch.Tensor) -> MethodOutput:
        """(B, W, m, m) raw LR windows -> hr (B, c m, c m)."""
        y = self.middle_frame(lr)
        data = LeastSquaresData(self.physics, y)
        alphas, betas = self.hyper(self.sensor.read_sd / NOISE_LEVEL_UNIT, float(self.grid.c), y)
        z = self.physics.initial(y)
        for alpha, beta in zip(alphas, betas):
            x = self.to_map(data.proximal_step(z, alpha)).unsqueeze(1)
            z = self.prior(with_constant_channel(x, beta)).flatten(1)
        return MethodOutput(hr=self.to_map(z))
