"""RDN (docs/methods.md §6): residual dense blocks on the LR frame, global feature fusion, x c."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.methods.base import PhysicsOperator
from pipeline.methods.blocks.super_resolution import (LowResolutionNetwork, PixelShuffleUpsampler,
                                                      ResidualDenseBlock, same_conv)
from pipeline.methods.registry import register_model


@register_model("rdn")
class RDN(LowResolutionNetwork):
    """Shallow features F1 = conv 1->G0, F2 = conv G0->G0; D residual dense blocks (C layers of
    growth G, ReLU, 1x1 local fusion, local skip); global fusion 1x1 D G0->G0 then 3x3 over the
    concatenated block outputs, plus F1; conv G0->G c^2 + PixelShuffle(c); conv G->1.

    Defaults G0 = G = 64, D = 16, C = 8 give 22,305,729 parameters at c = 3 (published 22.31 M).
    Single-frame; loss MSE.
    """

    label = "RDN"
    smoke_params = {"features": 8, "growth": 4, "blocks": 2, "layers": 2}

    def __init__(self, physics: PhysicsOperator, features: int = 64, growth: int = 64,
                 blocks: int = 16, layers: int = 8) -> None:
        super().__init__(physics)
        if blocks < 1:
            raise ValueError(f"RDN needs at least one dense block, got {blocks}")
        self.shallow_first = same_conv(1, features)
        self.shallow_second = same_conv(features, features)
        self.blocks = nn.ModuleList(ResidualDenseBlock(features, growth, layers)
                                    for _ in range(blocks))
        self.global_fusion = nn.Sequential(same_conv(blocks * features, features, 1),
                                           same_conv(features, features))
        self.upsample = PixelShuffleUpsampler(features, growth, self.grid.c)
        self.tail = same_conv(growth, 1)

    def super_resolve(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, m, m) raw LR image -> (B, 1, c m, c m) raw HR map."""
        shallow = self.shallow_first(image)
        features = self.shallow_second(shallow)
        outputs = []
        for block in self.blocks:
            features = block(features)
            outputs.append(features)
        features = shallow + self.global_fusion(torch.cat(outputs, dim=1))
        return self.tail(self.upsample(features))
