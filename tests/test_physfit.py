"""Tests of the continuous physics fit (pipeline.methods.physfit): Jacobians, exact recovery,
saturation, K selection, multi-frame windows, proposals, scores, and the method at c = 3 and c = 5.
Fast (a few seconds each)."""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

from pipeline.settings import ClutterConfig
from pipeline.coords import Grid
from pipeline.methods import PhysicsOperator, get_model, physfit
from pipeline.methods.physfit.forward_model import background_basis, motion_basis
from pipeline.methods.physfit.likelihood import Problem, assign_directions, censor_masks, evaluate
from pipeline.methods.physfit.proposals import background_start
from pipeline.physics import build_phi_closed_form, pixel_integral_1d, render_batch
from pipeline.priors import COMPASS_DIRECTIONS, ScenePriors, refine_directions
from pipeline.sensor import Sensor
from pipeline.simulate import clutter_backgrounds

PHI = build_phi_closed_form(11, 3, 0.5)  # the physics' sampling matrix the pursuit searches
fit_frames = functools.partial(physfit.fit_frames, phi=PHI)
fit_frames_detailed = functools.partial(physfit.fit_frames_detailed, phi=PHI)
fit_windows = functools.partial(physfit.fit_windows, phi=PHI)
fit_windows_detailed = functools.partial(physfit.fit_windows_detailed, phi=PHI)


def settings_for(bit_depth: int, noise_sigma: float = 0.0, **fields) -> physfit.PhysFitSettings:
    """PhysFit settings for an 11x11 sensor of that bit depth and additive noise."""
    return physfit.PhysFitSettings.for_sensor(Sensor(bit_depth=bit_depth, noise_sigma=noise_sigma), **fields)


ARMS = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])  # up, down, left, right (x = row)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small batched tensors run fastest on one thread (and the CI box has two shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def groups(n: int, k: int, seed: int, radius: float = 0.3, arms: np.ndarray = ARMS):
    """n frames' worth of K-target groups: K distinct ``arms`` (unit directions) at ``radius``
    around a random reference inside the field; brightness U(220, 250). Returns positions
    (n, K, 2), brightness (n, K)."""
    rng = np.random.default_rng(seed)
    ref = rng.uniform(2.0, 8.0, (n, 2))
    arms = np.stack([arms[rng.permutation(len(arms))[:k]] for _ in range(n)])
    return ref[:, None, :] + radius * arms, rng.uniform(220.0, 250.0, (n, k))


def sensor(clean: np.ndarray, noise: float, bits: int, seed: int) -> np.ndarray:
    """Additive noise, then 8-bit rounding and clipping (bits = 8) or nothing (bits = 0)."""
    rng = np.random.default_rng(seed)
    frames = clean + (rng.normal(0.0, noise, clean.shape) if noise else 0.0)
    return np.clip(np.round(frames), 0.0, 255.0) if bits else frames


def trajectories(n: int, k: int, noise: float, seed: int, frames: int = 5, background: np.ndarray | None = None,
                 arms: np.ndarray = ARMS):
    """Moving groups (the SeqCSIST rules) on ``arms``: 0.04 px/frame along x, a linear y drift,
    outward drift U(0, 0.0014) px/frame, optionally on a static ``background`` (n, 11, 11) in
    counts. Returns 8-bit windows (n, frames, 11, 11) and positions (n, frames, K, 2)."""
    rng = np.random.default_rng(seed)
    pos0, b = groups(n, k, seed + 1, arms=arms)
    centre = pos0.mean(axis=1, keepdims=True)
    t = np.arange(frames)[None, :, None, None]
    velocity = np.stack([rng.choice([-0.04, 0.04], n), rng.uniform(-0.04, 0.04, n)], axis=1)[:, None, None, :]
    outward = (pos0 - centre) / np.linalg.norm(pos0 - centre, axis=2, keepdims=True)
    drift = np.cumsum(rng.uniform(0.0, 0.0014, (n, frames, k)), axis=1)[..., None]
    pos = pos0[:, None] + velocity * t + drift * outward[:, None]
    clean = render_batch(pos[..., 0].reshape(n * frames, k), pos[..., 1].reshape(n * frames, k),
                         np.repeat(b, frames, axis=0)).reshape(n, frames, 11, 11)
    if background is not None:
        clean = clean + background[:, None]
    return sensor(clean, noise, 8, seed + 2), pos


