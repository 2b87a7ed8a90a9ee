"""Deformable convolution with learned offsets, as in mmcv's ``DeformConv2dPack`` and mmagic's
``AugmentedDeformConv2dPack`` (docs/methods.md §6.1, §12.5), on ``torchvision.ops.deform_conv2d``.

On CPU the same operation runs as one ``grid_sample`` of every kernel tap and a contraction
(:func:`sampled_deform_conv2d`): torchvision's CPU backward kernel took 19 of the 21 s of a
DeRefNet training step on the 2-core machine, the sampled form is ~11x faster there, and the two
agree to float32 rounding in values and gradients (tests/test_adversarial.py).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.methods.blocks import full_precision


def sampled_deform_conv2d(x: torch.Tensor, offsets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d(x, offsets, weight, padding=k // 2)`` (stride 1, no bias,
    no mask) as bilinear sampling plus a contraction.

    x (N, C, H, W); offsets (N, 2 G k^2, H, W), (dy, dx) per kernel tap of each of G channel
    groups, torchvision's layout; weight (out, C, k, k). Samples outside the map read zeros, each
    bilinear corner on its own, as torchvision's kernel does. Returns (N, out, H, W).
    """
    batch, channels, height, width = x.shape
    out_channels, _, kernel, _ = weight.shape
    taps = kernel * kernel
    groups = offsets.shape[1] // (2 * taps)
    tap_rows, tap_cols = torch.meshgrid(*(torch.arange(kernel, dtype=x.dtype, device=x.device) - kernel // 2,) * 2,
                                        indexing="ij")
    offsets = offsets.reshape(batch * groups, taps, 2, height, width)
    rows = torch.arange(height, dtype=x.dtype, device=x.device)[:, None] + tap_rows.reshape(taps, 1, 1) + offsets[:, :, 0]
    cols = torch.arange(width, dtype=x.dtype, device=x.device) + tap_cols.reshape(taps, 1, 1) + offsets[:, :, 1]
    with torch.autocast(x.device.type, enabled=False):  # the sampling grid stays fp32 under bf16 autocast
        rows, cols = full_precision(rows), full_precision(cols)
        grid = torch.stack([2.0 * cols / max(width - 1, 1) - 1.0, 2.0 * rows / max(height - 1, 1) - 1.0], dim=-1)
        samples = F.grid_sample(full_precision(x).reshape(batch * groups, channels // groups, height, width),
                                full_precision(grid).reshape(batch * groups, taps * height, width, 2),
                                mode="bilinear", padding_mode="zeros", align_corners=True)
    samples = samples.reshape(batch, channels, taps, height, width)
    return torch.einsum("nckhw,ock->nohw", samples, weight.reshape(out_channels, channels, taps))


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
        if x.device.type == "cpu":
            return sampled_deform_conv2d(x, offsets, self.weight)
        from torchvision.ops import deform_conv2d  # imported on the CUDA path only (slow to import)

        return deform_conv2d(x, offsets, self.weight, padding=self.weight.shape[-1] // 2)
