"""Building blocks shared by several methods (every method's stages depend on this package)."""
from __future__ import annotations

import torch
from torch import nn


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """A half-precision (bf16/fp16) tensor as fp32; fp32 and fp64 unchanged. Sampling grids and
    the maps they read stay in full precision under autocast."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def soft_threshold(x: torch.Tensor, theta: torch.Tensor | float) -> torch.Tensor:
    """sign(x) * max(|x| - theta, 0), elementwise; ``theta`` broadcasts against ``x``."""
    return torch.sign(x) * torch.relu(torch.abs(x) - theta)


def bias_free_conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    """Stride-1 'same' convolution without bias, Xavier-normal weights (the ISTA-Net convention).

    ``kernel_size`` must be odd so that the map keeps its size.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
    nn.init.xavier_normal_(conv.weight)
    return conv
