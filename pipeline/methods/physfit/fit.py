"""Multi-start fits of frames and windows: K by BIC over distinct local minima, posterior-support
scores, block-wise batching (the public entry points :func:`fit_frames` and :func:`fit_windows`)."""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch

from pipeline.coords import Grid
from pipeline.methods.physfit.forward_model import motion_basis
from pipeline.methods.physfit.likelihood import Problem, assign_directions, censor_masks, evaluate
from pipeline.methods.physfit.proposals import (background_start, centroids, collect_starts, draw_jitter,
                                                greedy_pursuit, initial_brightness)
from pipeline.methods.physfit.settings import TINY, FitResult, PhysFitSettings
from pipeline.methods.physfit.solver import covariance, fit_batched


def _prepare(frames: np.ndarray, s: PhysFitSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    data = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float64))
    data = data.reshape(data.shape[0], -1)
    high, low = censor_masks(data, s)
    return data, high, low


def _bic(cost: torch.Tensor, n_obs: int, d: int, s: PhysFitSettings) -> torch.Tensor:
    return cost + s.bic_penalty * d * math.log(n_obs)


def _positions(theta: torch.Tensor, k: int) -> torch.Tensor:
    """(N, K, 2) positions from parameter vectors (N, D)."""
    return torch.stack([theta[:, :k], theta[:, k:2 * k]], dim=2)


def _n_params(k: int, m: int, s: PhysFitSettings) -> int:
    """Effective number of free parameters: 3K + 2M (+ B background coefficients), less the 2K - 3 cross
    constraints when the group prior is on (the soft radius prior is not counted)."""
    d = 3 * k + 2 * m + s.n_background
    if s.arms(k) is not None:
        d -= 2 * k - 3
    return d


