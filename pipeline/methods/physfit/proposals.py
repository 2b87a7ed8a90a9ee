"""Starting points of the fit: sparse pursuit on Phi, peaks of HR maps, cross templates, jitter."""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np
import torch

from pipeline.coords import Grid
from pipeline.methods.physfit.forward_model import profiles
from pipeline.methods.physfit.likelihood import Problem, censor_masks
from pipeline.methods.physfit.settings import RIDGE, TINY, PhysFitSettings


def greedy_pursuit(frames: np.ndarray, phi: np.ndarray, k_max: int = 5, *,
                   full_scale: float | np.ndarray | None = 255.0) -> np.ndarray:
    """Non-negative orthogonal matching pursuit on the HR-grid columns of Phi, batched.

    frames: (F, m, m) counts. phi: (m^2, (c m)^2) sampling matrix of the physics (its grid, any
    odd c, is inferred from its shape). Pixels at or above ``full_scale`` (a scalar, or one value
    per frame) are masked out (their value is unknown). Each step picks the HR cell whose normalised column correlates best with
    the residual, then refits all picked amplitudes by least squares on the unmasked pixels
    (clipped at 0).
    Returns (F, k_max, 3): (x, y, amplitude) of the atoms in the order picked (LR px, counts).
    """
    frames = np.asarray(frames, dtype=np.float64)
    grid = Grid.from_phi(phi)
    f, m = frames.shape[0], frames.shape[-1]
    if m != grid.size:
        raise ValueError(f"frames are {m}x{m} but phi is for {grid.size}x{grid.size} frames")
    y = torch.from_numpy(frames.reshape(f, -1))
    ph = torch.from_numpy(np.asarray(phi, dtype=np.float64))  # (P, H)
    if full_scale is None:
        weight = torch.ones_like(y)
    else:
        weight = (y < torch.as_tensor(np.asarray(full_scale, dtype=np.float64)).reshape(-1, 1)).to(y.dtype)
    norms = torch.sqrt((weight @ (ph * ph)).clamp(min=TINY))  # (F, H)
    residual = weight * y
    chosen = torch.zeros(f, 0, dtype=torch.long)
    taken = torch.zeros(f, ph.shape[1], dtype=torch.bool)
    amplitude = torch.zeros(f, 0, dtype=y.dtype)
    rows = torch.arange(f)
    for _ in range(k_max):
        corr = (residual @ ph) / norms
        corr = corr.masked_fill(taken, -math.inf)
        pick = corr.argmax(dim=1)
        taken[rows, pick] = True
        chosen = torch.cat([chosen, pick[:, None]], dim=1)
        atoms = ph.T[chosen].transpose(1, 2) * weight[..., None]  # (F, P, k)
        gram = atoms.transpose(1, 2) @ atoms
        ridge = RIDGE * gram.diagonal(dim1=1, dim2=2).amax(dim=1).clamp(min=TINY)
        gram = gram + ridge[:, None, None] * torch.eye(gram.shape[1], dtype=y.dtype)
        rhs = atoms.transpose(1, 2) @ (weight * y)[..., None]
        amplitude = torch.nan_to_num(torch.linalg.solve_ex(gram, rhs)[0][..., 0], nan=0.0).clamp(min=0.0)
        residual = weight * y - (atoms @ amplitude[..., None])[..., 0]
    cells = chosen.numpy()
    rr, cc = np.divmod(cells, grid.hr_size)
    return np.stack([grid.to_lr_coordinate(rr), grid.to_lr_coordinate(cc), amplitude.numpy()], axis=2)


