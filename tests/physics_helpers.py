"""Physics objects and sparse HR maps for the method tests (shared by the test modules)."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.coords import Grid
from pipeline.data import Windows
from pipeline.methods import PhysicsOperator
from pipeline.physics import build_phi_closed_form, render_batch
from pipeline.sensor import Sensor

SIZE, SIGMA = 11, 0.5


def sparse_maps(grid: Grid, rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, n) HR maps with 2-4 targets of brightness 220-250 at distinct random cells."""
    maps = np.zeros((count, grid.n_hr))
    for row in maps:
        k = rng.integers(2, 5)
        row[rng.choice(grid.n_hr, size=k, replace=False)] = rng.uniform(220.0, 250.0, size=k)
    return maps


def fitted_physics(c: int, *, maps: int = 2000, seed: int = 0, rounded: bool = False, sigma: float = SIGMA,
                   sensor: Sensor | None = None) -> PhysicsOperator:
    """Phi at ratio ``c`` plus Q = X Y^T (Y Y^T)^-1 (float64) fitted on ``maps`` sparse maps X and
    their frames Y = Phi X, ``rounded`` as an 8-bit sensor records them. (On exact frames
    Phi Q = I, so a gradient step from Q y does nothing.)"""
    phi = build_phi_closed_form(SIZE, c, sigma)
    x = sparse_maps(Grid(SIZE, c), np.random.default_rng(seed), maps)
    y = x @ phi.T
    if rounded:
        y = np.round(y)
    return PhysicsOperator(phi, np.linalg.solve(y.T @ y, y.T @ x).T, sensor)


def on_grid_windows(count: int = 48, seed: int = 0) -> tuple[PhysicsOperator, Windows]:
    """A PhysicsOperator and ``count`` windows of on-grid 2-target frames (each frame repeated 5
    times), Q_init a ridge least-squares fit on them: a tiny training problem."""
    grid, rng = Grid(), np.random.default_rng(seed)
    cells = rng.integers(6, grid.hr_size - 6, (count, 2, 2))
    x, y = grid.to_lr_coordinate(cells[..., 0]), grid.to_lr_coordinate(cells[..., 1])
    brightness = rng.uniform(220, 250, (count, 2))
    frames = render_batch(x, y, brightness).astype(np.float32)
    hr = np.zeros((count, grid.hr_size, grid.hr_size), np.float32)
    hr[np.arange(count)[:, None], cells[..., 0], cells[..., 1]] = brightness
    z, maps = frames.reshape(count, -1).astype(np.float64), hr.reshape(count, -1).astype(np.float64)
    qinit = np.linalg.lstsq(z.T @ z + 1e-3 * np.eye(z.shape[1]), z.T @ maps, rcond=None)[0].T
    windows = Windows(np.repeat(frames[:, None], 5, axis=1), hr, np.arange(count), np.full(count, 2))
    return PhysicsOperator(build_phi_closed_form(), qinit), windows


def random_windows(batch: int, seed: int = 0, frames: int = 5, scale: float = 255.0) -> torch.Tensor:
    """(batch, frames, m, m) uniform random raw LR windows in [0, scale) counts (shape and gradient tests)."""
    return torch.rand(batch, frames, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * scale


def random_target_maps(physics: PhysicsOperator, batch: int, seed: int = 0, targets: int = 3,
                       brightness: float = 235.0) -> torch.Tensor:
    """(batch, c m, c m) maps with ``targets`` cells of ``brightness`` (the same cells in every map)."""
    side = physics.grid.hr_size
    maps = torch.zeros(batch, side * side)
    maps[:, torch.randperm(side * side, generator=torch.Generator().manual_seed(seed))[:targets]] = brightness
    return maps.reshape(batch, side, side)


def rendered_windows(physics: PhysicsOperator, count: int, seed: int = 1, frames: int = 5,
                     dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` windows (count, frames, m, m) of one frame Phi x repeated (computed in float64),
    and their (count, c m, c m) target maps x (:func:`sparse_maps`: 2-4 targets of 220-250)."""
    grid = physics.grid
    x = sparse_maps(grid, np.random.default_rng(seed), count)
    lr = torch.as_tensor(x @ physics.phi.double().numpy().T, dtype=dtype)
    lr = lr.reshape(count, 1, grid.size, grid.size).repeat(1, frames, 1, 1)
    return lr, torch.as_tensor(x, dtype=dtype).reshape(count, grid.hr_size, grid.hr_size)
