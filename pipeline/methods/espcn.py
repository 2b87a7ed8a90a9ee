"""ESPCN (docs/methods.md §6): two convolutions on the LR frame, then a sub-pixel convolution x c."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pipeline.methods.base import PhysicsOperator
from pipeline.methods.blocks.super_resolution import (LowResolutionNetwork, PixelShuffleUpsampler,
                                                      same_conv)
from pipeline.methods.registry import register_model


@register_model("espcn")
class ESPCN(LowResolutionNetwork):
    """conv k0 1->C0, ReLU, conv k1 C0->C1, ReLU, conv k2 C1->c^2, PixelShuffle(c); convs with bias.

    Defaults channels (64, 32), kernel_sizes (5, 3, 3) give 22,729 parameters at c = 3: the
    published table swaps the columns (its "54.75M params / 22.73K FLOPs" is 22.73 K params).
    Single-frame; loss MSE.
    """

    label = "ESPCN"
    smoke_params = {"channels": (8, 4)}

    def __init__(self, physics: PhysicsOperator, channels: Sequence[int] = (64, 32),
                 kernel_sizes: Sequence[int] = (5, 3, 3)) -> None:
        super().__init__(physics)
        channels, kernel_sizes = tuple(channels), tuple(kernel_sizes)
        if len(channels) != 2 or len(kernel_sizes) != 3:
            raise ValueError(f"ESPCN needs 2 channel counts and 3 kernel sizes, got {channels} "
                             f"and {kernel_sizes}")
        self.body = nn.Sequential(
            same_conv(1, channels[0], kernel_sizes[0]), nn.ReLU(),
            same_conv(channels[0], channels[1], kernel_sizes[1]), nn.ReLU(),
            PixelShuffleUpsampler(channels[1], 1, self.grid.c, kernel_sizes[2]))

    def super_resolve(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, m, m) raw LR image -> (B, 1, c m, c m) raw HR map."""
        return self.body(image)
