"""Deformable convolution with learned offsets, as in mmcv's ``DeformConv2dPack`` and mmagic's
``AugmentedDeformConv2dPack`` (methods.md §6.1, §12.5), on ``torchvision.ops.deform_conv2d``.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import deform_conv2d


class DeformableConv(nn.Module):
    """Stride-1 'same' k x k deformable convolution without bias whose sampling offsets come
    from a zero-initialised k x k convolution (with bias) of a guide map.

    ``guide_channels``: channels of the map the offsets are computed from (None: the input
    itself, mmcv's ``DeformConv2dPack``; otherwise a separate guide, mmagic's
    ``AugmentedDeformConv2dPack``). ``deform_groups`` input-channel groups get their own offsets
    (2 k^2 each, (dy, dx) per kernel tap). With zero offsets this is a plain convolution, which
    is where training starts. Weights uniform(+-1/sqrt(in k^2)) (mmcv). Parameters: out in k^2 +
    (guide 2 g k^2 k^2 + 2 g k^2), 50,832 at 32 -> 32, k 3, g 8.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 deform_groups: int = 1, guide_channels: int | None = None) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        if in_channels % deform_groups:
            raise ValueError(f"in_channels {in_channels} must be a multiple of deform_groups {deform_groups}")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        bound = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        nn.init.uniform_(self.weight, -bound, bound)
        guide = in_channels if guide_channels is None else guide_channels
        self.offset = nn.Conv2d(guide, 2 * deform_groups * kernel_size ** 2, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        """(B, in, H, W) features (and (B, guide, H, W) guide, if built with one) -> (B, out, H, W)."""
        offsets = self.offset(x if guide is None else guide)
        return deform_conv2d(x, offsets, self.weight, padding=self.weight.shape[-1] // 2)
