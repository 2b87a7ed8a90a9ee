"""What every unmixing method shares: the physics object, the output record and the base class.

Shapes: ``m`` is the LR side (11), ``c`` the sub-pixel ratio (3), ``n = (c m)^2`` the number of
HR cells (1089) and ``m^2`` the number of LR pixels (121); all derive from Phi. Every tensor is in
raw intensity units (LR pixel values 0-255, HR brightness ~220-250): nothing is normalised
(docs/methods.md B14), so the detection threshold of 70 applies to method outputs as they are.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.coords import Grid
from pipeline.sensor import Sensor


def _check_flat(x: torch.Tensor, length: int, what: str) -> None:
    """Raise ValueError unless ``x`` is a (B, length) batch."""
    if x.ndim != 2 or x.shape[1] != length:
        raise ValueError(f"{what} must have shape (B, {length}), got {tuple(x.shape)}")


class PhysicsOperator(nn.Module):
    """Phi and Q_init as float32 buffers and the :class:`~pipeline.sensor.Sensor`, with the
    operators the methods need.

    ``phi``: (m^2, n) sampling matrix (column = LR response to a unit target at an HR cell centre).
    ``qinit``: (n, m^2) least-squares map from LR frames to HR maps. Batches are row vectors, so
    ``A(x) = x @ phi.T`` is the column-notation Phi x. ``sensor``: how the frames were recorded
    (PSF, noise, bit depth, saturation); default the docs/design.md sensor for Phi's frame size. Built
    once by the caller and handed to the models, which never read files; ``.to(dtype or device)``
    moves both buffers.
    """

    def __init__(self, phi: np.ndarray, qinit: np.ndarray, sensor: Sensor | None = None) -> None:
        super().__init__()
        phi = np.asarray(phi)
        qinit = np.asarray(qinit)
        if phi.ndim != 2:
            raise ValueError(f"phi must be a 2-D (m^2, n) matrix, got shape {phi.shape}")
        grid = Grid.from_phi(phi)
        if qinit.shape != (grid.n_hr, grid.n_lr):
            raise ValueError(f"qinit must have shape (n, m^2) = {(grid.n_hr, grid.n_lr)} to match "
                             f"phi {phi.shape}, got {qinit.shape}")
        for name, array in (("phi", phi), ("qinit", qinit)):
            if not np.all(np.isfinite(array)):
                raise ValueError(f"{name} contains non-finite values")
        sensor = Sensor(frame_size=grid.size) if sensor is None else sensor
        if not isinstance(sensor, Sensor) or sensor.frame_size != grid.size:
            raise ValueError(f"sensor must be a Sensor for {grid.size}x{grid.size} frames, got {sensor!r}")
        self._grid = grid
        self.sensor = sensor
        self.register_buffer("phi", torch.as_tensor(phi, dtype=torch.float32))
        self.register_buffer("qinit", torch.as_tensor(qinit, dtype=torch.float32))

    @property
    def grid(self) -> Grid:
        """The LR/HR grid Phi was built for."""
        return self._grid

    def with_sensor(self, sensor: Sensor) -> "PhysicsOperator":
        """The same Phi and Q_init seen through another sensor (e.g. another noise level)."""
        return PhysicsOperator(self.phi.cpu().double().numpy(), self.qinit.cpu().double().numpy(), sensor)

    def A(self, hr_flat: torch.Tensor) -> torch.Tensor:
        """Forward model: (B, n) HR maps -> (B, m^2) noise-free LR frames."""
        _check_flat(hr_flat, self._grid.n_hr, "hr_flat")
        return hr_flat @ self.phi.T

    def A_adjoint(self, lr_flat: torch.Tensor) -> torch.Tensor:
        """Adjoint: (B, m^2) LR frames -> (B, n), i.e. Phi^T y."""
        _check_flat(lr_flat, self._grid.n_lr, "lr_flat")
        return lr_flat @ self.phi

    def initial(self, lr_flat: torch.Tensor) -> torch.Tensor:
        """Q_init estimate: (B, m^2) LR frames -> (B, n) HR maps, i.e. Q y."""
        _check_flat(lr_flat, self._grid.n_lr, "lr_flat")
        return lr_flat @ self.qinit.T

    def gram(self) -> torch.Tensor:
        """Phi^T Phi, shape (n, n)."""
        return self.phi.T @ self.phi


@dataclasses.dataclass
class MethodOutput:
    """A method's answer for a batch.

    ``hr``: (B, c m, c m) HR maps in raw brightness units. ``extras``: method-specific tensors the
    loss needs (e.g. ``"sym"``: the list of per-phase symmetry residuals of ISTA-Net).
    ``detections``: for methods that report continuous positions, per sample a float64 (n, 3)
    array (x, y, score) in LR px; None means "threshold the HR map" (the official protocol).
    """

    hr: torch.Tensor
    extras: dict = dataclasses.field(default_factory=dict)
    detections: list | None = None


class UnmixingMethod(nn.Module):
    """Base of every method: LR windows (B, W, m, m) in, :class:`MethodOutput` out.

    ``trainable``: whether the method has parameters to fit (False for the classic solvers).
    ``uses_scene_priors``: whether the method is built with the scene priors of the training
    split (keyword ``priors``, a :class:`pipeline.priors.ScenePriors`, passed by the stages).
    ``window``: how many frames of the window the method uses (1 = single-frame, which uses only
    the middle frame; the caller always passes odd windows, 5 frames in the SeqCSIST protocol).
    ``family`` and ``label``: where the method sits in the paper's tables and its display name
    (any string: a new family needs no edit elsewhere). ``smoke_params``: constructor keywords
    that make a small, quick instance for the registry-wide tests (the defaults must stay the
    paper's architecture).

    Adversarial methods register a submodule named ``discriminator`` and implement
    :meth:`discriminator_loss`; the trainer then alternates a generator and a discriminator step
    (the generator's :meth:`loss` may call ``self.discriminator``). Extra loss terms are the
    method's business: :meth:`loss` returns the total and its named components.
    ``paper_requires``: constructor params that must be set (not None) in the paper profile,
    because the published numbers depend on them, each with what it must hold (the GANs'
    pretrained perceptual network). ``weight_files``: constructor params that receive the tensors
    of a fixed, pretrained network, each mapped to the params key of its file's sha256: params.yaml
    gives the file's path and sha256 (the file's declared identity: a new sha256 re-runs the
    stage, a file that no longer matches stops it), the stages read it, the method gets tensors.
    """

    trainable: bool = True
    uses_scene_priors: bool = False
    window: int = 1
    family: str = "other"
    label: str = ""
    smoke_params: ClassVar[dict] = {}
    paper_requires: ClassVar[Mapping[str, str]] = {}
    weight_files: ClassVar[Mapping[str, str]] = {}

    def __init__(self, physics: PhysicsOperator) -> None:
        super().__init__()
        if not isinstance(physics, PhysicsOperator):
            raise TypeError(f"physics must be a PhysicsOperator, got {type(physics).__name__}")
        self.physics = physics

    @property
    def grid(self) -> Grid:
        """The grid of the physics this method was built with."""
        return self.physics.grid

    @property
    def sensor(self) -> Sensor:
        """The sensor of the physics this method was built with."""
        return self.physics.sensor

    def adversary(self) -> nn.Module | None:
        """The registered ``discriminator`` submodule, or None for a non-adversarial method."""
        return getattr(self, "discriminator", None)

    def generator_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the method itself (the discriminator's excluded)."""
        adversary = self.adversary()
        skip = {id(p) for p in adversary.parameters()} if adversary is not None else set()
        return [p for p in self.parameters() if p.requires_grad and id(p) not in skip]

    def discriminator_loss(self, output: MethodOutput, target_hr: torch.Tensor
                           ) -> tuple[torch.Tensor, dict[str, float]]:
        """Adversarial methods: the discriminator's objective on (detached) outputs and targets."""
        raise NotImplementedError(f"{type(self).__name__} has no discriminator")

    def forward(self, lr: torch.Tensor) -> MethodOutput:
        """(B, W, m, m) raw LR windows, W odd -> MethodOutput with hr (B, c m, c m)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def middle_frame(self, lr: torch.Tensor) -> torch.Tensor:
        """Middle frame of (B, W, m, m) windows as (B, m^2) rows, in the physics' dtype."""
        m = self.grid.size
        if lr.ndim != 4 or lr.shape[2:] != (m, m):
            raise ValueError(f"lr must have shape (B, W, {m}, {m}), got {tuple(lr.shape)}")
        frames = lr.shape[1]
        if frames % 2 == 0 or frames < self.window:
            raise ValueError(f"lr windows must hold an odd number >= {self.window} of frames, "
                             f"got {frames}")
        return lr[:, frames // 2].reshape(lr.shape[0], m * m).to(self.physics.phi.dtype)

    def to_map(self, hr_flat: torch.Tensor) -> torch.Tensor:
        """(B, n) HR rows -> (B, c m, c m) maps (row-major)."""
        side = self.grid.hr_size
        return hr_flat.reshape(hr_flat.shape[0], side, side)

    def mse(self, output: MethodOutput, target_hr: torch.Tensor) -> torch.Tensor:
        """Element-mean squared error of ``output.hr`` against (B, c m, c m) target maps.

        Shapes must match exactly: a silent broadcast is how the original LISTA family ended up
        comparing every frame with every other (docs/methods.md B3).
        """
        if output.hr.shape != target_hr.shape:
            raise ValueError(f"target_hr shape {tuple(target_hr.shape)} does not match the "
                             f"output shape {tuple(output.hr.shape)}")
        return F.mse_loss(output.hr, target_hr.to(output.hr.dtype))

    def loss(self, output: MethodOutput, target_hr: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training objective: (scalar total, {component name: value}); default plain MSE."""
        mse = self.mse(output, target_hr)
        return mse, {"mse": mse.item()}
