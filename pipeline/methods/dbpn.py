"""DBPN (docs/methods.md §6): alternating up- and down-projection units (iterative back-projection)."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.methods.base import PhysicsOperator
from pipeline.methods.blocks.super_resolution import (DownProjection, LowResolutionNetwork,
                                                      UpProjection, prelu, same_conv)
from pipeline.methods.registry import register_model


@register_model("dbpn")
class DBPN(LowResolutionNetwork):
    """conv 3x3 1->S, PReLU, conv 1x1 S->F, PReLU; then ``up_units`` up-projections with a
    down-projection between consecutive ones (Up, Down, ..., Up; no dense concatenation, the
    D-DBPN-S layout); conv 1x1 F->1 on the last HR features. Projections use (transposed)
    convolutions of kernel c + 4, stride c, padding 2 (7, 3, 2 at c = 3), each with a PReLU.

    Defaults S = 128, F = 32, 7 up / 6 down units give 1,963,594 parameters at c = 3 (published
    1.96 M). Single-frame; loss MSE.
    """

    label = "DBPN"
    smoke_params = {"features": 4, "stem_features": 8, "up_units": 2}

    def __init__(self, physics: PhysicsOperator, features: int = 32, stem_features: int = 128,
                 up_units: int = 7) -> None:
        super().__init__(physics)
        if up_units < 1:
            raise ValueError(f"DBPN needs at least one up-projection unit, got {up_units}")
        c = self.grid.c
        self.stem = nn.Sequential(same_conv(1, stem_features), prelu(),
                                  same_conv(stem_features, features, 1), prelu())
        units: list[nn.Module] = [UpProjection(features, c)]
        for _ in range(up_units - 1):
            units += [DownProjection(features, c), UpProjection(features, c)]
        self.projections = nn.Sequential(*units)
        self.tail = same_conv(features, 1, 1)

    def super_resolve(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, m, m) raw LR image -> (B, 1, c m, c m) raw HR map."""
        return self.tail(self.projections(self.stem(image)))
