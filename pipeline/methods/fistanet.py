"""FISTA-Net (docs/methods.md §5.4): FISTA unfolded with one shared learned proximal block.

Phase k (k = 0..K-1) takes a gradient step with step mu_k from the momentum point, maps it through
a learned transform, soft-thresholds with theta_k, maps back, adds the result to the step and
clips at zero; a Nesterov-like momentum rho_k mixes the new and previous estimates. The three
scalars follow learned linear schedules in k.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.methods.base import MethodOutput, PhysicsOperator, UnmixingMethod
from pipeline.methods.blocks import soft_threshold
from pipeline.methods.blocks.unfolding import LeastSquaresData
from pipeline.methods.registry import register_model


class LinearSchedule(nn.Module):
    """A learned per-phase scalar w k + b (w, b initialised to ``init``)."""

    def __init__(self, init: Sequence[float]) -> None:
        super().__init__()
        slope, intercept = (float(value) for value in init)
        self.slope = nn.Parameter(torch.tensor(slope))
        self.intercept = nn.Parameter(torch.tensor(intercept))

    def forward(self, phase: int) -> torch.Tensor:
        """The raw (untransformed) value at phase index ``phase``."""
        return self.slope * phase + self.intercept


def _conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    """'Same' convolution with bias: Xavier-normal weights, zero bias (the FISTA-Net init)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    nn.init.xavier_normal_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class FISTANetBlock(nn.Module):
    """The proximal block shared by every phase (convolutions with bias).

    x_D = D(r) (1->C); f = F(x_D) = conv(ReLU(conv(x_D))); x_st = soft(f, theta);
    x = ReLU(r + G(F~(x_st))) with F~ = conv(ReLU(conv(.))) and G (C->1);
    sym = F~(f) - x_D.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        self.conv_d = _conv(1, channels, kernel_size)
        self.forward_in = _conv(channels, channels, kernel_size)
        self.forward_out = _conv(channels, channels, kernel_size)
        self.backward_in = _conv(channels, channels, kernel_size)
        self.backward_out = _conv(channels, channels, kernel_size)
        self.conv_g = _conv(channels, 1, kernel_size)

    def backward_transform(self, features: torch.Tensor) -> torch.Tensor:
        """F~: (B, C, H, W) -> (B, C, H, W)."""
        return self.backward_out(torch.relu(self.backward_in(features)))

    def forward(self, r: torch.Tensor, threshold: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) gradient step -> (new estimate (B, 1, H, W), sym (B, C, H, W) or None
        when gradients are not recorded (it only enters the loss), thresholded features x_st
        (B, C, H, W))."""
        x_d = self.conv_d(r)
        features = self.forward_out(torch.relu(self.forward_in(x_d)))
        sparse = soft_threshold(features, threshold)
        x_new = torch.relu(r + self.conv_g(self.backward_transform(sparse)))
        sym = self.backward_transform(features) - x_d if torch.is_grad_enabled() else None
        return x_new, sym, sparse