def max_matched_error(detections, truth) -> np.ndarray:
    """Per frame: the largest distance from a true target to its nearest detection (inf if the
    count differs)."""
    out = []
    for det, pos in zip(detections, truth):
        if len(det) != len(pos):
            out.append(np.inf)
            continue
        dist = np.linalg.norm(det[:, None, :2] - pos[None, :, :2], axis=2)
        out.append(dist.min(axis=0).max())
    return np.asarray(out)


# ------------------------------------------------------------------------------------------------
# Physics and derivatives
# ------------------------------------------------------------------------------------------------

def test_pixel_integral_derivative_matches_finite_differences():
    d = np.linspace(-4.0, 4.0, 161)
    h = 1e-6
    numeric = (pixel_integral_1d(d + h, 0.5) - pixel_integral_1d(d - h, 0.5)) / (2 * h)
    assert np.abs(physfit.pixel_integral_derivative_1d(d, 0.5) - numeric).max() < 1e-8
    assert physfit.pixel_integral_derivative_1d(0.3, 0.5) < 0 < physfit.pixel_integral_derivative_1d(-0.3, 0.5)


def test_render_with_jacobian_matches_render_batch_and_finite_differences():
    pos, b = groups(4, 3, seed=0)
    x, y = pos[..., 0], pos[..., 1]
    frames, jac = physfit.render_with_jacobian(x, y, b)
    assert np.abs(frames - render_batch(x, y, b)).max() < 1e-10
    assert jac.shape == (4, 121, 9)
    theta = np.concatenate([x, y, b], axis=1)
    h = 1e-6
    for j in range(9):
        plus, minus = theta.copy(), theta.copy()
        plus[:, j] += h
        minus[:, j] -= h
        numeric = (render_batch(plus[:, :3], plus[:, 3:6], plus[:, 6:]) -
                   render_batch(minus[:, :3], minus[:, 3:6], minus[:, 6:])) / (2 * h)
        scale = np.abs(numeric).max()
        assert np.abs(jac[:, :, j] - numeric.reshape(4, 121)).max() < 1e-6 * scale, j


@pytest.mark.parametrize("censoring, prior, background", [("tobit", 0.0, "none"), ("hard", 0.0, "none"),
                                                         ("tobit", 0.01, "none"), ("hard", 0.01, "constant"),
                                                         ("tobit", 0.0, "constant"), ("tobit", 0.01, "smooth")])
def test_window_gradient_matches_finite_differences(censoring, prior, background):
    """g = J^T r of the whitened, censored, moving-group cost equals half its numerical gradient
    (checks the motion and background columns, the one-sided residuals and the prior rows together)."""
    windows, pos = trajectories(3, 4, noise=2.0, seed=3)
    s = settings_for(8, 2.0, censoring=censoring, group_prior_sd=prior, motion_order=2, background=background)
    assert (windows >= 255).any() and (windows <= 0).any()  # both censoring sides are exercised
    k = 4
    data = torch.from_numpy(windows.reshape(3, -1))
    high, low = censor_masks(data, s)
    problem = Problem(data, high, low, k, motion_basis(5, 2), s)
    mid = pos[:, 2]
    rng = np.random.default_rng(0)
    theta = np.concatenate([mid[..., 0] + 0.02, mid[..., 1] - 0.01, np.full((3, k), 230.0),
                            rng.normal(0, 0.03, (3, 4)), np.full((3, s.n_background), 1.5)], axis=1)
    theta = torch.from_numpy(theta)
    problem = problem.with_prior(assign_directions(torch.stack([theta[:, :k], theta[:, k:2 * k]], dim=2), s))
    cost, a, g = evaluate(problem, theta)
    h = 1e-6
    for j in range(theta.shape[1]):
        step = torch.zeros_like(theta)
        step[:, j] = h
        numeric = (evaluate(problem, theta + step, False)[0] -
                   evaluate(problem, theta - step, False)[0]) / (4 * h)
        assert torch.allclose(g[:, j], numeric, rtol=1e-5, atol=1e-6 * cost.max().item()), j
    assert torch.all(torch.linalg.eigvalsh(a) > -1e-9)


# ------------------------------------------------------------------------------------------------
# Single-frame fits
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 3, 4])
def test_exact_recovery_on_float_frames(k):
    pos, b = groups(6, k, seed=10 + k)
    frames = render_batch(pos[..., 0], pos[..., 1], b)
    result = fit_frames_detailed(frames, settings_for(0))
    assert np.all(result.k == k)
    for det, bright, true_pos, true_b in zip(result.detections, result.brightness, pos, b):
        dist = np.linalg.norm(det[:, None, :2] - true_pos[None], axis=2)
        match = dist.argmin(axis=0)
        assert sorted(match) == list(range(k))
        assert dist.min(axis=0).max() < 1e-3
        assert np.abs(bright[match] / true_b - 1.0).max() < 1e-3
        assert np.all((det[:, 2] > 0) & (det[:, 2] <= 1)) and np.all(np.diff(det[:, 2]) <= 0)


