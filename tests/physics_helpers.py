"""Physics objects and sparse HR maps for the method tests (shared by the test modules)."""
from __future__ import annotations

import numpy as np

from pipeline.coords import Grid
from pipeline.methods import PhysicsOperator
from pipeline.physics import build_phi_closed_form
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
