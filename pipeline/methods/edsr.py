"""EDSR (docs/methods.md §6): residual blocks without batch norm on the LR frame, pixel-shuffle x c."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.methods.base import PhysicsOperator
from pipeline.methods.blocks.super_resolution import (LowResolutionNetwork, PixelShuffleUpsampler,
                                                      ResidualBlock, same_conv)
from pipeline.methods.registry import register_model


@register_model("edsr")
class EDSR(LowResolutionNetwork):
    """conv 1->F; ``blocks`` residual blocks (conv-ReLU-conv, ``res_scale``) and a conv F->F inside
    a global skip; conv F->F c^2 + PixelShuffle(c); conv F->1. All 3x3 with bias, PyTorch default
    init, everything at m x m until the up-sampler.

    As shipped the input is multiplied by ``img_range`` = 255 and the output divided by it (no mean
    shift); with ReLU networks this only rescales the biases' effective size and learning rate.
    Defaults (32 features, 16 blocks) give 389,025 parameters at c = 3 (published 0.39 M).
    Single-frame; loss MSE.
    """

    label = "EDSR"
    smoke_params = {"features": 8, "blocks": 2}

    def __init__(self, physics: PhysicsOperator, features: int = 32, blocks: int = 16,
                 res_scale: float = 1.0, img_range: float = 255.0) -> None:
        super().__init__(physics)
        if img_range <= 0:
            raise ValueError(f"img_range must be positive, got {img_range}")
        self.head = same_conv(1, features)
        self.body = nn.Sequential(*(ResidualBlock(features, res_scale) for _ in range(blocks)),
                                  same_conv(features, features))
        self.upsample = PixelShuffleUpsampler(features, features, self.grid.c)
        self.tail = same_conv(features, 1)
        self.img_range = float(img_range)

    def super_resolve(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, m, m) raw LR image -> (B, 1, c m, c m) raw HR map."""
        features = self.head(image * self.img_range)
        features = features + self.body(features)
        return self.tail(self.upsample(features)) / self.img_range
