"""The imaging model of a (possibly moving) group of point targets and its analytic Jacobian.

model(r, s) = sum_k b_k g(r - x_k) g(s - y_k), g the pixel integral of the Gaussian PSF
(:func:`pipeline.physics.pixel_integral_1d`); g'(d) = phi_sigma(d + 1/2) - phi_sigma(d - 1/2),
plus, optionally, a smooth background surface (:func:`background_basis`).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch


def pixel_integral_derivative_1d(offset: np.ndarray, sigma: float) -> np.ndarray:
    """g'(d) = phi_sigma(d + 1/2) - phi_sigma(d - 1/2), the derivative of
    :func:`pipeline.physics.pixel_integral_1d` with respect to the offset d (pixel - target, LR px).
    The derivative with respect to the target position is its negative."""
    d = np.asarray(offset, dtype=np.float64)
    norm = 1.0 / (sigma * math.sqrt(2.0 * math.pi))
    two_var = 2.0 * sigma * sigma
    return norm * (np.exp(-(d + 0.5) ** 2 / two_var) - np.exp(-(d - 0.5) ** 2 / two_var))


def profiles(positions: torch.Tensor, size: int, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D pixel responses of targets along one axis (torch twin of
    :func:`pipeline.physics.pixel_integral_1d`, kept in torch for the batched fit; the tests check
    that frames rendered here equal :func:`pipeline.physics.render_batch`).

    positions: (...,) LR px. Returns g (..., size) = g(r - pos) for r = 0..size-1 and its
    derivative with respect to pos (..., size).
    """
    pixels = torch.arange(size, dtype=positions.dtype, device=positions.device)
    d = pixels - positions[..., None]
    scale = sigma * math.sqrt(2.0)
    g = 0.5 * (torch.erf((d + 0.5) / scale) - torch.erf((d - 0.5) / scale))
    norm = 1.0 / (sigma * math.sqrt(2.0 * math.pi))
    two_var = 2.0 * sigma * sigma
    dg_dpos = norm * (torch.exp(-(d - 0.5) ** 2 / two_var) - torch.exp(-(d + 0.5) ** 2 / two_var))
    return g, dg_dpos


def motion_basis(n_frames: int, order: int, dtype=torch.float64) -> torch.Tensor:
    """(W, order) basis tau^j / j! (j = 1..order), tau = frame index - middle index."""
    tau = torch.arange(n_frames, dtype=dtype) - (n_frames - 1) / 2.0
    columns = [tau ** j / math.factorial(j) for j in range(1, order + 1)]
    if not columns:
        return torch.zeros(n_frames, 0, dtype=dtype)
    return torch.stack(columns, dim=1)


@functools.lru_cache(maxsize=16)
def background_basis(size: int, degree: int) -> torch.Tensor:
    """(size^2, B) smooth background surfaces of a frame: products P_i(u) P_j(v) of Legendre
    polynomials with i + j <= ``degree`` (u, v the row and column rescaled to [-1, 1]), so
    B = (degree + 1)(degree + 2) / 2; column 0 is the constant 1 (degree 0: a constant level)."""
    u = torch.linspace(-1.0, 1.0, size, dtype=torch.float64)
    legendre = [torch.ones_like(u), u]
    for n in range(1, degree):
        legendre.append(((2 * n + 1) * u * legendre[n] - n * legendre[n - 1]) / (n + 1))
    columns = [torch.outer(legendre[i], legendre[total - i]).reshape(-1)
               for total in range(degree + 1) for i in range(total, -1, -1)]
    return torch.stack(columns, dim=1)


def model_and_jacobian(theta: torch.Tensor, k: int, basis: torch.Tensor, size: int,
                       sigma: float, need_jacobian: bool = True, background: torch.Tensor | None = None):
    """Rendered frames and the analytic Jacobian of a (possibly moving) group.

    theta: (N, D) with D = 3K + 2M + B: [x_1..x_K, y_1..y_K, b_1..b_K, (vx_j, vy_j) for j = 1..M,
    (background coefficients c_1..c_B)], the background sum_i c_i background[:, i] the same in
    every frame. basis: (W, M) motion basis (see :func:`motion_basis`); target k in frame w sits at
    (x_k + sum_j vx_j basis[w, j], y_k + sum_j vy_j basis[w, j]). background: (size^2, B)
    surfaces (see :func:`background_basis`), or None for targets on a zero floor.
    Returns model (N, R) with R = W * size^2 (frame-major, then row-major pixels) and the
    TRANSPOSED Jacobian jt (N, D, R) = d model / d theta (None when not needed).
    """
    n, w, m = theta.shape[0], basis.shape[0], basis.shape[1]
    p = size * size
    x0, y0, b = theta[:, :k], theta[:, k:2 * k], theta[:, 2 * k:3 * k]
    motion = theta[:, 3 * k:3 * k + 2 * m].reshape(n, m, 2)
    shift = torch.einsum("wj,njc->nwc", basis, motion)  # (N, W, 2)
    xs = x0[:, :, None] + shift[:, None, :, 0]  # (N, K, W)
    ys = y0[:, :, None] + shift[:, None, :, 1]
    gx, dgx = profiles(xs, size, sigma)  # (N, K, W, size)
    gy, dgy = profiles(ys, size, sigma)
    bgx = b[:, :, None, None] * gx
    model = torch.einsum("nkwr,nkws->nwrs", bgx, gy).reshape(n, w * p)
    n_background = 0 if background is None else background.shape[1]
    if n_background:
        surface = theta[:, -n_background:] @ background.T  # (N, P)
        model = (model.reshape(n, w, p) + surface[:, None, :]).reshape(n, w * p)
    if not need_jacobian:
        return model, None
    jx = (b[:, :, None, None, None] * dgx[..., :, None] * gy[..., None, :]).reshape(n, k, w * p)
    jy = (bgx[..., :, None] * dgy[..., None, :]).reshape(n, k, w * p)
    jb = (gx[..., :, None] * gy[..., None, :]).reshape(n, k, w * p)
    columns = [jx, jy, jb]
    if m:
        sx = jx.sum(dim=1).reshape(n, 1, w, p)  # derivative w.r.t. a common shift along x
        sy = jy.sum(dim=1).reshape(n, 1, w, p)
        per_term = basis.T[None, :, :, None]  # (1, M, W, 1)
        jm = torch.stack([sx * per_term, sy * per_term], dim=2)  # (N, M, 2, W, P)
        columns.append(jm.reshape(n, 2 * m, w * p))
    if n_background:
        columns.append(background.T.repeat(1, w)[None].expand(n, -1, -1))
    return model, torch.cat(columns, dim=1)


def render_with_jacobian(x: np.ndarray, y: np.ndarray, brightness: np.ndarray, size: int = 11,
                         sigma: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Frames and analytic Jacobian for static targets (public for tests and diagnostics).

    x, y, brightness: (F, K). Returns frames (F, size, size) and J (F, size^2, 3K) with columns
    [d/dx_1..d/dx_K, d/dy_1..d/dy_K, d/db_1..d/db_K] (pixel counts per LR px or per count).
    """
    theta = torch.from_numpy(np.concatenate([np.asarray(x, np.float64), np.asarray(y, np.float64),
                                             np.asarray(brightness, np.float64)], axis=1))
    k = theta.shape[1] // 3
    model, jt = model_and_jacobian(theta, k, motion_basis(1, 0), size, sigma)
    return model.reshape(-1, size, size).numpy(), jt.transpose(1, 2).numpy()
