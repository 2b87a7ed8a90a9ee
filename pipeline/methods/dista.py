"""DISTA-Net (docs/methods.md §4, B2): unfolded ISTA whose transform and threshold depend on the input.

Every phase takes the ISTA gradient step, transforms the result with a static conv branch fused
with a dynamic one (a 3x3 kernel generated per sample from the phase input), shrinks with an
element-wise threshold produced by an LSK-style attention on the features, and maps back. The
symmetry residual F~(F(r)) - r of every phase enters the loss.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.methods.base import MethodOutput, PhysicsOperator, UnmixingMethod
from pipeline.methods.blocks import bias_free_conv, soft_threshold
from pipeline.methods.registry import register_model


class SelectiveThreshold(nn.Module):
    """Dynamic threshold (§4.2 step 5), element-wise and data-dependent.

    b1 = f, b2 = depthwise conv3x3(f); a_i = conv1x1 C -> C/2 (b_i); s = sigmoid(conv3x3 2 -> 2 of
    the channel mean and max of [a1, a2]); attn = conv1x1 C/2 -> C (a1 s_0 + a2 s_1). Every conv
    has a bias (PyTorch default init). 6,950 parameters for C = 64.

    Shipped (``faithful``): theta = f * attn. attn is itself linear in f, so theta grows with f^2
    and may be negative (B10); at this project's raw intensities (B14) the shrink then amplifies
    instead of shrinking and the phases overflow float32 (seen on an ill-conditioned Q_init).
    Default: theta = |f| * sigmoid(attn), a non-negative fraction of each feature that does not
    depend on the intensity scale.
    """

    def __init__(self, channels: int, faithful: bool = False) -> None:
        super().__init__()
        self.faithful = bool(faithful)
        if channels < 2 or channels % 2:
            raise ValueError(f"channels must be even and >= 2, got {channels}")
        half = channels // 2
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.reduce_direct = nn.Conv2d(channels, half, 1)
        self.reduce_depthwise = nn.Conv2d(channels, half, 1)
        self.select = nn.Conv2d(2, 2, 3, padding=1)
        self.expand = nn.Conv2d(half, channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) features -> (B, C, H, W) thresholds."""
        direct = self.reduce_direct(features)
        context = self.reduce_depthwise(self.depthwise(features))
        both = torch.cat([direct, context], dim=1)
        pooled = torch.cat([both.mean(dim=1, keepdim=True), both.amax(dim=1, keepdim=True)], dim=1)
        weights = torch.sigmoid(self.select(pooled))
        attention = self.expand(direct * weights[:, :1] + context * weights[:, 1:])
        if self.faithful:
            return features * attention
        return features.abs() * torch.sigmoid(attention)


