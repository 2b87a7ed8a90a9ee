"""SRCNN (docs/methods.md §6): three convolutions refining the Q_init pre-upsampled frame."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pipeline.methods.base import MethodOutput, PhysicsOperator, UnmixingMethod
from pipeline.methods.registry import register_model


@register_model("srcnn")
class SRCNN(UnmixingMethod):
    """x_0 = Q y as a (c m, c m) map, then conv k0 1->C0, ReLU, conv k1 C0->C1, ReLU, conv k2 C1->1.

    Convolutions have biases and 'same' padding; defaults channels (32, 16) and kernel_sizes
    (9, 5, 5) give 15,841 parameters. Single-frame. Loss MSE; ``faithful_loss_weights`` gives the
    shipped 2 MSE (the total and its only component were both summed, docs/methods.md B1).
    """

    family = "super_resolution"
    label = "SRCNN"

    def __init__(self, physics: PhysicsOperator, channels: Sequence[int] = (32, 16),
                 kernel_sizes: Sequence[int] = (9, 5, 5), faithful_loss_weights: bool = False
                 ) -> None:
        super().__init__(physics)
        channels, kernel_sizes = tuple(channels), tuple(kernel_sizes)
        if len(channels) != 2 or len(kernel_sizes) != 3:
            raise ValueError(f"SRCNN needs 2 channel counts and 3 kernel sizes, got {channels} "
                             f"and {kernel_sizes}")
        if any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel sizes must be odd and >= 1, got {kernel_sizes}")
        widths = (1, *channels, 1)
        layers: list[nn.Module] = []
        for index, kernel in enumerate(kernel_sizes):
            layers.append(nn.Conv2d(widths[index], widths[index + 1], kernel, padding="same"))
            if index < len(kernel_sizes) - 1:
                layers.append(nn.ReLU())
        self.body = nn.Sequential(*layers)
        self.faithful_loss_weights = bool(faithful_loss_weights)

    def forward(self, lr: torch.Tensor) -> MethodOutput:
        """(B, W, m, m) raw LR windows -> hr (B, c m, c m)."""
        x0 = self.to_map(self.physics.initial(self.middle_frame(lr)))
        return MethodOutput(hr=self.body(x0.unsqueeze(1)).squeeze(1))

    def loss(self, output: MethodOutput, target_hr: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """(MSE, or 2 MSE when faithful; {"mse"})."""
        mse = self.mse(output, target_hr)
        total = 2.0 * mse if self.faithful_loss_weights else mse
        return total, {"mse": mse.item()}
