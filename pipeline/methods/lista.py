"""The learned-ISTA family (docs/methods.md §5.5-5.8): LISTA, LIHT, LAMP and TiLISTA.

All four start from x_0 = Q y and run ``layers`` untied layers, each a linear step built from the
physics followed by a per-cell shrinkage with a learned threshold (K layers, n HR cells, m^2 LR
pixels, rows in code: ``x @ W.T`` is W x):

    LISTA    x <- soft(W_k x + B_k y, max(theta_k, 0))          B_k = Q, W_k = I - B_k Phi
    LIHT     x <- hard(W_k x + B_k y, theta)                     same init, theta fixed
    LAMP     v <- y - Phi x + b v,  x <- soft(x + B_k v, max(lambda_k ||v|| / m, 0)),  B_k = Phi^T / L
    TiLISTA  x <- shrink_ss(x + alpha_k W_k (y - Phi x), theta_k, p_k),  W_k = Q

Loss: MSE between each output and its own target. The SEQ originals compared every output with
every target of the batch (the unsqueezed (20, 1, n) GT, docs/methods.md B3); ``faithful_broadcast_loss``
reproduces that all-pairs MSE, which only means what it meant there when a batch is one
trajectory.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.methods.base import MethodOutput, PhysicsOperator, UnmixingMethod
from pipeline.methods.blocks import soft_threshold
from pipeline.methods.blocks.thresholds import hard_threshold, lipschitz_constant, support_selection_shrink
from pipeline.methods.registry import register_model

# The originals divide lam by 1.001 ||Phi||^2 (a step just below 1/L).
_STEP_MARGIN = 1.001


class _LearnedISTA(UnmixingMethod):
    """x_0 = Q y, then ``layers`` untied layers (:meth:`layer`); single-frame.

    Shared parameters: ``back_projection``, per layer an (n, m^2) map from LR space (y or a
    residual) to HR space, initialised to ``back_projection_init``; ``threshold`` (K, n), one
    value per layer and HR cell, initialised to ``threshold_init`` (a buffer when
    ``learned_threshold`` is False). Every layer gets its own copy (the originals aliased them on
    CPU, docs/methods.md B26).
    """

    family = "deep_unfolding"
    smoke_params = {"layers": 2}

    def __init__(self, physics: PhysicsOperator, layers: int, back_projection_init: torch.Tensor,
                 threshold_init: float, learned_threshold: bool, faithful_broadcast_loss: bool) -> None:
        super().__init__(physics)
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.layers = int(layers)
        self.faithful_broadcast_loss = bool(faithful_broadcast_loss)
        self.back_projection = self._per_layer(back_projection_init)
        threshold = torch.full((self.layers, self.grid.n_hr), float(threshold_init))
        if learned_threshold:
            self.threshold = nn.Parameter(threshold)
        else:
            self.register_buffer("threshold", threshold)

    def _per_layer(self, matrix: torch.Tensor) -> nn.ParameterList:
        """An independent trainable copy of ``matrix`` per layer."""
        matrix = matrix.detach().to(self.physics.phi.dtype)
        return nn.ParameterList(nn.Parameter(matrix.clone()) for _ in range(self.layers))

    def layer(self, k: int, x: torch.Tensor, y: torch.Tensor, residual: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``k``: ((B, n) estimate, (B, m^2) frames, (B, m^2) carried residual) -> new pair."""
        raise NotImplementedError

    def forward(self, lr: torch.Tensor) -> MethodOutput:
        """(B, W, m, m) raw LR windows -> hr (B, c m, c m)."""
        y = self.middle_frame(lr)
        x = self.physics.initial(y)
        residual = torch.zeros_like(y)
        for k in range(self.layers):
            x, residual = self.layer(k, x, y, residual)
        return MethodOutput(hr=self.to_map(x))

    def loss(self, output: MethodOutput, target_hr: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """(MSE, or the all-pairs MSE over the batch when faithful; {"mse"[, "all_pairs_mse"]})."""
        mse = self.mse(output, target_hr)
        if not self.faithful_broadcast_loss:
            return mse, {"mse": mse.item()}
        target = target_hr.to(output.hr.dtype)
        all_pairs = torch.mean((output.hr[:, None] - target[None]) ** 2)
        return all_pairs, {"mse": mse.item(), "all_pairs_mse": all_pairs.item()}


class _RecurrentLISTA(_LearnedISTA):
    """LISTA-type layer x <- shrink_k(W_k x + B_k y) with W_k (n, n) and B_k (n, m^2) per layer."""

    def __init__(self, physics: PhysicsOperator, layers: int, back_projection_init: torch.Tensor,
                 recurrence_init: torch.Tensor, threshold_init: float, learned_threshold: bool,
                 faithful_broadcast_loss: bool) -> None:
        super().__init__(physics, layers, back_projection_init, threshold_init, learned_threshold,
                         faithful_broadcast_loss)
        self.recurrence = self._per_layer(recurrence_init)

    def shrink(self, r: torch.Tensor, k: int) -> torch.Tensor:
        """The layer's shrinkage of (B, n) rows."""
        raise NotImplementedError

    def layer(self, k: int, x: torch.Tensor, y: torch.Tensor, residual: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        r = x @ self.recurrence[k].T + y @ self.back_projection[k].T
        return self.shrink(r, k), residual


def back_projection_matrix(physics: PhysicsOperator, init_from: str) -> torch.Tensor:
    """(n, m^2) float64 start of the learned back-projections: Q (``"qinit"``, docs/methods.md and the
    originals) or Phi^T / ||Phi||^2 (``"phi"``, the textbook ISTA step of LISTA and ALISTA)."""
    if init_from == "qinit":
        return physics.qinit.double()
    if init_from == "phi":
        return physics.phi.double().T / lipschitz_constant(physics.phi)
    raise ValueError(f"init_from must be 'qinit' or 'phi', got {init_from!r}")


def gradient_step_matrix(physics: PhysicsOperator, back_projection: torch.Tensor) -> torch.Tensor:
    """I - B Phi, (n, n): the step x + B (y - Phi x) is then (I - B Phi) x + B y.

    For B = Phi^T / L it contracts. For B = Q it is a no-op on the Q y start when Phi Q = I (Q
    fitted on Phi X, as shipped), but it can expand when Q is fitted on real frames (Phi Q then
    has eigenvalues off 1, some below 0 on the laptop data), and 16 layers amplify that.
    """
    return torch.eye(physics.grid.n_hr, dtype=torch.float64) - back_projection @ physics.phi.double()


@register_model("lista")
class LISTA(_RecurrentLISTA):
    """LISTA (§5.5): x <- soft(W_k x + B_k y, max(theta_k, 0)), 16 untied layers.

    B_k (n, m^2) starts at Q (``init_from="qinit"``, docs/methods.md) or Phi^T / ||Phi||^2 (``"phi"``)
    and W_k (n, n) at I - B_k Phi, so every layer starts as the gradient step x + B_k (y - Phi x);
    theta_k (n) starts at lam / (1.001 ||Phi||^2). 16 (n^2 + n m^2 + n) = 21,100,464 parameters at
    c = 3 (published 21.10 M).
    """

    label = "LISTA"

    def __init__(self, physics: PhysicsOperator, layers: int = 16, lam: float = 0.4,
                 init_from: str = "qinit", faithful_broadcast_loss: bool = False) -> None:
        back_projection = back_projection_matrix(physics, init_from)
        super().__init__(physics, layers, back_projection, gradient_step_matrix(physics, back_projection),
                         lam / (_STEP_MARGIN * lipschitz_constant(physics.phi)),
                         learned_threshold=True, faithful_broadcast_loss=faithful_broadcast_loss)

    def shrink(self, r: torch.Tensor, k: int) -> torch.Tensor:
        """Soft threshold at max(theta_k, 0)."""
        return soft_threshold(r, torch.relu(self.threshold[k]))


@register_model("liht")
class LIHT(_RecurrentLISTA):
    """LIHT (§5.6): LISTA's layers with the hard threshold H(r, theta) = r 1[|r| > theta].

    theta = sqrt(0.4) per cell is a fixed buffer: H passes no gradient to it, so the original never
    trained it either (only its weight decay moved it, towards 0, which at raw-intensity scale
    changes nothing). Hence 16 (n^2 + n m^2) = 21,083,040 trained parameters at c = 3, against
    the published 21.10 M that counts the 16 n untrained thresholds.

    B_k and W_k start as in LISTA (W_k = I - B_k Phi, an IHT step). The original started W_k at I
    (``faithful_identity_init``): with B_k = Q each layer then adds another Q y, so the untrained
    network outputs (K + 1) Q y.
    """

    label = "LIHT"

    def __init__(self, physics: PhysicsOperator, layers: int = 16, threshold: float = math.sqrt(0.4),
                 init_from: str = "qinit", faithful_identity_init: bool = False,
                 faithful_broadcast_loss: bool = False) -> None:
        back_projection = back_projection_matrix(physics, init_from)
        recurrence = (torch.eye(physics.grid.n_hr) if faithful_identity_init
                      else gradient_step_matrix(physics, back_projection))
        super().__init__(physics, layers, back_projection, recurrence, threshold, learned_threshold=False,
                         faithful_broadcast_loss=faithful_broadcast_loss)

    def shrink(self, r: torch.Tensor, k: int) -> torch.Tensor:
        """Hard threshold at theta."""
        return hard_threshold(r, self.threshold[k])


@register_model("lamp")
class LAMP(_LearnedISTA):
    """Learned AMP (§5.7): 16 layers, B_k (n, m^2) from Phi^T / ||Phi||^2, lambda_k (n) from 0.4.

    State v_0 = 0. Layer k: b = ||x||_0 / m^2 (Onsager weight: the fraction of nonzero cells times
    n / m^2), v <- y - Phi x + b v, sigma = ||v||_2 / m (per frame), x <- soft(x + B_k v,
    max(sigma lambda_k, 0)). 16 (n m^2 + n) = 2,125,728 parameters at c = 3 (published 2.13 M).
    """

    label = "LAMP"

    def __init__(self, physics: PhysicsOperator, layers: int = 16, lam: float = 0.4,
                 faithful_broadcast_loss: bool = False) -> None:
        super().__init__(physics, layers, back_projection_matrix(physics, "phi"), lam,
                         learned_threshold=True, faithful_broadcast_loss=faithful_broadcast_loss)

    def layer(self, k: int, x: torch.Tensor, y: torch.Tensor, residual: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        n_lr = self.grid.n_lr
        onsager = torch.count_nonzero(x, dim=1).unsqueeze(1).to(x.dtype) / n_lr
        residual = y - self.physics.A(x) + onsager * residual
        sigma = torch.linalg.vector_norm(residual, dim=1, keepdim=True) / math.sqrt(n_lr)
        r = x + residual @ self.back_projection[k].T
        return soft_threshold(r, torch.relu(sigma * self.threshold[k])), residual


@register_model("tilista")
class TiLISTA(_LearnedISTA):
    """TiLISTA (§5.8) as shipped in SEQ: untied W_k (n, m^2) from Q, theta_k (n), step alpha_k.

    Layer k: z = x + alpha_k W_k (y - Phi x), then the support-selection shrink: the largest
    p_k = min(support_step (k + 1), support_max) % of |z| that also exceed theta_k pass unshrunk,
    the rest are soft-thresholded by theta_k (no clamp). W_k starts at Q (``init_from="qinit"``,
    docs/methods.md) or Phi^T / ||Phi||^2 (``"phi"``), theta_k at lam / (1.001 ||Phi||^2), alpha_k at
    1. 16 (n m^2 + n + 1) = 2,125,744 parameters at c = 3; the published 2.22 M does not match
    the code (docs/methods.md B25). Unlike the TiLISTA of the ALISTA paper, W_k is not tied across
    layers (the SEQ model's choice, kept for its parameter count).
    """

    label = "TiLISTA"

    def __init__(self, physics: PhysicsOperator, layers: int = 16, lam: float = 0.4,
                 support_step: float = 1.2, support_max: float = 13.0, init_from: str = "qinit",
                 faithful_broadcast_loss: bool = False) -> None:
        super().__init__(physics, layers, back_projection_matrix(physics, init_from),
                         lam / (_STEP_MARGIN * lipschitz_constant(physics.phi)),
                         learned_threshold=True, faithful_broadcast_loss=faithful_broadcast_loss)
        if not (support_step > 0 and 0 < support_max <= 100):
            raise ValueError(f"support_step must be > 0 and support_max in (0, 100], got "
                             f"{support_step} and {support_max}")
        self.support_percent = [min(support_step * (k + 1), support_max) for k in range(self.layers)]
        self.step = nn.Parameter(torch.ones(self.layers))

    def layer(self, k: int, x: torch.Tensor, y: torch.Tensor, residual: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        residual = y - self.physics.A(x)
        z = x + self.step[k] * (residual @ self.back_projection[k].T)
        return support_selection_shrink(z, self.threshold[k], self.support_percent[k]), residual
