import hashlib
import math

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from pipeline.settings import SplitConfig
from pipeline.physics import build_phi_closed_form
from pipeline.qinit import compute_qinit, exact_products, gt_matrix, solve_qinit
from pipeline.coords import Grid
from pipeline.split import assign_split

QINIT_DIGEST = "1cfb7c454c9abc0409cde360b56dea2b5622421c6e3badd23e2c1fc6c34be21e"


def test_split_by_trajectory_is_seeded_and_complete():
    config = SplitConfig(seed=3, fractions=(0.7, 0.15, 0.15))
    split = assign_split(np.repeat(np.arange(100), 20), config)
    assert split["trajectory"].tolist() == list(range(100))
    assert split["split"].value_counts().to_dict() == {"train": 70, "val": 15, "test": 15}
    assert split.equals(assign_split(np.arange(100), config))
    other = assign_split(np.arange(100), SplitConfig(seed=4, fractions=config.fractions))
    assert not split.equals(other)


def _sparse_frames(n, rng, grid):
    """n noise-free frames of 2-4 on-grid targets: images (n, size, size) and their targets."""
    k = rng.integers(2, 5, n)
    frame = np.repeat(np.arange(n), k)
    cells = rng.integers(3, grid.hr_size - 3, (len(frame), 2))
    targets = pd.DataFrame({"x": grid.to_lr_coordinate(cells[:, 0]), "y": grid.to_lr_coordinate(cells[:, 1]),
                            "brightness": rng.uniform(220, 250, len(frame))})
    return frame, targets


def test_gt_matrix_collisions_keep_the_later_target():
    grid = Grid()
    targets = pd.DataFrame({"x": [1.0, 1.05, 2.0], "y": [1.0, 0.98, 2.0], "brightness": [220.0, 240.0, 230.0]})
    maps = gt_matrix(targets, np.array([0, 0, 0]), 1, grid).toarray()
    assert maps[grid.to_hr_index(1.0) * grid.hr_size + grid.to_hr_index(1.0), 0] == 240.0
    assert np.count_nonzero(maps) == 2


def test_qinit_recovers_a_linear_map_and_has_the_right_shape():
    grid, rng = Grid(), np.random.default_rng(0)
    phi = build_phi_closed_form()
    frame, targets = _sparse_frames(3000, rng, grid)
    maps = gt_matrix(targets, frame, 3000, grid)
    images = np.asarray((maps.T @ phi.T)).reshape(3000, 11, 11)
    q_frames = compute_qinit(images, targets, frame, phi, "frames")
    q_shipped = compute_qinit(images, targets, frame, phi, "phi_gt")
    assert q_frames.shape == (1089, 121) and q_frames.dtype == np.float64
    # noise-free on-grid frames are Phi times the maps, so both measurement choices agree
    assert np.allclose(q_frames, q_shipped, atol=1e-6)
    # Q is the least-squares solution: the residual is orthogonal to the measurements
    z = images.reshape(3000, -1).T
    residual = q_frames @ z - maps.toarray()
    assert np.abs(residual @ z.T).max() < 1e-5 * np.abs(maps.toarray() @ z.T).max()


def test_qinit_rejects_unknown_measurements():
    grid, rng = Grid(), np.random.default_rng(1)
    phi = build_phi_closed_form()
    frame, targets = _sparse_frames(400, rng, grid)
    with pytest.raises(ValueError, match="measurements"):
        compute_qinit(np.zeros((400, 11, 11)), targets, frame, phi, "pinv")


def test_qinit_survives_pixels_that_are_never_lit():
    grid, rng = Grid(), np.random.default_rng(2)
    phi = build_phi_closed_form()
    frame, targets = _sparse_frames(50, rng, grid)
    images = np.asarray((gt_matrix(targets, frame, 50, grid).T @ phi.T)).reshape(50, 11, 11)
    images[:, 0, :] = 0.0  # a dark border row makes Z Z^T singular
    q = compute_qinit(images, targets, frame, phi, "frames")
    assert np.all(np.isfinite(q)) and np.allclose(q[:, :11], 0.0)


def _fixed_case():
    """300 noisy float frames (no quantisation) of a seeded scene: maps S and measurements Z."""
    grid, rng = Grid(), np.random.default_rng(7)
    phi = build_phi_closed_form()
    frame, targets = _sparse_frames(300, rng, grid)
    maps = gt_matrix(targets, frame, 300, grid)
    z = np.asarray((maps.T @ phi.T)).T + rng.normal(0.0, 3.0, (phi.shape[0], 300))
    return maps, z.astype(np.float32)


def test_qinit_digest_is_pinned_and_matches_a_plain_solve():
    """The bits of Q_init do not depend on the BLAS build, threading or blocking (exact sums,
    fixed-order elementwise solve): a digest pins them; the value is the least-squares one."""
    maps, z = _fixed_case()
    q = solve_qinit(maps, z)
    assert hashlib.sha256(q.tobytes()).hexdigest() == QINIT_DIGEST
    z64 = z.astype(np.float64)
    plain = np.linalg.solve(z64 @ z64.T, np.asarray(maps @ z64.T).T).T
    assert np.abs(q - plain).max() < 1e-9 * np.abs(plain).max()


def test_exact_products_are_exact_and_order_free():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(5, 70_000)).astype(np.float32)
    b = rng.normal(size=(4, 70_000)).astype(np.float32)
    # products of float32 values are exact in float64; fsum rounds their exact sum once
    exact = np.array([[math.fsum(row_a.astype(np.float64) * row_b) for row_b in b] for row_a in a])
    assert np.array_equal(exact_products(a, b), exact)
    reversed_order = exact_products(a[:, ::-1].copy(), b[:, ::-1].copy())
    assert np.array_equal(reversed_order, exact)
    sparse_a = sparse.random(6, 70_000, density=0.01, random_state=4, format="csr") * 1e3
    assert np.array_equal(exact_products(sparse_a, b), exact_products(sparse_a.toarray(), b))