def test_saturation_aware_fit_beats_naive_fit():
    pos, b = groups(12, 4, seed=21)
    b = b + 15.0  # 235-265: every frame saturates at its centre
    clean = render_batch(pos[..., 0], pos[..., 1], b)
    frames = np.minimum(clean, 255.0)  # clipped at full scale, otherwise exact
    assert np.all((frames >= 255.0).reshape(12, -1).sum(axis=1) >= 1)
    base = settings_for(0, k_min=4, k_max=4, brightness_max=275.0)
    aware = dataclasses.replace(base, full_scale=255.0)
    naive = dataclasses.replace(aware, saturation_aware=False)
    err_aware = max_matched_error(fit_frames(frames, aware), pos)
    err_naive = max_matched_error(fit_frames(frames, naive), pos)
    assert err_aware.max() < 1e-3
    assert np.median(err_naive) > 0.01
    assert np.median(err_naive) > 20 * np.median(err_aware)


def test_saturation_aware_fit_beats_naive_fit_on_8bit_frames():
    pos, b = groups(40, 4, seed=22)
    frames = sensor(render_batch(pos[..., 0], pos[..., 1], b + 10.0), 0.0, 8, seed=0)
    settings = settings_for(8, k_min=4, k_max=4, group_prior_sd=0.01)
    err_aware = max_matched_error(fit_frames(frames, settings), pos)
    err_naive = max_matched_error(fit_frames(frames, settings, saturation_aware=False), pos)
    assert np.mean(err_aware) < 0.5 * np.mean(err_naive)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_k_selection_on_noisy_8bit_frames(k):
    pos, b = groups(50, k, seed=30 + k)
    frames = sensor(render_batch(pos[..., 0], pos[..., 1], b), 2.0, 8, seed=k)
    result = fit_frames_detailed(frames, settings_for(8, 2.0))
    assert np.mean(result.k == k) >= 0.9
    assert result.bic.shape == (50, 5) and list(result.k_values) == [1, 2, 3, 4, 5]


def test_group_prior_improves_noisy_fits():
    pos, b = groups(40, 3, seed=41)
    frames = sensor(render_batch(pos[..., 0], pos[..., 1], b), 2.0, 8, seed=1)
    settings = settings_for(8, 2.0, k_min=3, k_max=3)
    plain = max_matched_error(fit_frames(frames, settings), pos)
    prior = max_matched_error(fit_frames(frames, settings, group_prior_sd=0.01), pos)
    assert np.median(prior) < np.median(plain)


# ------------------------------------------------------------------------------------------------
# Multi-frame windows
# ------------------------------------------------------------------------------------------------

def test_window_fit_beats_single_frame_fit_on_noisy_frames():
    windows, pos = trajectories(40, 3, noise=3.0, seed=50)
    settings = settings_for(8, 3.0)
    single = max_matched_error(fit_frames(windows[:, 2], settings), pos[:, 2])
    multi = fit_windows_detailed(windows, settings)
    err_multi = max_matched_error(multi.detections, pos[:, 2])
    assert np.mean(multi.k == 3) >= 0.9
    assert np.median(err_multi) < 0.8 * np.median(single)
    assert multi.params[3].shape == (40, 3 * 3 + 2)  # positions, brightness, velocity


def test_window_fit_recovers_velocity_exactly_on_float_frames():
    n, k = 3, 2
    pos0, b = groups(n, k, seed=60)
    t = np.arange(5) - 2.0
    v = np.array([0.04, -0.02])
    pos = pos0[:, None] + t[None, :, None, None] * v  # rigid motion, no drift
    clean = render_batch(pos[..., 0].reshape(-1, k), pos[..., 1].reshape(-1, k), np.repeat(b, 5, axis=0))
    result = fit_windows_detailed(clean.reshape(n, 5, 11, 11), settings_for(0))
    assert np.all(result.k == k)
    assert max_matched_error(result.detections, pos[:, 2]).max() < 1e-3
    assert np.abs(result.params[k][:, 3 * k:] - v).max() < 1e-4


def test_window_input_validation():
    with pytest.raises(ValueError):
        fit_windows(np.zeros((2, 4, 11, 11)))
    with pytest.raises(ValueError):
        fit_frames(np.zeros((2, 9, 9)))
    with pytest.raises(ValueError):
        physfit.PhysFitSettings(censoring="soft")


