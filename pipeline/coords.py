"""The one coordinate convention of the project.

A target is (x, y, brightness) in low-resolution (LR) pixel units; **x is the row, y the column**.
LR pixel (i, j) is centred at (i, j) and covers [i - 1/2, i + 1/2] x [j - 1/2, j + 1/2].
HR cell (r, s) of the c-times finer grid is centred at ((r - (c-1)/2)/c, (s - (c-1)/2)/c), so a
target falls in HR cell round(c x + (c-1)/2) (numpy's round-half-to-even, as the official
toolkit). Flattening is row-major everywhere: LR index i*size + j, HR index r*(c*size) + s.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Grid:
    """LR frame side ``size`` (pixels) and sub-pixel ratio ``c`` (odd)."""

    size: int = 11
    c: int = 3

    def __post_init__(self) -> None:
        if self.size < 1 or self.c < 1 or self.c % 2 == 0:
            raise ValueError(f"Grid needs size >= 1 and an odd c >= 1, got size={self.size}, c={self.c}")

    @property
    def hr_size(self) -> int:
        """Side of the HR map (c * size)."""
        return self.c * self.size

    @property
    def n_lr(self) -> int:
        """Number of LR pixels (size^2)."""
        return self.size * self.size

    @property
    def n_hr(self) -> int:
        """Number of HR cells ((c * size)^2)."""
        return self.hr_size * self.hr_size

    @property
    def offset(self) -> float:
        """(c - 1) / 2: the HR index of the centre of LR pixel 0."""
        return (self.c - 1) / 2

    @classmethod
    def from_phi(cls, phi: np.ndarray) -> "Grid":
        """The grid a sampling matrix of shape (size^2, (c size)^2) was built for."""
        size = round(np.sqrt(phi.shape[0]))
        c = round(np.sqrt(phi.shape[1])) // size
        grid = cls(size, c)
        if phi.shape != (grid.n_lr, grid.n_hr):
            raise ValueError(f"Phi of shape {phi.shape} is not (size^2, (c size)^2) for any grid")
        return grid

    def hr_centres(self) -> np.ndarray:
        """(c * size,) LR coordinates of the HR cell centres along one axis."""
        return (np.arange(self.hr_size) - self.offset) / self.c

    def to_hr_index(self, position: np.ndarray) -> np.ndarray:
        """HR cell index (int64) of LR coordinates, round-half-to-even as the official toolkit."""
        return np.round(self.c * np.asarray(position, dtype=np.float64) + self.offset).astype(np.int64)

    def to_lr_coordinate(self, index: np.ndarray) -> np.ndarray:
        """LR coordinate (float64) of HR cell centres given by their index."""
        return (np.asarray(index, dtype=np.float64) - self.offset) / self.c

    def in_field(self, position: np.ndarray) -> np.ndarray:
        """Whether LR coordinates map to an HR cell inside the map (boolean array)."""
        index = self.to_hr_index(position)
        return (index >= 0) & (index < self.hr_size)

    def snap(self, position: np.ndarray) -> np.ndarray:
        """LR coordinates moved to the centre of the HR cell they fall in."""
        return self.to_lr_coordinate(self.to_hr_index(position))
