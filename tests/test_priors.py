"""Scene priors of the training split (pipeline/priors.py, stage priors) and the stress config."""
import dataclasses
import itertools

import numpy as np
import pandas as pd
import pytest

from pipeline.config import ConfigError
from pipeline.settings import SimulateConfig, StressConfig
from pipeline.data import load_split_tables
from pipeline.priors import (COMPASS_DIRECTIONS, ScenePriors, best_crosses, cross_deviations, estimate_priors,
                             estimate_psf_sigma, refine_directions)
from pipeline.sensor import Sensor
from pipeline.simulate import simulate


def training_split(section: dict, sensor: Sensor):
    frames, targets = simulate(SimulateConfig.from_section(section), sensor)
    split = pd.DataFrame({"trajectory": np.arange(section["trajectories"]), "split": "train"})
    return load_split_tables(frames, targets, split, "train")


def test_priors_measure_the_simulated_scenes(small_simulate, sensor):
    priors = estimate_priors(training_split(small_simulate, sensor), sensor, psf_frames=64)
    low, high = small_simulate["brightness"]
    assert low <= priors.brightness_low < priors.brightness_high <= high
    assert small_simulate["k_min"] <= priors.k_min <= priors.k_max <= small_simulate["k_max"]
    assert 0.2 < priors.spread < 0.4 and priors.separation == pytest.approx(0.3 * np.sqrt(2), abs=0.02)
    assert priors.psf_sigma == pytest.approx(sensor.psf_sigma, abs=2e-3)
    assert priors.background == 0.0 and priors.frames == 12 * small_simulate["frames"]
    assert priors.cross_deviation < 0.01  # compass arms; only the outward drift bends them


def test_priors_follow_a_shifted_scene(small_simulate, sensor):
    """Other brightness, more targets, a wider PSF and a background: each shows in the priors."""
    shifted = {**small_simulate, "brightness": [120.0, 160.0], "k_min": 5, "k_max": 6, "background": "clutter",
               "clutter": {"level": [20.0, 30.0], "amplitude": 0.0, "correlation": 2.0}}
    wide = dataclasses.replace(sensor, psf_sigma=0.55)
    priors = estimate_priors(training_split(shifted, wide), wide, psf_frames=64)
    assert 120.0 <= priors.brightness_low < priors.brightness_high <= 160.0
    assert priors.k_min >= 5 and priors.k_max <= 6
    assert priors.psf_sigma == pytest.approx(0.55, abs=5e-3)
    assert 20.0 <= priors.background <= 30.0
    disc = estimate_priors(training_split({**small_simulate, "layout": "disc", "distance": 0.5}, sensor), sensor,
                           psf_frames=16)
    assert disc.cross_deviation > 0.1 * disc.spread  # groups at random in a disc are no crosses