# ------------------------------------------------------------------------------------------------
# Proposals
# ------------------------------------------------------------------------------------------------

def test_greedy_pursuit_finds_separated_targets_first():
    truth = np.array([[[2.0, 3.0], [7.0, 8.0 + 1 / 3]]])
    frames = render_batch(truth[..., 0], truth[..., 1], np.array([[240.0, 200.0]]))
    atoms = physfit.greedy_pursuit(frames, PHI, 3, full_scale=None)
    assert atoms.shape == (1, 3, 3)
    assert np.allclose(atoms[0, :2, :2], truth[0], atol=1e-9)
    assert np.allclose(atoms[0, :2, 2], [240.0, 200.0], rtol=1e-6)


def test_greedy_pursuit_masks_saturated_pixels():
    pos, b = groups(5, 4, seed=70)
    frames = np.minimum(render_batch(pos[..., 0], pos[..., 1], b + 20.0), 255.0)
    atoms = physfit.greedy_pursuit(frames, PHI, 4, full_scale=255.0)
    centroid = pos.mean(axis=1)
    assert np.all(np.linalg.norm(atoms[:, 0, :2] - centroid, axis=1) < 0.6)


def test_starts_from_hr_maps_orders_peaks_and_feeds_the_fit():
    grid = Grid()
    hr = np.zeros((1, 33, 33))
    hr[0, 10, 10], hr[0, 10, 11], hr[0, 20, 5] = 100.0, 90.0, 80.0  # (10, 11) is not a local peak
    starts = physfit.starts_from_hr_maps(hr, grid, 3)
    assert np.allclose(starts[0, :, :2], grid.to_lr_coordinate(np.array([[10, 10], [20, 5], [10, 11]])))
    assert np.allclose(starts[0, :, 2], [100.0, 80.0, 90.0])
    pos, b = groups(4, 2, seed=80)
    frames = render_batch(pos[..., 0], pos[..., 1], b)
    hr_maps = np.zeros((4, 33, 33))
    for f in range(4):
        cells = grid.to_hr_index(pos[f])
        hr_maps[f, cells[:, 0], cells[:, 1]] = b[f]
    proposals = physfit.starts_from_hr_maps(hr_maps, grid, 5)
    settings = settings_for(0, use_pursuit=False, template_radius=0.0, random_starts=0)
    result = fit_frames_detailed(frames, settings, starts=proposals)
    assert np.all(result.k == 2)
    assert max_matched_error(result.detections, pos).max() < 1e-3


def test_scores_rank_ambiguous_fits_lower():
    """Clean float frames give scores near 1; noisy ones with competing solutions lower."""
    pos, b = groups(20, 3, seed=90)
    clean = render_batch(pos[..., 0], pos[..., 1], b)
    exact = fit_frames(clean, settings_for(0))
    noisy = fit_frames(sensor(clean, 5.0, 8, seed=2), settings_for(8, 5.0))
    exact_scores = np.concatenate([d[:, 2] for d in exact])
    noisy_scores = np.concatenate([d[:, 2] for d in noisy])
    assert exact_scores.min() > 0.95
    assert np.median(noisy_scores) < np.median(exact_scores)


def test_blocks_aliases_and_empty_input_give_consistent_results():
    pos, b = groups(7, 2, seed=100)
    frames = sensor(render_batch(pos[..., 0], pos[..., 1], b), 2.0, 8, seed=3)
    settings = settings_for(8, 2.0)
    whole = fit_frames_detailed(frames, settings)
    blocks = fit_frames_detailed(frames, settings, block_size=3)
    assert np.array_equal(whole.k, blocks.k)
    for a, c in zip(whole.detections, blocks.detections):
        assert np.allclose(a, c, atol=1e-9)
    aliased = fit_frames_detailed(frames, settings, k_range=(2, 3), sigma=0.5)
    assert list(aliased.k_values) == [2, 3]
    assert fit_frames(np.zeros((0, 11, 11)), settings) == []


# ------------------------------------------------------------------------------------------------
# Grid and Phi from the physics object: c = 3 and c = 5
# ------------------------------------------------------------------------------------------------

def test_fits_need_the_physics_phi_of_the_right_size():
    frames = np.zeros((1, 11, 11))
    with pytest.raises(ValueError, match="needs phi"):
        physfit.fit_frames(frames, settings_for(8))
    with pytest.raises(ValueError, match="9x9 frames"):
        physfit.fit_frames(frames, settings_for(8), phi=build_phi_closed_form(9, 3, 0.5))
    assert physfit.fit_frames(frames, settings_for(8, use_pursuit=False)) is not None