def _distinct_modes(theta: torch.Tensor, cost: torch.Tensor, k: int, s: PhysFitSettings,
                    keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``keep`` lowest-cost distinct solutions among S fits of the same K, per frame.

    theta (F, S, D), cost (F, S) (inf = no solution). Two solutions are the same mode when the
    Hausdorff distance between their position sets is below ``mode_separation``. Returns modes
    (F, keep, D) and their costs (F, keep), sorted by cost, padded with the best solution at
    cost +inf.
    """
    f, n_s, d = theta.shape
    order = torch.argsort(cost, dim=1)
    cost = torch.gather(cost, 1, order)
    theta = torch.gather(theta, 1, order[..., None].expand(-1, -1, d))
    pos = torch.stack([theta[..., :k], theta[..., k:2 * k]], dim=3)  # (F, S, K, 2)
    dist = (pos[:, :, None, :, None, :] - pos[:, None, :, None, :, :]).norm(dim=-1)  # (F, S, S, K, K)
    hausdorff = torch.maximum(dist.amin(dim=4).amax(dim=3), dist.amin(dim=3).amax(dim=3))
    finite = torch.isfinite(cost)
    is_mode = torch.zeros(f, n_s, dtype=torch.bool)
    is_mode[:, 0] = finite[:, 0]
    for j in range(1, n_s):
        duplicate = ((hausdorff[:, j, :j] < s.mode_separation) & is_mode[:, :j]).any(dim=1)
        is_mode[:, j] = finite[:, j] & ~duplicate
    rank = torch.cumsum(is_mode.to(torch.int64), dim=1) - 1
    take = is_mode & (rank < keep)
    out_theta = theta[:, :1].expand(-1, keep, -1).clone()
    out_cost = torch.full((f, keep), math.inf, dtype=cost.dtype)
    rows, cols = take.nonzero(as_tuple=True)
    out_theta[rows, rank[rows, cols]] = theta[rows, cols]
    out_cost[rows, rank[rows, cols]] = cost[rows, cols]
    return out_theta, out_cost


def _support(positions: torch.Tensor, frames: torch.Tensor, modes: dict[int, torch.Tensor],
             weights: torch.Tensor, ks: list[int], s: PhysFitSettings) -> torch.Tensor:
    """Posterior support of each detection: the total BIC weight of the solutions (every K, every
    distinct mode) that place a target within ``support_radius`` of it.

    positions (n, K, 2) of the chosen solutions of ``frames`` (n,); weights (F, nK, J) sum to 1
    per frame. Returns (n, K) in (0, 1].
    """
    support = torch.zeros(positions.shape[:2], dtype=positions.dtype)
    for i, k in enumerate(ks):
        theta = modes[k][frames]  # (n, J, D)
        other = torch.stack([theta[..., :k], theta[..., k:2 * k]], dim=3)  # (n, J, K', 2)
        dist = (positions[:, None, :, None, :] - other[:, :, None, :, :]).norm(dim=-1)  # (n, J, K, K')
        near = (dist.amin(dim=3) <= s.support_radius).to(positions.dtype)  # (n, J, K)
        support += (weights[frames, i, :, None] * near).sum(dim=1)
    return support.clamp(max=1.0)


def _finish(problems: dict[int, Problem], modes: dict[int, torch.Tensor], mode_costs: dict[int, torch.Tensor],
            n_obs: int, s: PhysFitSettings) -> FitResult:
    """Choose (K, mode) by BIC, compute covariances and scores, assemble per-frame detections.

    modes[k]: (F, J, D) distinct solutions for K = k sorted by cost; mode_costs[k]: (F, J).
    The score's model probability is the BIC weight exp(-BIC / 2) of the chosen solution among
    all distinct solutions of all K.
    """
    ks = sorted(modes)
    n_frames = next(iter(modes.values())).shape[0]
    m = next(iter(problems.values())).basis.shape[1]
    bic_all = torch.stack([_bic(mode_costs[k], n_obs, _n_params(k, m, s), s) for k in ks], dim=1)  # (F, nK, J)
    flat = bic_all.reshape(n_frames, -1)
    best_flat = flat.argmin(dim=1)
    n_modes = bic_all.shape[2]
    chosen = best_flat // n_modes
    chosen_mode = best_flat % n_modes
    lowest = flat.gather(1, best_flat[:, None])
    weights = torch.exp(-0.5 * (flat - lowest))  # exp(-inf) = 0 for missing modes
    weights = (weights / weights.sum(dim=1, keepdim=True)).reshape(bic_all.shape)  # (F, nK, J)
    k_arr = torch.tensor(ks)[chosen]
    detections: list[np.ndarray] = [np.zeros((0, 3))] * n_frames
    brightness: list[np.ndarray] = [np.zeros(0)] * n_frames
    position_sd: list[np.ndarray] = [np.zeros(0)] * n_frames
    params = {}
    for i, k in enumerate(ks):
        params[k] = modes[k][:, 0].numpy()
        frames_k = (chosen == i).nonzero()[:, 0]
        if frames_k.numel() == 0:
            continue
        theta = modes[k][frames_k, chosen_mode[frames_k]]
        cost = mode_costs[k][frames_k, chosen_mode[frames_k]]
        problem = problems[k].subset(frames_k).with_prior(assign_directions(_positions(theta, k), s))
        cov = covariance(problem, theta, s)
        dof = max(1, n_obs - _n_params(k, m, s))
        inflate = (cost / dof).clamp(min=1.0)
        var = cov.diagonal(dim1=1, dim2=2)
        sd = torch.sqrt((var[:, :k] + var[:, k:2 * k]).clamp(min=0.0) * inflate[:, None])  # (n, K)
        support = _support(_positions(theta, k), frames_k, modes, weights, ks, s)  # (n, K)
        score = support * (1.0 - s.score_sd_weight * sd / (sd + s.score_scale))
        if s.dim_brightness > 0:
            score = score * (theta[:, 2 * k:3 * k] / s.dim_brightness).clamp(max=1.0) ** 2
        th, sc, sdn = theta.numpy(), score.numpy(), sd.numpy()
        for row, frame in enumerate(frames_k.tolist()):
            order = np.argsort(-sc[row], kind="stable")
            detections[frame] = np.stack([th[row, :k], th[row, k:2 * k], sc[row]], axis=1)[order]
            brightness[frame] = th[row, 2 * k:3 * k][order]
            position_sd[frame] = sdn[row][order]
    return FitResult(detections=detections, brightness=brightness, position_sd=position_sd,
                     k=k_arr.numpy(), bic=bic_all[:, :, 0].numpy(), chi2=torch.stack(
                         [mode_costs[k][:, 0] for k in ks], dim=1).numpy(),
                     k_values=np.asarray(ks), params=params)


def _merge(results: list[FitResult], s: PhysFitSettings) -> FitResult:
    """Concatenate the FitResults of consecutive blocks."""
    if len(results) == 1:
        return results[0]
    if not results:
        ks = np.asarray(s.k_values)
        return FitResult([], [], [], np.zeros(0, np.int64), np.zeros((0, len(ks))), np.zeros((0, len(ks))),
                         ks, {int(k): np.zeros((0, 0)) for k in ks})
    first = results[0]
    return FitResult(
        detections=[d for r in results for d in r.detections],
        brightness=[b for r in results for b in r.brightness],
        position_sd=[p for r in results for p in r.position_sd],
        k=np.concatenate([r.k for r in results]),
        bic=np.concatenate([r.bic for r in results]),
        chi2=np.concatenate([r.chi2 for r in results]),
        k_values=first.k_values,
        params={k: np.concatenate([r.params[k] for r in results]) for k in first.params},
    )


def _reorder(parts: list[tuple[np.ndarray, FitResult]], n: int, s: PhysFitSettings) -> FitResult:
    """One FitResult for n items from results of disjoint subsets (rows, result); parameter
    vectors with fewer background coefficients are padded with zeros."""
    if len(parts) == 1:
        return parts[0][1]
    rows = np.concatenate([r for r, _ in parts])
    order = np.empty(n, dtype=np.int64)
    order[rows] = np.arange(n)
    widths = {k: max(result.params[k].shape[1] for _, result in parts) for k in parts[0][1].params}
    merged = _merge([dataclasses.replace(result, params={
        k: np.pad(v, ((0, 0), (0, widths[k] - v.shape[1]))) for k, v in result.params.items()}) for _, result in parts], s)
    return merged.take(order)


def unclipped_pixels(frames: np.ndarray, s: PhysFitSettings) -> np.ndarray:
    """(F,) pixels of each frame (or window) that :func:`censor_masks` leaves uncensored: about the
    expected whitened cost of a fit that explains the data (clipped pixels add almost nothing)."""
    _, high, low = _prepare(frames, s)
    return np.maximum((~(high | low)).sum(dim=1).numpy(), 1)


def _relaxations(s: PhysFitSettings) -> list[list[PhysFitSettings]]:
    """The fallback rounds of ``s``, tried in this order where the data reject the fit so far; the
    settings of a round are alternatives fitted to the same items. With a group prior: its arms
    refined (each level up to ``arm_refinements``) beside the shape freed; then the brightness
    widened to ``brightness_limits`` (when set); then both."""
    shaped = s.group_prior_sd > 0
    finer = [dataclasses.replace(s, arm_level=level) for level in range(s.arm_level + 1, s.arm_refinements + 1)]
    rounds = [finer + [dataclasses.replace(s, group_prior_sd=0.0)]] if shaped else []
    if s.brightness_limits is not None:
        low, high = s.brightness_limits
        wide = dataclasses.replace(s, brightness_min=low, brightness_max=high, brightness_limits=None)
        rounds += [[wide], [dataclasses.replace(wide, group_prior_sd=0.0)]] if shaped else [[wide]]
    return rounds


def _relaxing(frames: np.ndarray, s: PhysFitSettings, fit_subset) -> FitResult:
    """``fit_subset(rows, settings)`` with the priors of ``s`` (brightness box, group shape), then,
    one round of :func:`_relaxations` at a time, again for the frames or windows whose best fit
    so far the data reject (whitened cost above ``relax_misfit`` times their unclipped pixels); per
    item the fit with the lowest BIC is kept -- the priors first, relaxed where the data reject
    them."""
    n = len(frames)
    best = fit_subset(np.arange(n), s)
    limit = s.relax_misfit * unclipped_pixels(frames, s)
    for fallbacks in _relaxations(s):
        rows = np.flatnonzero(best.misfit() > limit)
        if rows.size == 0:
            break
        for fallback in fallbacks:
            retry = fit_subset(rows, fallback)
            better = retry.bic.min(axis=1) < best.bic[rows].min(axis=1)
            keep = np.setdiff1d(np.arange(n), rows[better])
            parts = [(keep, best.take(keep)), (rows[better], retry.take(np.flatnonzero(better)))]
            best = _reorder([(r, part) for r, part in parts if r.size], n, s)
    return best


def _by_background_model(frames: np.ndarray, s: PhysFitSettings, fit_subset) -> FitResult:
    """``fit_subset(rows, settings)`` over all frames (or windows), with ``background="auto"``
    resolved per item: a smooth surface where the median pixel exceeds the floor by more than
    ``background_threshold``, none elsewhere."""
    n = len(frames)

    def fit_relaxing(rows: np.ndarray, sub: PhysFitSettings) -> FitResult:
        return _relaxing(frames[rows], sub, lambda inner, settings: fit_subset(rows[inner], settings))

    if s.background != "auto":
        return fit_relaxing(np.arange(n), s)
    median = np.median(frames.reshape(n, -1), axis=1)
    lifted = median > (s.floor or 0.0) + s.background_threshold
    parts = [(rows, fit_relaxing(rows, dataclasses.replace(s, background=model)))
             for rows, model in ((np.flatnonzero(~lifted), "none"), (np.flatnonzero(lifted), "smooth")) if rows.size]
    return _reorder(parts, n, s)


def _as_proposals(starts, n: int) -> list[np.ndarray]:
    if starts is None:
        return []
    if isinstance(starts, np.ndarray):
        starts = [starts]
    out = []
    for item in starts:
        arr = np.asarray(item, dtype=np.float64)
        if arr.ndim != 3 or arr.shape[0] != n or arr.shape[2] < 2:
            raise ValueError(f"starts must be (F, J, 2 or 3) arrays with F = {n}, got {arr.shape}")
        out.append(arr)
    return out


def _settings(settings: PhysFitSettings | None, overrides: dict, phi: np.ndarray | None) -> PhysFitSettings:
    """Settings with keyword overrides (``k_range=(lo, hi)`` and ``sigma`` are accepted as aliases
    of (k_min, k_max) and psf_sigma), checked against ``phi``: the pursuit needs the physics'
    sampling matrix, for frames of the settings' size."""
    s = settings or PhysFitSettings()
    overrides = dict(overrides)
    if "k_range" in overrides:
        overrides["k_min"], overrides["k_max"] = (int(v) for v in overrides.pop("k_range"))
    if "sigma" in overrides:
        overrides["psf_sigma"] = overrides.pop("sigma")
    if overrides:
        s = dataclasses.replace(s, **overrides)
    if phi is None and s.use_pursuit:
        raise ValueError("use_pursuit needs phi, the physics' (m^2, (c m)^2) sampling matrix")
    if phi is not None and Grid.from_phi(phi).size != s.size:
        raise ValueError(f"phi is for {Grid.from_phi(phi).size}x{Grid.from_phi(phi).size} frames, "
                         f"the settings for {s.size}x{s.size}")
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    return s


def _blockwise(count: int, starts, s: PhysFitSettings, fit_block) -> FitResult:
    """Run ``fit_block(block, proposals, jitter)`` on consecutive blocks of ``block_size`` frames
    (or windows) and merge; the jitter is drawn once for all ``count`` so that results do not
    depend on the blocking."""
    proposals = _as_proposals(starts, count)
    jitter = draw_jitter(count, s)
    results = []
    with torch.no_grad():
        for lo in range(0, count, s.block_size):
            block = slice(lo, lo + s.block_size)
            results.append(fit_block(block, [p[block] for p in proposals], {k: v[block] for k, v in jitter.items()}))
    return _merge(results, s)


def _single_frame_fits(frames: np.ndarray, s: PhysFitSettings, phi: np.ndarray | None,
                       proposals: list[np.ndarray], keep: int, jitter: dict[int, np.ndarray]):
    """Multi-start single-frame LM for every K (jitter from :func:`draw_jitter`, rows of these frames).

    K = k_min..k_max is fitted on every frame; then K = k_max + 1, ..., k_top, each only on the
    frames whose best K (by BIC) so far is the largest tried (the others get cost +inf).
    Returns problems (K -> Problem over the F frames, no prior attached), modes (K -> (F, keep, D))
    and their costs (K -> (F, keep)), see :func:`_distinct_modes`.
    """
    f = frames.shape[0]
    data, high, low = _prepare(frames, s)
    basis = motion_basis(1, 0)
    start_background, surface = background_start(frames, s)
    targets_only = frames - surface.reshape(frames.shape)
    centroid = centroids(targets_only, s)
    if s.use_pursuit:
        full_scale = s.full_scale if s.saturation_aware else None
        proposals = [greedy_pursuit(targets_only, phi, s.k_top,
                                    full_scale=None if full_scale is None else full_scale - surface.max(axis=1))
                     ] + list(proposals)
    problems, modes, costs = {}, {}, {}

    def fit_k(k: int, rows: np.ndarray) -> None:
        problem = Problem(data, high, low, k, basis, s)
        problems[k] = problem
        starts = collect_starts(k, centroid[rows], [p[rows] for p in proposals], s, jitter[k][rows])  # (n, S, K, 2)
        n, n_starts = starts.shape[:2]
        pos = torch.from_numpy(starts.reshape(n * n_starts, k, 2))
        rep = torch.from_numpy(rows).repeat_interleave(n_starts)
        expanded = problem.subset(rep).with_prior(assign_directions(pos, s))
        b0 = initial_brightness(expanded, pos, torch.from_numpy(surface)[rep], s)
        theta0 = torch.cat([pos[..., 0], pos[..., 1], b0, torch.from_numpy(start_background)[rep]], dim=1)
        if n_starts > s.max_starts:  # keep the starts that explain the frame best as they are
            start_cost = evaluate(expanded, theta0, need_normal=False)[0].reshape(n, n_starts)
            best = torch.argsort(start_cost, dim=1, stable=True)[:, :s.max_starts]
            chosen = (torch.arange(n)[:, None] * n_starts + best).reshape(-1)
            theta0, expanded, n_starts = theta0[chosen], expanded.subset(chosen), s.max_starts
        theta, cost = fit_batched(expanded, theta0, s)
        found, found_cost = _distinct_modes(theta.reshape(n, n_starts, -1), cost.reshape(n, n_starts), k, s, keep)
        modes[k] = torch.zeros((f, keep, found.shape[2]), dtype=found.dtype)
        costs[k] = torch.full((f, keep), math.inf, dtype=found_cost.dtype)
        modes[k][rows], costs[k][rows] = found, found_cost

    every = np.arange(f)
    for k in s.k_values:
        fit_k(k, every)
    for k in range(s.k_max + 1, s.k_top + 1):
        ks = sorted(costs)
        bic = torch.stack([_bic(costs[j][:, 0], s.size * s.size, _n_params(j, 0, s), s) for j in ks], dim=1)
        rows = (bic.argmin(dim=1) == len(ks) - 1).nonzero()[:, 0].numpy()
        if rows.size == 0:  # no frame needs more targets: K stays unfitted (cost +inf) for all
            problems[k] = Problem(data, high, low, k, basis, s)
            modes[k] = torch.zeros((f, keep, 3 * k + s.n_background), dtype=data.dtype)
            costs[k] = torch.full((f, keep), math.inf, dtype=data.dtype)
        else:
            fit_k(k, rows)
    return problems, modes, costs


def fit_frames_detailed(frames: np.ndarray, settings: PhysFitSettings | None = None, *,
                        phi: np.ndarray | None = None,
                        starts: np.ndarray | Sequence[np.ndarray] | None = None,
                        **overrides) -> FitResult:
    """Fit every frame independently; see :class:`FitResult`.

    frames: (F, m, m) counts (8-bit frames as floats are fine). settings: a
    :class:`PhysFitSettings` (default: 8-bit sensor, no additive noise; see
    :meth:`PhysFitSettings.for_sensor`). phi: the physics' (m^2, (c m)^2) sampling matrix, whose
    columns the sparse pursuit searches (required when ``use_pursuit``). starts: optional extra proposals, one (F, J, 2 or 3) array
    or a list of them (e.g. from :func:`starts_from_hr_maps` or :func:`greedy_pursuit`); the first
    K rows of each are one start for K targets. overrides: fields of :class:`PhysFitSettings`
    (e.g. ``full_scale=None``, ``noise_sigma=2.0`` -- the ADDITIVE noise; 8-bit rounding is added
    through ``quantum``), plus the aliases ``k_range=(1, 5)`` and ``sigma=0.5`` (PSF).
    """
    s = _settings(settings, overrides, phi)
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 3 or frames.shape[1:] != (s.size, s.size):
        raise ValueError(f"frames must be (F, {s.size}, {s.size}), got {frames.shape}")

    def fit_block(block: slice, proposals: list[np.ndarray], jitter: dict[int, np.ndarray]) -> FitResult:
        def fit_subset(rows: np.ndarray, sub: PhysFitSettings) -> FitResult:
            problems, modes, costs = _single_frame_fits(frames[block][rows], sub, phi, [p[rows] for p in proposals],
                                                        sub.max_modes, {k: v[rows] for k, v in jitter.items()})
            return _finish(problems, modes, costs, sub.size * sub.size, sub)

        return _by_background_model(frames[block], s, fit_subset)

    return _blockwise(len(frames), starts, s, fit_block)


def fit_frames(frames: np.ndarray, settings: PhysFitSettings | None = None, *,
               phi: np.ndarray | None = None,
               starts: np.ndarray | Sequence[np.ndarray] | None = None, **overrides) -> list[np.ndarray]:
    """Per-frame detections: list of F arrays (n_f, 3) = (x row, y column, score), LR px.

    Shorthand for ``fit_frames_detailed(...).detections``; brightness and diagnostics are in
    :func:`fit_frames_detailed`.
    """
    return fit_frames_detailed(frames, settings, phi=phi, starts=starts, **overrides).detections


def _frame_shift_estimate(windows: np.ndarray, s: PhysFitSettings) -> np.ndarray:
    """(B, 2M) start for the motion terms [(v_x, v_y), (a_x, a_y)]: slope of the per-frame
    intensity centroids against tau (velocity); acceleration starts at 0."""
    b, w = windows.shape[:2]
    frames = windows.reshape(b * w, s.size, s.size)
    cent = centroids(frames - background_start(frames, s)[1].reshape(frames.shape), s).reshape(b, w, 2)
    out = np.zeros((b, s.motion_order, 2))
    if s.motion_order and w > 1:
        tau = motion_basis(w, 1).numpy()[:, 0]
        centred = cent - cent.mean(axis=1, keepdims=True)
        out[:, 0, :] = (tau[None, :, None] * centred).sum(axis=1) / max(float((tau * tau).sum()), TINY)
    return out.reshape(b, -1)


def fit_windows_detailed(windows: np.ndarray, settings: PhysFitSettings | None = None, *,
                         phi: np.ndarray | None = None,
                         starts: np.ndarray | Sequence[np.ndarray] | None = None,
                         **overrides) -> FitResult:
    """Joint fit of W-frame windows; detections are for the middle frame.

    windows: (B, W, m, m) counts, W odd. The group translates rigidly,
    position_k(t) = p_k + v tau + a tau^2 / 2 (tau = t - t_mid, ``motion_order`` terms), brightness
    shared by all frames; p_k are reported. Starts: the ``window_modes`` best distinct
    single-frame solutions of the middle frame per K, with the centroid-derived velocity; a K whose
    middle-frame BIC exceeds the best by more than ``window_bic_margin`` is not refined (it cannot
    win). ``starts``: extra proposals for the middle frame ((B, J, 2 or 3)). K and the solution are
    chosen by BIC over all W m^2 pixels. ``phi``: as in :func:`fit_frames_detailed`.
    """
    s = _settings(settings, overrides, phi)
    windows = np.asarray(windows, dtype=np.float64)
    if windows.ndim != 4 or windows.shape[2:] != (s.size, s.size) or windows.shape[1] % 2 == 0:
        raise ValueError(f"windows must be (B, W odd, {s.size}, {s.size}), got {windows.shape}")

    def fit_block(block: slice, proposals: list[np.ndarray], jitter: dict[int, np.ndarray]) -> FitResult:
        def fit_subset(rows: np.ndarray, sub: PhysFitSettings) -> FitResult:
            return _fit_windows_block(windows[block][rows], sub, phi, [p[rows] for p in proposals],
                                      {k: v[rows] for k, v in jitter.items()})

        return _by_background_model(windows[block], s, fit_subset)

    return _blockwise(len(windows), starts, s, fit_block)


def _fit_windows_block(windows: np.ndarray, s: PhysFitSettings, phi: np.ndarray | None, proposals: list[np.ndarray],
                       jitter: dict[int, np.ndarray]) -> FitResult:
    """:func:`fit_windows_detailed` on one block of windows (B, W, m, m)."""
    b, w = windows.shape[:2]
    mid = w // 2
    rough = s if s.start_lm_iterations is None else dataclasses.replace(s, lm_iterations=s.start_lm_iterations)
    _, single, single_cost = _single_frame_fits(windows[:, mid], rough, phi, proposals, s.window_modes, jitter)
    ks = sorted(single)
    single_bic = torch.stack([_bic(single_cost[k][:, 0], s.size * s.size, _n_params(k, 0, s), s)
                              for k in ks], dim=1)
    worth = single_bic <= single_bic.min(dim=1, keepdim=True).values + s.window_bic_margin  # (B, nK)
    data, high, low = _prepare(windows.reshape(b, -1), s)
    basis = motion_basis(w, s.motion_order)
    motion0 = torch.from_numpy(_frame_shift_estimate(windows, s))
    problems, modes, costs = {}, {}, {}
    for i, k in enumerate(ks):
        problem = Problem(data, high, low, k, basis, s)
        problems[k] = problem
        n_keep = single[k].shape[1]
        theta0 = torch.cat([single[k][..., :3 * k], motion0[:, None, :].expand(-1, n_keep, -1),
                            single[k][..., 3 * k:]], dim=2)  # the motion terms go before the background
        run = worth[:, i:i + 1] & torch.isfinite(single_cost[k])  # (B, keep)
        cost = torch.full((b, n_keep), math.inf, dtype=theta0.dtype)
        theta = theta0.clone()
        rows, cols = run.nonzero(as_tuple=True)
        if rows.numel():
            start = theta0[rows, cols]
            sub = problem.subset(rows).with_prior(assign_directions(_positions(start, k), s))
            fitted, fitted_cost = fit_batched(sub, start, s)
            theta[rows, cols] = fitted
            cost[rows, cols] = fitted_cost
        modes[k], costs[k] = _distinct_modes(theta, cost, k, s, s.max_modes)
    return _finish(problems, modes, costs, w * s.size * s.size, s)


def fit_windows(windows: np.ndarray, settings: PhysFitSettings | None = None, *,
                phi: np.ndarray | None = None,
                starts: np.ndarray | Sequence[np.ndarray] | None = None, **overrides) -> list[np.ndarray]:
    """Middle-frame detections of each window: list of B arrays (n_b, 3) = (x, y, score).

    Shorthand for ``fit_windows_detailed(...).detections``.
    """
    return fit_windows_detailed(windows, settings, phi=phi, starts=starts, **overrides).detections


def calibrate_psf(windows: np.ndarray, settings: PhysFitSettings, *, phi: np.ndarray | None = None,
                  multi_frame: bool = True) -> float:
    """PSF std (LR px) for these frames: the settings' own unless the data clearly prefer another.

    windows: (B, W, m, m). ``calibration_windows`` windows spread evenly over the batch are fitted
    (jointly, or their middle frames when not ``multi_frame``) with ``calibration_steps`` PSF stds
    spanning +-``calibration_span`` of ``psf_sigma`` (an odd count includes it). The std of lowest
    total BIC, refined by a parabola through it and its neighbours, is returned when its BIC is
    lower than that of ``psf_sigma`` by more than ``calibration_margin`` per window; else
    ``psf_sigma``.
    """
    s = settings
    windows = np.asarray(windows, dtype=np.float64)
    pick = np.unique(np.linspace(0, len(windows) - 1, min(s.calibration_windows, len(windows))).round().astype(int))
    sample = windows[pick] if multi_frame else windows[pick, windows.shape[1] // 2]
    fit = fit_windows_detailed if multi_frame else fit_frames_detailed

    def total_bic(sigma: float) -> float:
        result = fit(sample, dataclasses.replace(s, psf_sigma=float(sigma), psf_calibration=False), phi=phi)
        return float(result.bic.min(axis=1).sum())

    sigmas = s.psf_sigma * (1.0 + np.linspace(-s.calibration_span, s.calibration_span, s.calibration_steps))
    costs = np.array([total_bic(sigma) for sigma in sigmas])
    middle = len(sigmas) // 2
    nominal = costs[middle] if len(sigmas) % 2 else total_bic(s.psf_sigma)
    best = int(np.argmin(costs))
    if costs[best] >= nominal - s.calibration_margin * len(sample):
        return s.psf_sigma
    estimate = float(sigmas[best])
    if 0 < best < len(sigmas) - 1:
        left, mid, right = costs[best - 1:best + 2]
        curvature = left - 2.0 * mid + right
        if curvature > 0:
            step = sigmas[1] - sigmas[0]
            estimate += float(np.clip(0.5 * step * (left - right) / curvature, -step / 2, step / 2))
    return estimate