def test_cross_deviation_is_the_distance_from_the_best_compass_cross():
    point = np.array([4.0, 6.0])
    cross = point + 0.3 * np.array([[-1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # up, right, down
    bent = cross + np.array([[0.0, 0.03], [0.0, 0.0], [0.0, 0.0]])  # one target 0.03 px off its arm
    angles = np.radians([90.0, 210.0, 330.0])
    triangle = point + 0.3 * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # 120 degrees apart
    deviation = cross_deviations(np.stack([cross, bent]))
    assert deviation[0] == pytest.approx(0.0, abs=1e-12) and 0.005 < deviation[1] < 0.03
    assert cross_deviations(triangle[None])[0] > 0.05  # no three compass arms are 120 degrees apart


def test_the_rose_adds_the_bisectors():
    rose = np.asarray(refine_directions(COMPASS_DIRECTIONS))
    assert rose.shape == (8, 2) and np.allclose(np.linalg.norm(rose, axis=1), 1.0)
    assert np.allclose(rose[:4], COMPASS_DIRECTIONS)
    angles = np.sort(np.degrees(np.arctan2(rose[:, 1], rose[:, 0])))
    assert np.allclose(np.diff(angles), 45.0)
    assert len(refine_directions(rose)) == 16


def _exhaustive_deviation(positions: np.ndarray, directions) -> np.ndarray:
    """Reference: least squares over every ordered choice of directions (r >= 0)."""
    dirs = np.asarray(directions)
    k = positions.shape[1]
    centred = positions - positions.mean(axis=1, keepdims=True)
    best = np.full(len(positions), np.inf)
    for choice in itertools.permutations(range(len(dirs)), k):
        d = dirs[list(choice)] - dirs[list(choice)].mean(axis=0)
        overlap = np.einsum("nki,ki->n", centred, d).clip(min=0.0)
        best = np.minimum(best, (centred ** 2).sum(axis=(1, 2)) - overlap ** 2 / (d ** 2).sum())
    return np.sqrt(best / k)


@pytest.mark.parametrize("arms", [4, 8])
def test_best_crosses_match_the_exhaustive_search_on_crosses(arms):
    """Near-cross groups (0.02 px jitter) of every count: the ordered search finds the exhaustive
    optimum, and the arm each target was placed on (jitter may favour swapping two adjacent rose
    arms in a rare group)."""
    directions = COMPASS_DIRECTIONS if arms == 4 else refine_directions(COMPASS_DIRECTIONS)
    dirs = np.asarray(directions)
    rng = np.random.default_rng(arms)
    for k in range(3, min(arms, 6) + 1):
        choice = np.argsort(rng.random((200, arms)), axis=1)[:, :k]
        positions = rng.uniform(3.0, 7.0, (200, 1, 2)) + 0.3 * dirs[choice] + rng.normal(0.0, 0.02, (200, k, 2))
        deviation, assigned = best_crosses(positions, directions)
        assert np.allclose(deviation, _exhaustive_deviation(positions, directions), atol=1e-12)
        assert np.mean(np.isclose(assigned, dirs[choice]).all(axis=(1, 2))) >= 0.99  # adjacent rose arms may swap
    with pytest.raises(ValueError, match="holds 2 to 4"):
        best_crosses(np.zeros((1, 5, 2)))


def test_psf_fit_ignores_clipped_pixels(sensor):
    from pipeline.physics import render_batch
    x, y, b = np.full((4, 1), 5.2), np.full((4, 1), 4.9), np.full((4, 1), 900.0)  # saturates the centre
    frames = np.clip(np.round(render_batch(x, y, b, 11, 0.5)), 0, 255)
    assert estimate_psf_sigma(frames, x, y, b, sensor) == pytest.approx(0.5, abs=2e-3)


def test_priors_json_errors_name_the_file():
    given = ScenePriors(220.0, 250.0, 2, 4, 0.3, 0.42, 0.002, 0.5, 0.0, 10, 30).to_dict()
    assert ScenePriors.from_dict(given) == ScenePriors(**given)
    with pytest.raises(ConfigError, match="reports/priors.json: missing scene prior"):
        ScenePriors.from_dict({k: v for k, v in given.items() if k != "spread"}, "reports/priors.json")
    with pytest.raises(ConfigError, match="k_max = 'x'"):
        ScenePriors.from_dict({**given, "k_max": "x"})
    with pytest.raises(ConfigError, match="brightness_low"):
        ScenePriors.from_dict({**given, "brightness_low": 300.0})
    for name, bad in (("psf_sigma", -0.5), ("psf_sigma", 0.0), ("separation", -0.1), ("frames", 0)):
        with pytest.raises(ConfigError, match=rf"reports/priors.json: scene prior {name} = .* must be"):
            ScenePriors.from_dict({**given, name: bad}, "reports/priors.json")


def test_stress_shifts_are_checked_simulate_variants(params):
    section = {**params["stress"], "shifts": {"dim": {"simulate": {"brightness": [120.0, 255.0]}},
                                              "wide": {"sensor": {"psf_sigma": 0.55}}}}
    config = StressConfig.from_section(section, methods=list(params["methods"]))
    (dim, scene, recorder), (_, wide_scene, wide) = config.scenes(params["simulate"], params["sensor"])
    assert dim == "dim" and scene.brightness == (120.0, 255.0) and scene.seed == config.seed
    assert scene.trajectories == config.trajectories and recorder == params["sensor"]
    assert wide["psf_sigma"] == 0.55 and wide_scene.brightness == tuple(params["simulate"]["brightness"])
    bad = {**section, "shifts": {"dim": {"simulate": {"brightnes": [1.0, 2.0]}}}}
    with pytest.raises(ConfigError, match="stress.shifts.dim.simulate.brightnes"):
        StressConfig.from_section(bad).scenes(params["simulate"], params["sensor"])
    with pytest.raises(ConfigError, match="stress.network"):
        StressConfig.from_section({**section, "network": "nope"}, methods=list(params["methods"]))
    with pytest.raises(ConfigError, match="stress.shifts.dim"):
        StressConfig.from_section({**section, "shifts": {"dim": {"scene": {}}}})


def test_stress_table_names_its_profile_and_rows():
    from pipeline.reports import stress_markdown

    config = StressConfig("srcnn", 4, 8, 23, (("dim", {}, {}),))
    row = {"shift": "dim", "windows": 8, "grid_oracle": 48.5, "physfit_psf_sigma": 0.5,
           "methods": {"physfit": {"cso_map": 91.234}, "srcnn": {"cso_map": 40.0}}}
    table = stress_markdown([row], {"physfit": "PhysFit", "srcnn": "SRCNN"}, "laptop", config)
    assert "laptop profile; 4 test trajectories" in table and "seed 23" in table
    assert "| dim | 8 | 48.50 | 91.23 | 40.00 | 0.500 |" in table
