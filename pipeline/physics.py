"""Imaging physics: Gaussian PSF integrated over square pixels.

A point target of brightness b at LR coordinates (x, y) gives LR pixel (r, s) the response

    b * g(r - x) * g(s - y),   g(d) = [erf((d + 1/2) / (sigma sqrt 2)) - erf((d - 1/2) / (sigma sqrt 2))] / 2,

the integral of a unit-mass isotropic Gaussian (std ``sigma`` LR px) over the pixel square
(papers/001 eqs. 2-3). ``build_phi`` evaluates that integral with ``scipy.integrate.dblquad``
as the product definition asks; the closed form serves rendering and tests.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import integrate, special
from tqdm.auto import tqdm

from pipeline.coords import Grid


def pixel_integral_1d(offset: np.ndarray, sigma: float) -> np.ndarray:
    """g(d): fraction of a 1-D Gaussian (std ``sigma``) centred 0 falling in [d - 1/2, d + 1/2]."""
    offset = np.asarray(offset, dtype=np.float64)
    scale = sigma * math.sqrt(2.0)
    return 0.5 * (special.erf((offset + 0.5) / scale) - special.erf((offset - 0.5) / scale))


def _offset_indices(grid: Grid) -> tuple[np.ndarray, int]:
    """Integer offsets k = c*p - i + (c-1)/2 between LR pixels p and HR cells i (offset = k/c px)."""
    pixels = np.arange(grid.size)
    cells = np.arange(grid.hr_size)
    k = grid.c * pixels[:, None] - cells[None, :] + int(grid.offset)  # (size, hr_size)
    return k, int(np.abs(k).max())


def build_phi(size: int = 11, c: int = 3, sigma: float = 0.5, *, epsabs: float = 1e-13,
              epsrel: float = 1e-11, progress: bool = False) -> np.ndarray:
    """Sampling matrix Phi, shape (size^2, (c size)^2), by ``dblquad`` over pixel squares.

    Entry [(r, s), (i, j)] is the response of LR pixel (r, s) to a unit target at the centre of
    HR cell (i, j). The response depends only on the pixel-target offset (k_x/c, k_y/c), and the
    isotropic Gaussian is symmetric in the sign of each offset and in swapping the two axes, so
    one integral per unordered pair (|k_x|, |k_y|) suffices: 528 integrals for the default grid
    instead of 131,769.
    """
    grid = Grid(size, c)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    k, k_max = _offset_indices(grid)
    norm = 1.0 / (2.0 * math.pi * sigma * sigma)
    two_var = 2.0 * sigma * sigma

    def density(v: float, u: float) -> float:
        return norm * math.exp(-(u * u + v * v) / two_var)

    table = np.zeros((k_max + 1, k_max + 1))
    pairs = [(a, b) for a in range(k_max + 1) for b in range(a, k_max + 1)]
    for a, b in tqdm(pairs, desc="Phi dblquad", unit="integral", disable=not progress):
        du, dv = a / c, b / c
        value, _ = integrate.dblquad(density, du - 0.5, du + 0.5, dv - 0.5, dv + 0.5,
                                     epsabs=epsabs, epsrel=epsrel)
        table[a, b] = table[b, a] = value
    rows = np.abs(k)  # (size, hr_size): |offset| index along one axis
    phi = table[rows[:, None, :, None], rows[None, :, None, :]]  # (r, s, i, j)
    return phi.reshape(grid.n_lr, grid.n_hr)


def build_phi_closed_form(size: int = 11, c: int = 3, sigma: float = 0.5) -> np.ndarray:
    """The same matrix from the exact erf product (used to test ``build_phi``)."""
    grid = Grid(size, c)
    g = pixel_integral_1d(np.arange(size)[:, None] - grid.hr_centres()[None, :], sigma)  # (size, hr)
    return np.einsum("ri,sj->rsij", g, g).reshape(grid.n_lr, grid.n_hr)


def render_batch(x: np.ndarray, y: np.ndarray, brightness: np.ndarray, size: int = 11,
                 sigma: float = 0.5) -> np.ndarray:
    """Noise-free frames of point targets, closed form.

    x, y, brightness: (F, K) arrays in LR px and counts; a target with brightness 0 is absent
    (pad with zeros for frames with fewer targets). Returns (F, size, size) float64.
    """
    x, y, brightness = (np.asarray(a, dtype=np.float64) for a in (x, y, brightness))
    pixels = np.arange(size, dtype=np.float64)
    gx = pixel_integral_1d(pixels[None, None, :] - x[..., None], sigma)  # (F, K, size)
    gy = pixel_integral_1d(pixels[None, None, :] - y[..., None], sigma)
    return np.einsum("fk,fkr,fks->frs", brightness, gx, gy, optimize=True)


def render(targets: np.ndarray, size: int = 11, sigma: float = 0.5) -> np.ndarray:
    """One noise-free (size, size) frame from (k, 3) rows (x, y, brightness), closed form."""
    targets = np.asarray(targets, dtype=np.float64).reshape(-1, 3)
    return render_batch(targets[None, :, 0], targets[None, :, 1], targets[None, :, 2], size, sigma)[0]
