"""GMFN (docs/methods.md §6): residual dense blocks unrolled over feedback steps, each step gating
the previous step's deep features back into the blocks' inputs."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.methods.base import MethodOutput, PhysicsOperator
from pipeline.methods.blocks.super_resolution import (LowResolutionNetwork, ResidualDenseBlock,
                                                      deconv_upsampler, prelu, same_conv)
from pipeline.methods.registry import register_model


@register_model("gmfn")
class GMFN(LowResolutionNetwork):
    """Gated multiple feedback network.

    Stem: conv 3x3 1->S, PReLU, conv 1x1 S->F, PReLU (computed once). Each of ``steps`` steps runs
    ``blocks`` residual dense blocks (``layers`` layers of growth ``growth``, PReLU, 1x1 fusion,
    residual scale 0.2). From step 2 on, the gate (1x1 conv + PReLU) fuses the outputs of the
    last ``reroute`` blocks of the previous step into one F-channel map, and before each of the
    first ``refine`` blocks (all of them when ``refine`` >= ``blocks``) the refine conv (1x1 2F->F
    + PReLU) fuses it with the block's input. Every step reconstructs deconv (c + 4, stride c,
    padding 2) F->F + PReLU, conv 3x3 F->1, plus the bilinear x c up-sampled LR frame.

    The answer is the last step; the loss is the mean of the steps' MSEs (the paper's loss on
    every step). ``faithful_first_step`` reproduces the shipped code (docs/methods.md B5): answer and
    loss from step 1 only, so the gate and refine convs never train (only step 1 is computed).
    Defaults F = 32, S = 128, 8 blocks x 8 layers of growth 32, 4 steps, reroute 8, refine 16
    give 2,796,518 parameters at c = 3 (published 2.80 M). Single-frame.
    """

    label = "GMFN"
    smoke_params = {"features": 4, "stem_features": 8, "blocks": 2, "layers": 2, "growth": 4,
                    "steps": 2, "reroute": 2}

    def __init__(self, physics: PhysicsOperator, features: int = 32, stem_features: int = 128,
                 blocks: int = 8, layers: int = 8, growth: int = 32, steps: int = 4,
                 reroute: int = 8, refine: int = 16, faithful_first_step: bool = False) -> None:
        super().__init__(physics)
        if not 1 <= reroute <= blocks:
            raise ValueError(f"reroute must be between 1 and blocks = {blocks}, got {reroute}")
        if steps < 1 or refine < 0:
            raise ValueError(f"GMFN needs steps >= 1 and refine >= 0, got {steps} and {refine}")
        self.stem = nn.Sequential(same_conv(1, stem_features), prelu(),
                                  same_conv(stem_features, features, 1), prelu())
        self.blocks = nn.ModuleList(ResidualDenseBlock(features, growth, layers, prelu, 0.2)
                                    for _ in range(blocks))
        self.gate = nn.Sequential(same_conv(reroute * features, features, 1), prelu())
        self.refine = nn.Sequential(same_conv(2 * features, features, 1), prelu())
        self.reconstruct = nn.Sequential(deconv_upsampler(features, features, self.grid.c),
                                         same_conv(features, 1))
        self.steps, self.reroute, self.refined_blocks = steps, reroute, min(refine, blocks)
        self.faithful_first_step = bool(faithful_first_step)

    def step_outputs(self, image: torch.Tensor) -> list[torch.Tensor]:
        """(B, 1, m, m) raw LR image -> one (B, 1, c m, c m) raw HR map per computed step."""
        side = self.grid.hr_size
        upsampled = F.interpolate(image, size=(side, side), mode="bilinear", align_corners=False)
        shallow = self.stem(image)
        outputs, previous = [], None
        for _ in range(1 if self.faithful_first_step else self.steps):
            feedback = None if previous is None else self.gate(torch.cat(previous[-self.reroute:], dim=1))
            features, previous = shallow, []
            for index, block in enumerate(self.blocks):
                if feedback is not None and index < self.refined_blocks:
                    features = self.refine(torch.cat((features, feedback), dim=1))
                features = block(features)
                previous.append(features)
            outputs.append(upsampled + self.reconstruct(features))
        return outputs

    def forward(self, lr: torch.Tensor) -> MethodOutput:
        """(B, W, m, m) raw LR windows -> hr (B, c m, c m) of the last computed step; extras
        ``"steps"``: every computed step's (B, c m, c m) map."""
        steps = [output.squeeze(1) for output in self.step_outputs(self.lr_image(lr))]
        return MethodOutput(hr=steps[-1], extras={"steps": steps})

    def loss(self, output: MethodOutput, target_hr: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """(mean over steps of the MSE; {"mse": MSE of the answer, "mse_steps": the total})."""
        mse = self.mse(output, target_hr)
        total = torch.stack([self.mse(MethodOutput(hr=step), target_hr)
                             for step in output.extras["steps"]]).mean()
        return total, {"mse": mse.item(), "mse_steps": total.item()}
