"""Super-resolution parts shared by the GAN generators and TDAN (methods.md §6, §6.1).

The mmagic conventions the reference networks were built from: residual blocks without batch
norm, a sub-pixel (PixelShuffle) up-sampler, and Kaiming-normal weights scaled down for the
blocks that sit on a residual path.
"""
from __future__ import annotations

import torch
from torch import nn


def scaled_kaiming_(module: nn.Module, scale: float) -> None:
    """Kaiming-normal (fan-in, ReLU gain) weights times ``scale`` and zero biases for every
    convolution and linear layer in ``module`` (mmagic's ``default_init_weights``)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            with torch.no_grad():
                layer.weight.mul_(scale)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class ResidualBlock(nn.Module):
    """x + conv3x3(ReLU(conv3x3(x))), channels kept, biases on, no batch norm.

    Weights are Kaiming-normal scaled by 0.1 so that a deep stack starts close to the identity.
    2 (9 C^2 + C) parameters (9,248 at C = 32; 73,856 at C = 64).
    """

    def __init__(self, channels: int, init_scale: float = 0.1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        scaled_kaiming_(self, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return x + self.conv2(torch.relu(self.conv1(x)))


class PixelShuffleUpsampler(nn.Sequential):
    """conv k x k in -> out s^2 (bias), then PixelShuffle(s): (B, in, H, W) -> (B, out, sH, sW).

    Kaiming-normal weights (mmagic's ``PixelShufflePack``).
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int, kernel_size: int = 3) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels * scale ** 2, kernel_size,
                                   padding=kernel_size // 2),
                         nn.PixelShuffle(scale))
        scaled_kaiming_(self, 1.0)