@register_model("fista_net")
class FISTANet(UnmixingMethod):
    """FISTA-Net: x_0 = Q y, then ``phases`` phases of one shared :class:`FISTANetBlock`; single-frame.

    Phase k: r = v - mu_k Phi^T (Phi v - y) from the momentum point v (v_0 = x_0),
    x_k = block(r, theta_k), v = x_k + rho_k (x_k - x_{k-1}), with mu_k = Sp(w_mu k + b_mu),
    theta_k = Sp(w_theta k + b_theta), rho_k = (Sp(w_rho k + b_rho) - Sp(b_rho)) / Sp(w_rho k + b_rho)
    (Sp = softplus, so rho_0 = 0) and (w, b) initialised to ``step_init`` (-0.2, 0.1),
    ``threshold_init`` (-0.5, -2) and ``momentum_init`` (0.5, 0). Output: the last x_k.

    Parameters: 37,607 at the defaults (6 scalars + the block's 37,601). The published 74.60 K
    (74,599) also counts the shipped block's conv2/conv3 pairs, 36,992 parameters the forward pass
    never uses (docs/methods.md B27); they are left out here, which changes no output.

    Loss (nominal): MSE + 0.1 mean|x - X| + 0.01 sum_k mean(sym_k^2) + 0.001 sum_k mean|x_st,k|.
    ``faithful_loss_weights`` gives the shipped effective objective (docs/methods.md B1):
    2 (MSE + 0.1 L1) + 1.01 sum sym^2 + 0.001 sum |x_st|.
    """

    family = "deep_unfolding"
    label = "FISTA-Net"
    smoke_params = {"phases": 3, "channels": 4}

    def __init__(self, physics: PhysicsOperator, phases: int = 7, channels: int = 32,
                 kernel_size: int = 3, step_init: Sequence[float] = (-0.2, 0.1),
                 threshold_init: Sequence[float] = (-0.5, -2.0),
                 momentum_init: Sequence[float] = (0.5, 0.0), l1_weight: float = 0.1,
                 sym_weight: float = 0.01, sparsity_weight: float = 0.001,
                 faithful_loss_weights: bool = False) -> None:
        super().__init__(physics)
        if phases < 1 or channels < 1:
            raise ValueError(f"phases and channels must be >= 1, got {phases} and {channels}")
        self.phases = int(phases)
        self.block = FISTANetBlock(channels, kernel_size)
        self.step = LinearSchedule(step_init)
        self.threshold = LinearSchedule(threshold_init)
        self.momentum = LinearSchedule(momentum_init)
        self.l1_weight = float(l1_weight)
        self.sym_weight = float(sym_weight)
        self.sparsity_weight = float(sparsity_weight)
        self.faithful_loss_weights = bool(faithful_loss_weights)

    def forward(self, lr: torch.Tensor) -> MethodOutput:
        """(B, W, m, m) raw LR windows -> hr (B, c m, c m); extras "sym" and "sparse": per-phase
        (B, C, c m, c m) symmetry residuals (only when gradients are recorded) and thresholded
        features."""
        y = self.middle_frame(lr)
        data = LeastSquaresData(self.physics, y)
        x_old = self.physics.initial(y)
        point = x_old
        first_momentum = F.softplus(self.momentum.intercept)
        symmetry, sparse = [], []
        for k in range(self.phases):
            r = data.gradient_step(point, F.softplus(self.step(k)))
            x_new, sym, x_st = self.block(self.to_map(r).unsqueeze(1), F.softplus(self.threshold(k)))
            x_new = x_new.flatten(1)
            raw_momentum = F.softplus(self.momentum(k))
            point = x_new + (raw_momentum - first_momentum) / raw_momentum * (x_new - x_old)
            x_old = x_new
            symmetry.append(sym)
            sparse.append(x_st)
        extras = {"sym": symmetry, "sparse": sparse} if symmetry[0] is not None else {"sparse": sparse}
        return MethodOutput(hr=self.to_map(x_old), extras=extras)

    def loss(self, output: MethodOutput, target_hr: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """(total, {"mse", "l1", "sym", "sparsity"}): see the class docstring for the weights."""
        mse = self.mse(output, target_hr)
        l1 = F.l1_loss(output.hr, target_hr.to(output.hr.dtype))
        sym = torch.stack([torch.mean(s ** 2) for s in output.extras["sym"]]).sum()
        sparsity = torch.stack([torch.mean(torch.abs(s)) for s in output.extras["sparse"]]).sum()
        data_weight, sym_weight = (2.0, 1.0 + self.sym_weight) if self.faithful_loss_weights \
            else (1.0, self.sym_weight)
        total = (data_weight * (mse + self.l1_weight * l1) + sym_weight * sym
                 + self.sparsity_weight * sparsity)
        return total, {"mse": mse.item(), "l1": l1.item(), "sym": sym.item(),
                       "sparsity": sparsity.item()}