def starts_from_hr_maps(hr_maps: np.ndarray, grid: Grid, k_max: int = 5, *,
                        peak_threshold: float = 0.0) -> np.ndarray:
    """Candidate positions from HR maps (e.g. a network's 33x33 output), batched.

    hr_maps: (F, c m, c m) (or (F, (c m)^2)); grid: the map's :class:`Grid`. Cells above ``peak_threshold`` that are local maxima of their 3x3 neighbourhood come
    first by descending value, then the remaining cells by value, so every frame yields exactly
    ``k_max`` candidates.
    Returns (F, k_max, 3): (x, y, map value) in LR px / map units.
    """
    maps = np.asarray(hr_maps, dtype=np.float64)
    f = maps.shape[0]
    side = grid.hr_size
    if maps[0].size != grid.n_hr:
        raise ValueError(f"HR maps must hold {grid.n_hr} cells ({side}x{side}), got {maps.shape[1:]}")
    maps = maps.reshape(f, side, side)
    t = torch.from_numpy(maps)[:, None]
    pooled = torch.nn.functional.max_pool2d(t, 3, stride=1, padding=1)[:, 0]
    peak = ((torch.from_numpy(maps) >= pooled) & (torch.from_numpy(maps) > peak_threshold)).reshape(f, -1).numpy()
    flat = maps.reshape(f, -1)
    order = np.lexsort((-flat, ~peak), axis=1)[:, :k_max]  # peaks first, each group by value
    rr, cc = np.divmod(order, side)
    values = np.take_along_axis(flat, order, axis=1)
    return np.stack([grid.to_lr_coordinate(rr), grid.to_lr_coordinate(cc), values], axis=2)


def centroids(frames: np.ndarray, s: PhysFitSettings) -> np.ndarray:
    """(F, 2) intensity centroid (row, column) of pixels above centroid_fraction * max."""
    f, m = frames.shape[0], frames.shape[-1]
    flat = frames.reshape(f, -1)
    peak = flat.max(axis=1, keepdims=True)
    w = np.clip(flat - s.centroid_fraction * peak, 0.0, None)
    w_sum = np.maximum(w.sum(axis=1), TINY)
    rows, cols = np.divmod(np.arange(m * m), m)
    cx = (w @ rows) / w_sum
    cy = (w @ cols) / w_sum
    empty = flat.max(axis=1) <= 0
    cx[empty] = cy[empty] = (m - 1) / 2.0
    return np.stack([cx, cy], axis=1)


def _start_arms(k: int, s: PhysFitSettings) -> tuple[tuple[float, float], ...]:
    """Arm directions of the cross starts for K targets: the group prior's (:meth:`PhysFitSettings.arms`)
    when it holds K targets, else ``template_directions``."""
    return s.arms(k) or s.template_directions


def _template_starts(k: int, centroid: np.ndarray, s: PhysFitSettings) -> list[np.ndarray]:
    """Cross templates (K >= 2): every K of the arms (:func:`_start_arms`) at ``template_radius``
    around a reference placed so that the template's mean position is the centroid. Each: (F, K, 2)."""
    dirs = np.asarray(_start_arms(k, s), dtype=np.float64)
    if s.template_radius <= 0 or k < 2 or k > len(dirs):  # one target: the pursuit and the centroid
        return []
    out = []
    for subset in itertools.combinations(range(len(dirs)), k):
        arms = s.template_radius * dirs[list(subset)]  # (K, 2)
        ref = centroid - arms.mean(axis=0)
        out.append(ref[:, None, :] + arms[None])
    return out


def _ring_starts(k: int, centroid: np.ndarray, s: PhysFitSettings) -> list[np.ndarray]:
    """Ring templates for counts the cross cannot hold (K > its arms): K points evenly on a circle
    of ``template_radius`` around the centroid, in ``ring_rotations`` rotations. Each: (F, K, 2)."""
    if s.template_radius <= 0 or k <= len(_start_arms(k, s)):
        return []
    out = []
    for rotation in range(s.ring_rotations):
        angle = 2.0 * np.pi * (np.arange(k) + rotation / max(1, s.ring_rotations)) / k
        ring = s.template_radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        out.append(centroid[:, None, :] + ring[None])
    return out


def draw_jitter(n_frames: int, s: PhysFitSettings) -> dict[int, np.ndarray]:
    """Standard-normal offsets of the jittered starts, K -> (F, max(1, random_starts), K, 2), drawn
    once per call so that results do not depend on how frames are split into blocks."""
    n = max(1, s.random_starts)
    return {k: np.random.default_rng([s.seed, k]).standard_normal((n_frames, n, k, 2)) for k in range(s.k_min, s.k_top + 1)}


