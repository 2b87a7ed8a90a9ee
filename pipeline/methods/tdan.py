"""TDAN (docs/methods.md §6.1): deformable alignment of the 4 neighbours of a 5-frame window to its
middle frame, then x c reconstruction from the 5 aligned LR frames."""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from pipeline.methods.base import MethodOutput, PhysicsOperator, UnmixingMethod
from pipeline.methods.blocks.deformable import DeformableConv
from pipeline.methods.blocks.super_resolution import PixelShuffleUpsampler, ResidualBlock
from pipeline.methods.registry import register_model


@register_model("tdan")
class TDAN(UnmixingMethod):
    """Multi-frame: uses all ``window`` = 5 frames, outputs the middle frame's HR map.

    1. Features of every frame at m x m: conv3x3 1 -> C + ReLU, ``extract_blocks`` residual
       blocks (conv-ReLU-conv, no BN).
    2. For each neighbour: aggregate = conv3x3 2C -> C of [centre, neighbour] features, then two
       deformable convs (offsets from their own input); align = deformable conv of the
       neighbour's features with offsets from the aggregate, then a deformable conv; conv3x3
       C -> 1 gives an aligned LR frame. All deformable convs: ``deform_groups`` groups,
       zero-initialised offset convs. The neighbours run as one batch.
    3. The 5 slots (the raw middle frame in the centre slot) -> conv3x3 5 -> C + ReLU,
       ``reconstruct_blocks`` residual blocks, conv C -> C c^2 + PixelShuffle(c), conv3x3
       C -> 1 without bias.

    Loss MSE(hr, target) + ``align_weight`` MSE(5 aligned slots, middle frame); the centre slot
    is in the mean, as shipped. ``faithful_loss_weights`` doubles it (mmengine summed the total
    and its components, §10 B1). The centre slot is the window's own middle frame (§10 B4 fixed:
    the reference used frame 10 of each 20-frame batch for every window; with windows as
    samples there is no such frame to reproduce). Defaults (C = 32, 5 + 10 blocks, 8 groups):
    584,833 parameters (published 0.59 M).
    """

    family = "super_resolution"
    label = "TDAN"
    window = 5
    smoke_params: ClassVar[dict] = {"channels": 8, "extract_blocks": 1, "reconstruct_blocks": 1,
                                    "deform_groups": 2}

    def __init__(self, physics: PhysicsOperator, channels: int = 32, extract_blocks: int = 5,
                 reconstruct_blocks: int = 10, deform_groups: int = 8, align_weight: float = 0.01,
                 faithful_loss_weights: bool = False) -> None:
        super().__init__(physics)
        self.extract = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
                                     *(ResidualBlock(channels, init_scale=0.1) for _ in range(extract_blocks)))
        self.aggregate_in = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.aggregate = nn.ModuleList(DeformableConv(channels, channels, 3, deform_groups) for _ in range(2))
        self.align_guided = DeformableConv(channels, channels, 3, deform_groups, guide_channels=channels)
        self.align_out = DeformableConv(channels, channels, 3, deform_groups)
        self.to_frame = nn.Conv2d(channels, 1, 3, padding=1)
        self.reconstruct = nn.Sequential(
            nn.Conv2d(self.window, channels, 3, padding=1), nn.ReLU(),
            *(ResidualBlock(channels, init_scale=0.1) for _ in range(reconstruct_blocks)),
            PixelShuffleUpsampler(channels, channels, self.grid.c),
            nn.Conv2d(channels, 1, 3, padding=1, bias=False))
        self.align_weight = float(align_weight)
        self.faithful_loss_weights = bool(faithful_loss_weights)

    def align(self, centre: torch.Tensor, neighbour: torch.Tensor) -> torch.Tensor:
        """(N, C, m, m) centre and neighbour features -> (N, 1, m, m) neighbour aligned to the centre."""
        guide = self.aggregate_in(torch.cat([centre, neighbour], dim=1))
        for conv in self.aggregate:
            guide = conv(guide)
        return self.to_frame(self.align_out(self.align_guided(neighbour, guide)))

    def forward(self, lr: torch.Tensor) -> MethodOutput:
        """(B, W, m, m) raw LR windows, W >= 5 odd -> hr (B, c m, c m) of the middle frame;
        extras["aligned"]: (B, 5, m, m) aligned LR frames (centre slot = the middle frame)."""
        middle = self.middle_frame(lr)  # validates the shape
        batch, frames, m, _ = lr.shape
        half = self.window // 2
        window = lr[:, frames // 2 - half:frames // 2 + half + 1].to(middle.dtype)
        features = self.extract(window.reshape(batch * self.window, 1, m, m))
        features = features.reshape(batch, self.window, -1, m, m)
        others = [index for index in range(self.window) if index != half]
        neighbours = features[:, others].flatten(0, 1)  # (B * 4, C, m, m)
        centre = features[:, half:half + 1].expand(-1, len(others), -1, -1, -1).flatten(0, 1)
        aligned = self.align(centre, neighbours).reshape(batch, len(others), m, m)
        slots = torch.cat([aligned[:, :half], middle.reshape(batch, 1, m, m), aligned[:, half:]], dim=1)
        hr = self.reconstruct(slots).squeeze(1)
        return MethodOutput(hr=hr, extras={"aligned": slots})

    def loss(self, output: MethodOutput, target_hr: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """(MSE + align_weight alignment MSE, doubled when faithful; {"mse", "align"})."""
        mse = self.mse(output, target_hr)
        slots = output.extras["aligned"]
        centre = slots[:, self.window // 2:self.window // 2 + 1]
        align = torch.mean((slots - centre) ** 2)
        total = mse + self.align_weight * align
        if self.faithful_loss_weights:
            total = 2.0 * total
        return total, {"mse": mse.item(), "align": align.item()}
