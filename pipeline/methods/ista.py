"""Classic ISTA (docs/methods.md §7.1): the untrained sparse-recovery baseline."""
from __future__ import annotations

import torch

from pipeline.methods.base import MethodOutput, PhysicsOperator, UnmixingMethod
from pipeline.methods.blocks import soft_threshold
from pipeline.methods.registry import register_model


@register_model("ista")
class ClassicISTA(UnmixingMethod):
    """min_x ||y - Phi x||^2 / 2 + lam ||x||_1 by ISTA, batched over frames; single-frame.

    x_0 = pinv(Phi) y; x <- soft(x + Phi^T (y - Phi x) / L, lam / L) with L = ||Phi||_2^2, for at
    most ``iterations`` steps. A frame stops (and stays frozen) once ||x_new - x||_2 < ``tol``; it
    then returns x_new, or the previous iterate x when ``faithful_return_previous`` (as shipped,
    docs/methods.md B20). The result is in the module's dtype: the original ran in float64, so use
    ``.to(torch.float64)`` to reproduce its stopping behaviour exactly.
    """

    family = "traditional"
    label = "ISTA"

    trainable = False
    smoke_params = {"iterations": 20}

    def __init__(self, physics: PhysicsOperator, iterations: int = 3000, lam: float = 1.0,
                 tol: float = 1e-4, faithful_return_previous: bool = False) -> None:
        super().__init__(physics)
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if lam < 0 or tol < 0:
            raise ValueError(f"lam and tol must be >= 0, got lam={lam}, tol={tol}")
        self.iterations = int(iterations)
        self.lam = float(lam)
        self.tol = float(tol)
        self.faithful_return_previous = bool(faithful_return_previous)
        phi64 = physics.phi.detach().to(torch.float64)
        self.lipschitz = float(torch.linalg.matrix_norm(phi64, ord=2) ** 2)
        # (n, m^2) pseudo-inverse, derived from phi: moved with the module but not checkpointed.
        self.register_buffer("pinv", torch.linalg.pinv(phi64).to(torch.float32), persistent=False)

    def forward(self, lr: torch.Tensor) -> MethodOutput:
        """(B, W, m, m) raw LR windows -> hr (B, c m, c m); extras["iterations"]: (B,) steps run."""
        y = self.middle_frame(lr)  # (B, m^2)
        phi = self.physics.phi
        x = y @ self.pinv.T  # (B, n)
        threshold = self.lam / self.lipschitz
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        steps = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        for _ in range(self.iterations):
            x_new = soft_threshold(x + ((y - x @ phi.T) @ phi) / self.lipschitz, threshold)
            steps += active
            converged = active & (torch.linalg.vector_norm(x_new - x, dim=1) < self.tol)
            take_new = active & ~(converged & self.faithful_return_previous)
            x = torch.where(take_new[:, None], x_new, x)
            active &= ~converged
            if not bool(active.any()):
                break
        return MethodOutput(hr=self.to_map(x), extras={"iterations": steps})
