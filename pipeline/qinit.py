"""Q_init: the least-squares linear map from LR frames to HR target maps (papers/002 supp. 5)."""
from __future__ import annotations

import math
from typing import Any

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


PIECE_BITS = 17      # integer pieces of at most 2^17: a product of two is below 2^34 ...
EXACT_CHUNK = 1 << 15  # ... and a sum of 2^15 such products below 2^49 < 2^53 (exact in float64)


def _scale_exponent(values: np.ndarray) -> int:
    """e with max|values| < 2^(e + 3 PIECE_BITS): the fixed-point scale of :func:`_integer_pieces`."""
    top = float(np.max(np.abs(values), initial=0.0))
    if not math.isfinite(top):
        raise ValueError("Q_init inputs hold NaN or inf values")
    return (math.frexp(top)[1] if top else 0) - 3 * PIECE_BITS


def _integer_pieces(values: np.ndarray, exponent: int) -> list[np.ndarray]:
    """Integer-valued float64 pieces (p0, p1, p2), each |p| <= 2^PIECE_BITS, with
    ``values ~= (p0 2^(2b) + p1 2^b + p2) 2^exponent`` (b = PIECE_BITS): ``values`` rounded to
    the fixed point 2^exponent, which keeps float32 data and integers below 2^51 exact."""
    scaled = np.rint(np.ldexp(values, -exponent))
    high = np.rint(np.ldexp(scaled, -2 * PIECE_BITS))
    rest = scaled - np.ldexp(high, 2 * PIECE_BITS)
    middle = np.rint(np.ldexp(rest, -PIECE_BITS))
    return [high, middle, rest - np.ldexp(middle, PIECE_BITS)]


def _stacked_pieces(block: np.ndarray | sparse.csc_matrix, exponent: int) -> tuple[list[int], Any]:
    """The nonzero integer pieces of ``block`` stacked row-wise, and which pieces they are."""
    if sparse.issparse(block):
        pieces = [sparse.csc_matrix((piece, block.indices, block.indptr), shape=block.shape)
                  for piece in _integer_pieces(block.data, exponent)]
        kept = [i for i, piece in enumerate(pieces) if piece.count_nonzero()]
        return kept, sparse.vstack([pieces[i] for i in kept], format="csr") if kept else None
    pieces = _integer_pieces(block, exponent)
    kept = [i for i, piece in enumerate(pieces) if piece.any()]
    return kept, np.concatenate([pieces[i] for i in kept]) if kept else None


def exact_products(left: np.ndarray | sparse.spmatrix, right: np.ndarray) -> np.ndarray:
    """``left @ right.T`` summed exactly and rounded once to float64: the same bits on any machine.

    ``left`` (a, N) dense or sparse, ``right`` (b, N) dense, both rounded to a fixed point of 51
    bits below their maximum (exact for float32 data). Both are cut into integer pieces; a product
    of pieces over at most ``EXACT_CHUNK`` columns sums integers below 2^53, so BLAS (or the
    sparse kernel) returns it exactly whatever its summation order, threading or blocking. The
    partial sums are combined in Python integers and rounded to float64 once. Pieces that are all
    zero (integer data, e.g. 8-bit frames, needs one) are skipped.
    """
    same = left is right
    if sparse.issparse(left):
        left = sparse.csc_matrix(left, dtype=np.float64)
        left.sum_duplicates()
        left_exponent = _scale_exponent(left.data)
    else:
        left = np.asarray(left, dtype=np.float64)
        left_exponent = _scale_exponent(left)
    right = left if same else np.asarray(right, dtype=np.float64)
    right_exponent = left_exponent if same else _scale_exponent(right)
    rows, cols = left.shape[0], right.shape[0]
    totals = np.zeros((3, 3, rows, cols), dtype=np.int64)
    for start in range(0, right.shape[1], EXACT_CHUNK):
        block = slice(start, start + EXACT_CHUNK)
        left_kept, left_stack = _stacked_pieces(left[:, block], left_exponent)
        right_kept, right_stack = ((left_kept, left_stack) if same else
                                   _stacked_pieces(right[:, block], right_exponent))
        if not left_kept or not right_kept:
            continue
        product = np.asarray(left_stack @ right_stack.T).astype(np.int64)
        totals[np.ix_(left_kept, right_kept)] += product.reshape(
            len(left_kept), rows, len(right_kept), cols).transpose(0, 2, 1, 3)
    exact = sum(totals[i, j].astype(object) * (1 << ((4 - i - j) * PIECE_BITS))
                for i in range(3) for j in range(3) if totals[i, j].any())
    if not isinstance(exact, np.ndarray):
        return np.zeros((rows, cols))
    rounded = np.array([float(value) for value in exact.ravel()], dtype=np.float64)
    return np.ldexp(rounded.reshape(rows, cols), left_exponent + right_exponent)