def collect_starts(k: int, centroid: np.ndarray, proposals: Sequence[np.ndarray],
                    s: PhysFitSettings, jitter: np.ndarray) -> np.ndarray:
    """All start positions for K targets: (F, S, K, 2). jitter: (F, R, K, 2) standard normal."""
    starts = []
    for prop in proposals:
        if prop.shape[1] >= k:
            starts.append(prop[:, :k, :2])
    starts.extend(_template_starts(k, centroid, s))
    starts.extend(_ring_starts(k, centroid, s))
    n_random = s.random_starts if starts else max(1, s.random_starts)
    for j in range(n_random):
        starts.append(centroid[:, None, :] + s.start_jitter * jitter[:, j])
    return np.stack(starts, axis=1)


def background_start(frames: np.ndarray, s: PhysFitSettings, passes: int = 3,
                     outlier_sd: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Start of the background of each frame: coefficients (F, B) of the settings' surfaces and
    the surface itself (F, m^2); (F, 0) and zeros for ``background="none"``.

    A constant level starts at the median pixel, which the few pixels of a group do not move. A
    smooth surface is fitted by least squares in ``passes`` rounds, each dropping the pixels that
    sit more than ``outlier_sd`` robust sds (1.4826 x the median absolute residual) above the
    previous round's surface -- the targets -- and the clipped pixels.
    """
    flat = np.asarray(frames, dtype=np.float64).reshape(len(frames), -1)
    surfaces = s.background_surfaces
    if surfaces is None:
        return np.zeros((len(flat), 0)), np.zeros_like(flat)
    basis = surfaces.numpy()
    if basis.shape[1] == 1:
        coefficients = np.median(flat, axis=1, keepdims=True)
        return coefficients, coefficients @ basis.T
    high, low = censor_masks(torch.from_numpy(flat), s)
    usable = ~(high | low).numpy()
    weights = usable.astype(np.float64)
    for _ in range(passes):
        gram = np.einsum("pb,fp,pc->fbc", basis, weights, basis)
        gram += RIDGE * np.trace(gram, axis1=1, axis2=2)[:, None, None] * np.eye(basis.shape[1])
        coefficients = np.linalg.solve(gram, np.einsum("pb,fp->fb", basis, weights * flat)[..., None])[..., 0]
        residual = flat - coefficients @ basis.T
        spread = 1.4826 * np.median(np.abs(residual), axis=1, keepdims=True) + s.noise_sd
        weights = (usable & (residual <= outlier_sd * spread)).astype(np.float64)
    return coefficients, coefficients @ basis.T


def initial_brightness(problem: Problem, positions: torch.Tensor, surface: torch.Tensor,
                       s: PhysFitSettings) -> torch.Tensor:
    """Least-squares brightness (N, K) for fixed positions (N, K, 2) of static targets on a
    background ``surface`` (N, m^2), using the uncensored pixels of the first frame, clipped to the
    brightness box."""
    k = positions.shape[1]
    gx, _ = profiles(positions[..., 0], s.size, s.psf_sigma)
    gy, _ = profiles(positions[..., 1], s.size, s.psf_sigma)
    p = s.size * s.size
    atoms = (gx[..., :, None] * gy[..., None, :]).reshape(-1, k, p).transpose(1, 2)  # (N, P, K)
    data = problem.data[:, :p] - surface
    usable = (~(problem.high[:, :p] | problem.low[:, :p])).to(data.dtype)
    atoms_w = atoms * usable[..., None]
    gram = atoms_w.transpose(1, 2) @ atoms_w
    ridge = RIDGE * gram.diagonal(dim1=1, dim2=2).amax(dim=1).clamp(min=TINY)
    gram = gram + ridge[:, None, None] * torch.eye(k, dtype=data.dtype)
    rhs = atoms_w.transpose(1, 2) @ (usable * data)[..., None]
    b = torch.linalg.solve_ex(gram, rhs)[0][..., 0]
    b = torch.nan_to_num(b, nan=s.brightness_min)
    return b.clamp(s.brightness_min, s.brightness_max)