@pytest.mark.parametrize("c", [3, 5])
def test_pursuit_and_map_starts_use_the_grid_of_phi(c):
    """Targets on HR cell centres of a c-grid are found exactly by the pursuit on that grid's Phi,
    and HR-map peaks are read on the same grid."""
    grid = Grid(11, c)
    cells = np.array([[2 * c + 1, 3 * c], [7 * c, 8 * c + 1]])
    truth = grid.to_lr_coordinate(cells)[None]
    frames = render_batch(truth[..., 0], truth[..., 1], np.array([[240.0, 200.0]]))
    atoms = physfit.greedy_pursuit(frames, build_phi_closed_form(11, c, 0.5), 2, full_scale=None)
    assert np.allclose(atoms[0, :, :2], truth[0], atol=1e-9)
    hr = np.zeros((1, grid.hr_size, grid.hr_size))
    hr[0, cells[:, 0], cells[:, 1]] = [240.0, 200.0]
    starts = physfit.starts_from_hr_maps(hr, grid, 2)
    assert np.allclose(starts[0, :, :2], truth[0])
    with pytest.raises(ValueError, match="cells"):
        physfit.starts_from_hr_maps(hr, Grid(11, 3 if c == 5 else 5), 2)


@pytest.mark.parametrize("c", [3, 5])
def test_method_on_a_physics_object_of_any_c(c):
    """The registered method reads Phi, grid and sensor from the physics object: continuous
    detections at c = 3 and c = 5 alike, and an HR map on the physics' grid."""
    grid = Grid(11, c)
    phi = build_phi_closed_form(11, c, 0.5)
    physics = PhysicsOperator(phi, np.zeros((grid.n_hr, grid.n_lr)), Sensor(bit_depth=8))
    windows, pos = trajectories(6, 3, noise=0.0, seed=120)
    model = get_model("physfit", physics)
    output = model(torch.from_numpy(windows).float())
    assert output.hr.shape == (6, grid.hr_size, grid.hr_size)
    assert model.settings.full_scale == 255.0 and model.settings.psf_sigma == 0.5
    assert np.median(max_matched_error(output.detections, pos[:, 2])) < 0.02
    assert np.isclose(output.hr.sum().item(), sum(b.sum() for b in output.extras["brightness"]), rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Background level
# ------------------------------------------------------------------------------------------------

def test_constant_background_is_fitted_jointly():
    """Targets on a level of 30 counts: the background model recovers positions and the level;
    without it the level is explained by spurious targets and brightness."""
    windows, pos = trajectories(12, 3, noise=0.0, seed=140)
    lifted = np.clip(windows + 30.0, 0.0, 255.0)  # more pixels saturate than without the level
    with_level = fit_windows_detailed(lifted, settings_for(8, background="constant"))
    assert np.all(with_level.k == 3)
    assert np.median(max_matched_error(with_level.detections, pos[:, 2])) < 0.03
    levels = np.array([with_level.params[k][i, -1] for i, k in enumerate(with_level.k)])
    np.testing.assert_allclose(levels, 30.0, atol=0.5)
    without = fit_windows_detailed(lifted, settings_for(8))
    assert np.mean(without.k == 3) < np.mean(with_level.k == 3)
    with pytest.raises(ValueError, match="background"):
        settings_for(8, background="plane")


def clutter_windows(n: int, k: int, seed: int):
    """8-bit windows of moving groups on the simulator's structured clutter (mean level 10-40,
    std 6 counts, correlation length 2 px; the same field in every frame of a window)."""
    field = clutter_backgrounds(ClutterConfig((10.0, 40.0), 6.0, 2.0), n, 11, np.random.default_rng(seed))
    windows, pos = trajectories(n, k, noise=0.0, seed=seed, background=field)
    return windows, pos, field


def test_background_basis_spans_the_polynomials_of_its_degree():
    basis = background_basis(11, 3)
    assert basis.shape == (121, 10) and torch.all(basis[:, 0] == 1.0)
    u = np.linspace(-1.0, 1.0, 11)
    surface = (2.0 + u[:, None] ** 2 * u[None, :] - 0.5 * u[None, :] ** 3).reshape(-1)  # degree 3
    coefficients = np.linalg.lstsq(basis.numpy(), surface, rcond=None)[0]
    np.testing.assert_allclose(basis.numpy() @ coefficients, surface, atol=1e-10)
    assert background_basis(11, 0).shape == (121, 1)


def test_background_start_ignores_the_targets():
    """The robust start of a smooth background fits the clutter, not the group on it."""
    windows, _, field = clutter_windows(6, 3, seed=150)
    smooth = settings_for(8, background="smooth")
    coefficients, surface = background_start(windows[:, 2], smooth)
    assert coefficients.shape == (6, 45) and surface.shape == (6, 121)
    error = np.abs(surface - field.reshape(6, -1)).mean()
    naive = np.abs(background_start(windows[:, 2], smooth, passes=1)[1] - field.reshape(6, -1)).mean()
    assert error < 2.0 and error < naive / 3  # the field's std is 6 counts
    assert background_start(windows[:, 2], settings_for(8))[0].shape == (6, 0)


def test_smooth_background_fits_structured_clutter():
    """On clutter the smooth surface recovers the group where a constant level cannot: the
    structure it leaves pulls the targets (median worst error about 0.03 px against 0.2 px)."""
    windows, pos, _ = clutter_windows(10, 3, seed=160)
    smooth = fit_windows_detailed(windows, settings_for(8, background="smooth"))
    constant = fit_windows_detailed(windows, settings_for(8, background="constant"))
    assert np.mean(smooth.k == 3) >= 0.8
    assert np.median(max_matched_error(smooth.detections, pos[:, 2])) < 0.05  # the first AP threshold
    assert np.median(max_matched_error(constant.detections, pos[:, 2])) > 0.1
    auto = fit_windows_detailed(windows, settings_for(8, background="auto"))
    assert [len(d) for d in auto.detections] == [len(d) for d in smooth.detections]


# ------------------------------------------------------------------------------------------------
# Scene priors and robustness: K beyond the training range, backgrounds, brightness, PSF width
# ------------------------------------------------------------------------------------------------

def scene_priors(**fields) -> ScenePriors:
    """Priors as the priors stage measures them on the default training split."""
    base = dict(brightness_low=220.3, brightness_high=249.7, k_min=2, k_max=4, spread=0.306, separation=0.434,
                cross_deviation=0.0019, psf_sigma=0.5, background=0.0, frames=1000, targets=3000)
    return ScenePriors(**{**base, **fields})


def test_settings_for_scene_take_the_scene_from_the_priors_only():
    s = physfit.PhysFitSettings.for_scene(Sensor(), scene_priors(k_max=6, spread=0.2), k_limit=8)
    assert (s.brightness_min, s.brightness_max) == (220.3, 249.7)
    assert s.brightness_limits == pytest.approx((220.3 / 4, 249.7 * 4))
    assert (s.k_max, s.k_top, s.template_radius) == (6, 8, 0.2)  # more than seen in training: where K = 6 wins
    assert (physfit.PhysFitSettings.for_scene(Sensor(), scene_priors(k_max=6)).k_top) == 7
    assert s.dim_brightness == pytest.approx(110.15)
    assert physfit.PhysFitSettings.for_scene(Sensor(), scene_priors(k_max=8), k_limit=8).k_max == 8
    assert (s.group_prior_sd, s.group_radius, s.group_radius_sd) == (0.01 * 0.2, 0.2, 0.2)  # a floored cross
    crosses = physfit.PhysFitSettings.for_scene(Sensor(), scene_priors(cross_deviation=0.02))
    assert crosses.group_prior_sd == 0.02
    assert physfit.PhysFitSettings.for_scene(Sensor(), scene_priors(cross_deviation=0.1)).group_prior_sd == 0.0
    with pytest.raises(ValueError, match="brightness_headroom"):
        physfit.PhysFitSettings.for_scene(Sensor(), scene_priors(), brightness_headroom=0.5)
    with pytest.raises(ValueError, match="k_limit"):
        settings_for(8, k_max=5, k_limit=4)


def test_the_group_prior_is_freed_where_the_groups_are_no_crosses():
    """Groups of three at random in a 0.4 px disc against a stiff cross prior: the prior's fits
    are rejected and refitted without it, which finds the groups; on crosses the prior is kept."""
    rng = np.random.default_rng(171)
    n = 6
    angle, radius = rng.uniform(0, 2 * np.pi, (n, 3)), 0.4 * np.sqrt(rng.uniform(0.3, 1.0, (n, 3)))
    pos = rng.uniform(4.0, 6.0, (n, 1, 2)) + radius[..., None] * np.stack([np.cos(angle), np.sin(angle)], axis=2)
    frames = np.clip(np.round(render_batch(pos[..., 0], pos[..., 1], rng.uniform(220, 250, (n, 3)))), 0, 255)
    crossed = settings_for(8, group_prior_sd=0.003, group_radius=0.3, group_radius_sd=0.3)
    result = fit_frames_detailed(frames, crossed)
    assert np.all(result.k == 3)
    assert np.median(max_matched_error(result.detections, pos)) < 0.03
    stiff_only = fit_frames_detailed(frames, crossed, relax_misfit=1e12)  # never freed
    assert np.median(max_matched_error(stiff_only.detections, pos)) > 0.05
    cross_pos, b = groups(n, 3, seed=172)
    on_crosses = fit_frames_detailed(np.clip(np.round(render_batch(cross_pos[..., 0], cross_pos[..., 1], b)), 0, 255),
                                     crossed)
    assert np.median(max_matched_error(on_crosses.detections, cross_pos)) < 0.01


def test_groups_beyond_the_cross_are_held_to_the_rose():
    """Six targets on six of the eight rose arms (more than the cross holds) in 8-bit windows:
    with the arms refined once they are found within 0.02 px (of the 28 six-arm templates, the
    ``max_starts`` that explain a frame best are fitted); freed (no refinement) the saturated core
    leaves them 0.1-0.2 px off."""
    k = 6
    windows, pos = trajectories(6, k, noise=0.0, seed=5, arms=np.asarray(refine_directions(COMPASS_DIRECTIONS)))
    crossed = settings_for(8, group_prior_sd=0.003, group_radius=0.3, group_radius_sd=0.3, k_max=4, k_limit=7)
    rose_fit = fit_windows_detailed(windows, crossed)
    assert np.all(rose_fit.k == k)
    assert np.median(max_matched_error(rose_fit.detections, pos[:, 2])) < 0.02
    free_fit = fit_windows_detailed(windows, crossed, arm_refinements=0)
    assert np.median(max_matched_error(free_fit.detections, pos[:, 2])) > 0.05


def test_the_prior_arms_refine_with_the_count():
    s = settings_for(8, group_prior_sd=0.01)
    rose = refine_directions(COMPASS_DIRECTIONS)
    assert [s.arms(k) for k in (1, 2, 4)] == [None, COMPASS_DIRECTIONS, COMPASS_DIRECTIONS]
    assert s.arms(5) == s.arms(8) == rose and s.arms(9) is None
    assert dataclasses.replace(s, arm_level=1).arms(3) == rose  # the fallback of rejected crosses
    assert dataclasses.replace(s, arm_refinements=0).arms(5) is None
    assert settings_for(8).arms(3) is None  # no prior, no arms
    with pytest.raises(ValueError, match="arm_level"):
        settings_for(8, arm_level=2)
    with pytest.raises(ValueError, match="max_starts"):
        settings_for(8, max_starts=0)


def test_counts_above_k_max_are_tried_where_the_largest_k_wins():
    """Five targets on float frames (a cross of 0.45 px with one in its middle) with K tried to 3
    and up to 6 beyond: the count is found and every target within 0.1 px; the extension is not
    fitted for frames whose best K is below the largest tried."""
    pos, b = groups(6, 4, seed=150, radius=0.45)
    extra = pos.mean(axis=1, keepdims=True)  # a fifth target in the middle of the cross
    pos = np.concatenate([pos, extra], axis=1)
    b = np.concatenate([b, b[:, :1]], axis=1)
    frames = render_batch(pos[..., 0], pos[..., 1], b)
    s = settings_for(0, k_max=3, k_limit=6)
    result = fit_frames_detailed(frames, s)
    assert list(result.k_values) == [1, 2, 3, 4, 5, 6]
    assert np.all(result.k == 5)
    assert np.max(max_matched_error(result.detections, pos)) < 0.1
    pos2, b2 = groups(4, 2, seed=151)
    two = fit_frames_detailed(render_batch(pos2[..., 0], pos2[..., 1], b2), s)
    assert np.all(two.k == 2) and np.all(np.isinf(two.chi2[:, 3:]))


def test_auto_background_fits_a_level_only_where_there_is_one():
    windows, pos = trajectories(8, 3, noise=0.0, seed=160)
    lifted = windows.copy()
    lifted[4:] = np.clip(lifted[4:] + 25.0, 0.0, 255.0)
    result = fit_windows_detailed(lifted, settings_for(8, background="auto"))
    assert np.all(result.k == 3)
    assert np.median(max_matched_error(result.detections, pos[:, 2])) < 0.03
    motion = 2 * physfit.PhysFitSettings().motion_order
    surfaces = np.stack([background_basis(11, 8).numpy() @ result.params[k][i, 3 * k + motion:]
                         for i, k in enumerate(result.k)])  # no background: padded with zeros
    np.testing.assert_allclose(surfaces[:4], 0.0)
    np.testing.assert_allclose(surfaces[4:], 25.0, atol=0.5)


def test_dim_targets_are_fitted_beyond_the_brightness_box_when_the_data_demand_it():
    """Brightness 132-150 against a 220-250 box: the box alone cannot fit them; with the wider
    limits the rejected fits are redone: the count, and most positions, come out right."""
    windows, pos = trajectories(6, 3, noise=0.0, seed=170)
    dim = np.clip(np.round(windows * 0.6), 0.0, 255.0)  # every brightness x 0.6: 132-150
    boxed = settings_for(8, brightness_min=220.0, brightness_max=250.0)
    relaxed = dataclasses.replace(boxed, brightness_limits=(55.0, 1000.0))
    box_only = fit_windows_detailed(dim, boxed)
    result = fit_windows_detailed(dim, relaxed)
    assert np.all(result.k == 3)
    error, box_error = (max_matched_error(r.detections, pos[:, 2]) for r in (result, box_only))
    assert np.median(error) < 0.06 and np.mean(error < 0.1) >= 0.8
    assert np.mean(box_error < 0.1) < np.mean(error < 0.1)


def test_dim_detections_rank_below_plausible_ones():
    windows, _ = trajectories(4, 3, noise=0.0, seed=175)
    plain = fit_windows_detailed(windows, settings_for(8))
    ranked = fit_windows_detailed(windows, settings_for(8, dim_brightness=1000.0))  # every target "dim"
    for a, b, bright in zip(plain.detections, ranked.detections, ranked.brightness):
        order_a, order_b = np.argsort(a[:, 0]), np.argsort(b[:, 0])  # the same targets, maybe reordered
        np.testing.assert_allclose(b[order_b, 2], a[order_a, 2] * (bright[order_b] / 1000.0) ** 2, rtol=1e-9)


def test_psf_calibration_finds_a_wider_psf_and_keeps_the_right_one():
    pos, b = groups(32, 3, seed=180)
    make = lambda sigma: np.clip(np.round(render_batch(pos[..., 0], pos[..., 1], b, 11, sigma)), 0, 255)[:, None]
    s = settings_for(8, calibration_windows=16)
    assert physfit.calibrate_psf(make(0.5), s, phi=PHI, multi_frame=False) == 0.5
    assert physfit.calibrate_psf(make(0.55), s, phi=PHI, multi_frame=False) == pytest.approx(0.55, abs=0.01)


def test_method_uses_the_priors_and_reports_its_psf(physics3):
    method = get_model("physfit", physics3, priors=scene_priors(), multi_frame=False, k_limit=6,
                       psf_calibration=True, calibration_windows=4)
    assert method.settings.brightness_min == 220.3 and method.settings.k_top == 6
    windows, _ = trajectories(4, 2, noise=0.0, seed=190)
    out = method(torch.from_numpy(windows).float())
    assert method.calibrated_sigma == 0.5 and out.extras["psf_sigma"] == 0.5


def test_ring_starts_cover_counts_beyond_the_cross():
    """Six targets evenly on a 0.45 px ring (more than the four arms of the cross): the ring
    templates start a fit that finds all six, each within 0.1 px, without any random start."""
    angle = 2 * np.pi * np.arange(6) / 6 + 0.3
    centre = np.array([[5.1, 4.8], [4.7, 5.3], [5.4, 5.6]])
    pos = centre[:, None, :] + 0.45 * np.stack([np.cos(angle), np.sin(angle)], axis=1)[None]
    frames = render_batch(pos[..., 0], pos[..., 1], np.full((3, 6), 235.0))
    s = settings_for(0, k_max=4, k_limit=7, random_starts=0, template_radius=0.45, brightness_min=200.0)
    result = fit_frames_detailed(frames, s)
    assert np.all(result.k == 6)
    assert np.max(max_matched_error(result.detections, pos)) < 0.1
    with pytest.raises(ValueError, match="ring_rotations"):
        settings_for(8, ring_rotations=-1)


def test_rough_starts_then_the_joint_fit():
    """Single-frame starts stopped after a few iterations still end, after the joint fit, on the
    exact positions of float windows."""
    windows, pos = trajectories(6, 3, noise=0.0, seed=200)
    clean = fit_windows_detailed(windows, settings_for(8, start_lm_iterations=5))
    assert np.all(clean.k == 3)
    assert np.median(max_matched_error(clean.detections, pos[:, 2])) < 0.03
    with pytest.raises(ValueError, match="start_lm_iterations"):
        settings_for(8, start_lm_iterations=0)