def _fixed_order_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` as a fixed sequence of elementwise IEEE operations (no BLAS): machine-independent."""
    out = np.zeros((a.shape[0], b.shape[1]))
    for k in range(a.shape[1]):
        out += np.multiply.outer(a[:, k], b[k])
    return out


def _pivoted_cholesky(gram: np.ndarray) -> np.ndarray:
    """B (n, r) with gram ~= B B^T, r the numerical rank: diagonal pivoting, stopping at pivots
    below n eps max(diag) (LAPACK pstrf's default), with elementwise operations only."""
    n = len(gram)
    rest = gram.copy()
    remaining = np.ones(n, dtype=bool)
    tolerance = n * np.finfo(np.float64).eps * max(float(np.max(np.diag(gram), initial=0.0)), 0.0)
    columns = []
    for _ in range(n):
        diagonal = np.where(remaining, np.diag(rest), -np.inf)
        pivot = int(np.argmax(diagonal))
        if not diagonal[pivot] > tolerance:
            break
        root = math.sqrt(diagonal[pivot])
        column = np.where(remaining, rest[:, pivot] / root, 0.0)
        column[pivot] = root
        remaining[pivot] = False
        rest -= np.multiply.outer(column, column)
        columns.append(column)
    return np.stack(columns, axis=1) if columns else np.zeros((n, 0))


def _cholesky(matrix: np.ndarray) -> np.ndarray:
    """Lower-triangular L with matrix = L L^T (positive definite), elementwise operations only."""
    rest, n = matrix.copy(), len(matrix)
    lower = np.zeros_like(matrix)
    for k in range(n):
        column = rest[k:, k] / math.sqrt(rest[k, k])
        lower[k:, k] = column
        rest[k:, k:] -= np.multiply.outer(column, column)
    return lower


def _cholesky_solve(lower: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """X with (L L^T) X = rhs by forward then backward substitution, in a fixed order."""
    x = rhs.copy()
    for k in range(len(lower)):
        x[k] /= lower[k, k]
        x[k + 1:] -= np.multiply.outer(lower[k + 1:, k], x[k])
    for k in reversed(range(len(lower))):
        x[k] /= lower[k, k]
        x[:k] -= np.multiply.outer(lower[k, :k], x[k])
    return x


def solve_qinit(maps: sparse.spmatrix, measurements: np.ndarray) -> np.ndarray:
    """Q = S Z^T (Z Z^T)^+ in float64: maps S (n_hr, N), measurements Z (n_lr, N) -> (n_hr, n_lr).

    Bit-identical on every machine: Z Z^T and S Z^T are summed exactly (:func:`exact_products`)
    and the solve is a fixed sequence of elementwise operations, independent of BLAS. With
    G = Z Z^T = B B^T (pivoted Cholesky, B of full column rank r) the minimum-norm solution is
    Q^T = B (B^T B)^-2 B^T (S Z^T)^T; it equals Q = S Z^T G^-1 when G is invertible, and a
    small training set that leaves some border pixels always dark gives those pixels zero columns.
    """
    z = np.asarray(measurements, dtype=np.float64)
    gram = exact_products(z, z)
    cross_t = exact_products(maps, z).T  # (n_lr, n_hr)
    factor = _pivoted_cholesky(gram)
    if factor.shape[1] == 0:
        return np.zeros_like(cross_t.T)
    inner = _cholesky(_fixed_order_matmul(factor.T, factor))
    projected = _fixed_order_matmul(factor.T, cross_t)
    return _fixed_order_matmul(factor, _cholesky_solve(inner, _cholesky_solve(inner, projected))).T


def compute_qinit(images: np.ndarray, targets: pd.DataFrame, frame_rows: np.ndarray, phi: np.ndarray,
                  measurements: str = "frames") -> np.ndarray:
    """Q_init (n_hr, n_lr) from training frames.

    images: (N, size, size) training frames; targets with ``frame_rows`` mapping each target to
    its frame's row in ``images``. ``measurements='frames'`` fits Q on the real frames (noise,
    quantisation, off-grid positions included); ``'phi_gt'`` fits it on Phi times the GT maps, as
    the official toolkit does (docs/methods.md 1.6).
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