class DISTPhase(nn.Module):
    """One DIST phase (§4.2) on (B, n) estimates; 363,184 parameters at n = 1089, C = 64.

    r = x - rho x Phi^T Phi + rho y Phi; F(r) = conv C->C(ReLU(conv 1->C(r))) (bias-free,
    Xavier-normal); d = sigmoid(r * k(x)) with the kernel k(x) = W2 W1 x (Linear n -> hidden ->
    K^2, no activation between, from the phase input x before the gradient step); fused
    f' = w F(r) + (1 - w) d with the constant w = ``fusion_weight``; z = soft(f', theta(f'));
    x_new = F~(z) = conv C->1(ReLU(conv C->C(z))); sym = F~(f') - r. theta: see
    :class:`SelectiveThreshold`.

    Dynamic conv: by default each sample is convolved with its own kernel (one grouped conv with
    the batch folded into the groups) and d (B, 1, H, W) broadcasts over the C channels; gradients
    reach W1 and W2. ``faithful_dynamic_conv`` reproduces the shipped code (B2): the kernels are
    detached (W1, W2 never train) and a groups=1 conv gives (B, B, H, W), channel k of sample b
    being r_b convolved with sample k's kernel, so it fuses only when B is 1 or C.
    """

    def __init__(self, n_hr: int, channels: int, kernel_hidden: int, dynamic_kernel_size: int,
                 fusion_weight: float, step_init: float, faithful_dynamic_conv: bool,
                 faithful_threshold: bool) -> None:
        super().__init__()
        if dynamic_kernel_size < 1 or dynamic_kernel_size % 2 == 0:
            raise ValueError(f"dynamic_kernel_size must be odd and >= 1, got {dynamic_kernel_size}")
        self.channels = channels
        self.dynamic_kernel_size = dynamic_kernel_size
        self.fusion_weight = float(fusion_weight)
        self.faithful_dynamic_conv = bool(faithful_dynamic_conv)
        self.step = nn.Parameter(torch.tensor(float(step_init)))
        self.forward_in = bias_free_conv(1, channels, 3)
        self.forward_out = bias_free_conv(channels, channels, 3)
        self.kernel_hidden = nn.Linear(n_hr, kernel_hidden)
        self.kernel_out = nn.Linear(kernel_hidden, dynamic_kernel_size ** 2)
        self.threshold = SelectiveThreshold(channels, faithful_threshold)
        self.backward_in = bias_free_conv(channels, channels, 3)
        self.backward_out = bias_free_conv(channels, 1, 3)

    def dynamic_branch(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """sigmoid(r * k(x)): (B, n) phase inputs and (B, 1, H, W) residual maps -> (B, 1, H, W),
        or (B, B, H, W) in the faithful mode (see the class docstring)."""
        batch, _, height, width = r.shape
        size = self.dynamic_kernel_size
        kernels = self.kernel_out(self.kernel_hidden(x)).reshape(batch, 1, size, size)
        if self.faithful_dynamic_conv:
            return torch.sigmoid(F.conv2d(r, kernels.detach(), padding=size // 2))
        per_sample = F.conv2d(r.reshape(1, batch, height, width), kernels, padding=size // 2,
                              groups=batch)
        return torch.sigmoid(per_sample.reshape(batch, 1, height, width))

    def backward_transform(self, features: torch.Tensor) -> torch.Tensor:
        """F~: (B, C, H, W) -> (B, 1, H, W)."""
        return self.backward_out(torch.relu(self.backward_in(features)))

    def forward(self, x: torch.Tensor, gram: torch.Tensor, adjoint_y: torch.Tensor, side: int,
                with_symmetry: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, n) estimate -> ((B, n) new estimate, (B, 1, side, side) symmetry residual, or None
        unless ``with_symmetry``)."""
        batch = x.shape[0]
        if self.faithful_dynamic_conv and batch not in (1, self.channels):
            raise ValueError(f"faithful_dynamic_conv fuses the shipped (B, B, H, W) dynamic features "
                             f"with {self.channels} channels, which needs a batch of 1 or "
                             f"{self.channels}, got {batch}")
        r = (x - self.step * (x @ gram) + self.step * adjoint_y).reshape(batch, 1, side, side)
        static = self.forward_out(torch.relu(self.forward_in(r)))
        fused = (self.fusion_weight * static
                 + (1.0 - self.fusion_weight) * self.dynamic_branch(x, r))
        x_new = self.backward_transform(soft_threshold(fused, self.threshold(fused)))
        sym = self.backward_transform(fused) - r if with_symmetry else None
        return x_new.reshape(x.shape), sym


@register_model("dista_net")
class DISTANet(UnmixingMethod):
    """DISTA-Net (§4): x_0 = Q y, then ``phases`` DIST phases; the last output is the map.

    Single-frame. Loss MSE + sym_weight * sum_k mean(sym_k^2) (0.01; the shipped keys are not
    double-counted, B1). Defaults are the c = 3 paper model: 6 phases, 64 channels, a 3x3 dynamic
    kernel from Linear n -> 256 -> 9, fusion 0.7 / 0.3, rho initialised to 0.5.

    Parameters: 363,184 per phase at c = 3 (W1 + W2 281,353; threshold attention 6,950), 2,179,104
    for 6 phases, the published 2.179 M exactly. W1 has n inputs, so the count grows with c
    (5,152,800 at c = 5). With ``faithful_dynamic_conv`` (shipped B2 behaviour, see
    :class:`DISTPhase`) the 1,688,118 parameters of W1/W2 stay at their initial values and
    outputs depend on the other samples of the batch, which must hold 1 or ``channels`` windows.
    ``faithful_threshold``: the shipped theta = f' * attn (see :class:`SelectiveThreshold`).
    """

    family = "deep_unfolding"
    label = "DISTA-Net"
    smoke_params = {"phases": 2, "channels": 4, "kernel_hidden": 8}

    def __init__(self, physics: PhysicsOperator, phases: int = 6, channels: int = 64,
                 kernel_hidden: int = 256, dynamic_kernel_size: int = 3, fusion_weight: float = 0.7,
                 step_init: float = 0.5, sym_weight: float = 0.01,
                 faithful_dynamic_conv: bool = False, faithful_threshold: bool = False) -> None:
        super().__init__(physics)
        if phases < 1 or kernel_hidden < 1:
            raise ValueError(f"phases and kernel_hidden must be >= 1, got {phases} and {kernel_hidden}")
        if not 0.0 <= fusion_weight <= 1.0:
            raise ValueError(f"fusion_weight must lie in [0, 1], got {fusion_weight}")
        self.sym_weight = float(sym_weight)
        self.phases = nn.ModuleList(
            DISTPhase(self.grid.n_hr, channels, kernel_hidden, dynamic_kernel_size, fusion_weight,
                      step_init, faithful_dynamic_conv, faithful_threshold) for _ in range(phases))
        self.phases.to(memory_format=torch.channels_last)  # CPU (oneDNN) convs run ~1.4x faster

    def forward(self, lr: torch.Tensor) -> MethodOutput:
        """(B, W, m, m) raw LR windows -> hr (B, c m, c m); extras["sym"]: per-phase residuals.

        The residuals only feed the loss, so they are computed when autograd is on: inference
        under ``torch.no_grad`` skips the extra F~ pass (a third of the phase's convolutions).
        """
        y = self.middle_frame(lr)
        x = self.physics.initial(y)
        gram = self.physics.gram()
        adjoint_y = self.physics.A_adjoint(y)
        side = self.grid.hr_size
        with_symmetry = torch.is_grad_enabled()
        symmetry = []
        for phase in self.phases:
            x, sym = phase(x, gram, adjoint_y, side, with_symmetry)
            symmetry.append(sym)
        return MethodOutput(hr=self.to_map(x), extras={"sym": symmetry} if with_symmetry else {})

    def loss(self, output: MethodOutput, target_hr: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """(MSE + sym_weight * sum_k mean(sym_k^2), {"mse", "sym"})."""
        if "sym" not in output.extras:
            raise ValueError("DISTA-Net's loss needs the symmetry residuals, which the forward "
                             "pass computes only with autograd enabled")
        mse = self.mse(output, target_hr)
        constraint = torch.stack([torch.mean(sym ** 2) for sym in output.extras["sym"]]).sum()
        return mse + self.sym_weight * constraint, {"mse": mse.item(), "sym": constraint.item()}
