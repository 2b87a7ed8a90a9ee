"""Q_init: the least-squares linear map from LR frames to HR target maps (papers/002 supp. 5)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from pipeline.coords import Grid


def gt_matrix(targets: pd.DataFrame, frame_rows: np.ndarray, n_frames: int, grid: Grid) -> sparse.csr_matrix:
    """Sparse HR target maps S, shape (n_hr, n_frames).

    ``frame_rows`` gives, for each target row, the column (frame) it belongs to. A target sits
    in its HR cell with its brightness; two targets in one cell keep the later one (the official
    assignment semantics).
    """
    rows = grid.to_hr_index(targets["x"].to_numpy())
    cols = grid.to_hr_index(targets["y"].to_numpy())
    if (rows.min(initial=0) < 0 or cols.min(initial=0) < 0
            or rows.max(initial=0) >= grid.hr_size or cols.max(initial=0) >= grid.hr_size):
        raise ValueError("a target lies outside the HR map; check the coordinate convention")
    cell = rows * grid.hr_size + cols
    cells = pd.DataFrame({"frame": frame_rows, "cell": cell, "value": targets["brightness"].to_numpy()})
    cells = cells.drop_duplicates(["frame", "cell"], keep="last")
    return sparse.csr_matrix((cells["value"].to_numpy(), (cells["cell"].to_numpy(), cells["frame"].to_numpy())),
                             shape=(grid.n_hr, n_frames))


def solve_qinit(maps: sparse.spmatrix, measurements: np.ndarray) -> np.ndarray:
    """Q = S Z^T (Z Z^T)^-1 in float64: maps S (n_hr, N), measurements Z (n_lr, N) -> (n_hr, n_lr).

    When Z Z^T is singular (a small training set leaves some border pixels always dark) the
    minimum-norm least-squares solution is returned, which equals the formula otherwise.
    """
    z = np.asarray(measurements, dtype=np.float64)
    gram = z @ z.T
    cross = np.asarray(maps @ z.T)
    # Q gram = cross  <=>  gram Q^T = cross^T (gram is symmetric)
    return np.linalg.lstsq(gram, cross.T, rcond=None)[0].T


def compute_qinit(images: np.ndarray, targets: pd.DataFrame, frame_rows: np.ndarray, phi: np.ndarray,
                  measurements: str = "frames") -> np.ndarray:
    """Q_init (n_hr, n_lr) from training frames.

    images: (N, size, size) training frames; targets with ``frame_rows`` mapping each target to
    its frame's row in ``images``. ``measurements='frames'`` fits Q on the real frames (noise,
    quantisation, off-grid positions included); ``'phi_gt'`` fits it on Phi times the GT maps, as
    the official toolkit does (methods.md 1.6).
    """
    grid = Grid.from_phi(phi)
    maps = gt_matrix(targets, frame_rows, len(images), grid)
    if measurements == "frames":
        z = images.reshape(len(images), -1).T
    elif measurements == "phi_gt":
        z = np.asarray((maps.T @ phi.T).T)
    else:
        raise ValueError(f"measurements = {measurements!r}: allowed 'frames' or 'phi_gt'")
    return solve_qinit(maps, z)
