import dataclasses

import numpy as np
import pandas as pd
import pytest

from pipeline.config import ConfigError
from pipeline.settings import SimulateConfig
from pipeline.io import DataFileError
from pipeline.physics import render
from pipeline.sensor import Sensor
from pipeline.simulate import simulate, simulate_arrays

SENSOR = Sensor()  # the default 8-bit saturating sensor of docs/design.md


def test_tables_follow_the_data_contract(small_simulate, sensor):
    frames, targets = simulate(small_simulate, sensor)
    assert list(frames.columns) == ["trajectory", "frame", "image", "n_targets"]
    assert list(targets.columns) == ["trajectory", "frame", "target", "x", "y", "brightness"]
    assert len(frames) == 12 * small_simulate["frames"]
    assert frames["image"].iat[0].shape == (121,) and frames["image"].iat[0].dtype == np.float32
    counts = targets.groupby(["trajectory", "frame"]).size().to_numpy()
    assert np.array_equal(counts, frames["n_targets"].to_numpy())


def test_same_params_same_bytes_and_seed_matters(small_simulate, sensor):
    a_frames, a_targets = simulate(small_simulate, sensor)
    b_frames, b_targets = simulate(small_simulate, sensor)
    assert np.array_equal(np.stack(a_frames["image"]), np.stack(b_frames["image"]))
    pd.testing.assert_frame_equal(a_targets, b_targets)
    c_frames, _ = simulate({**small_simulate, "seed": small_simulate["seed"] + 1}, sensor)
    assert not np.array_equal(np.stack(a_frames["image"]), np.stack(c_frames["image"]))


def test_counts_spacing_brightness_and_field_of_view(params, sensor):
    config = SimulateConfig.from_section({**params["simulate"], "trajectories": 200})
    sim = simulate_arrays(config, sensor)
    active = sim["active"][:, 0]  # (T, K)
    k = active.sum(axis=1)
    assert set(np.unique(k)) == set(range(config.k_min, config.k_max + 1))
    x, y = sim["x"], sim["y"]
    # targets start `distance` from the reference in distinct directions: gaps 0.3*sqrt(2) or 0.6
    gaps = np.hypot(x[:, 0, :, None] - x[:, 0, None, :], y[:, 0, :, None] - y[:, 0, None, :])
    pair = active[:, :, None] & active[:, None, :] & ~np.eye(config.k_max, dtype=bool)[None]
    assert np.allclose(np.unique(np.round(gaps[pair], 9)), [0.3 * np.sqrt(2), 0.6])
    brightness = sim["brightness"][sim["active"]]
    assert brightness.min() >= 220 and brightness.max() <= 250
    assert np.allclose(sim["brightness"], sim["brightness"][:, :1])  # constant along a trajectory
    assert x[sim["active"]].min() > -0.5 and x[sim["active"]].max() < sensor.frame_size - 0.5
    assert y[sim["active"]].min() > -0.5 and y[sim["active"]].max() < sensor.frame_size - 0.5


def _four_target_arrays(params, **changes):
    section = {**params["simulate"], "trajectories": 100, "k_min": 4, "k_max": 4, **changes}
    return SimulateConfig.from_section(section), simulate_arrays(SimulateConfig.from_section(section), SENSOR)


def test_reference_point_motion(params):
    config, sim = _four_target_arrays(params, drift_max=0.0)
    ref_x, ref_y = sim["x"].mean(2), sim["y"].mean(2)  # four opposite targets, no drift: the reference
    steps = np.diff(ref_x, axis=1)
    assert np.allclose(np.abs(steps), config.step)
    x0 = ref_x[:, 0]
    assert np.allclose(x0, np.round(x0)) and x0.min() >= 1 and x0.max() <= SENSOR.frame_size - 2
    assert np.all(np.sign(steps[:, 0]) == np.where(x0 < (SENSOR.frame_size - 1) / 2, 1, -1))
    assert np.all(np.abs(np.diff(ref_y, axis=1)) < 2 * config.step)  # a smooth curve


def test_outward_drift_per_frame(params):
    config, sim = _four_target_arrays(params)
    _, still = _four_target_arrays(params, drift_max=0.0)
    ref_x, ref_y = still["x"].mean(2), still["y"].mean(2)
    radius = np.hypot(sim["x"] - ref_x[..., None], sim["y"] - ref_y[..., None])
    assert np.allclose(radius[:, 0], config.distance)
    growth = np.diff(radius, axis=1)
    assert growth.min() >= -1e-12 and growth.max() <= config.drift_max + 1e-12
    assert growth.mean() == pytest.approx(config.drift_max / 2, rel=0.05)


def test_frames_render_continuous_positions_then_sensor(params, small_simulate):
    config = SimulateConfig.from_section(small_simulate)
    sim = simulate_arrays(config, Sensor(bit_depth=0))
    t, f = 3, 7
    targets = np.column_stack([sim["x"][t, f], sim["y"][t, f], sim["brightness"][t, f]])
    assert np.allclose(sim["images"][t, f], render(targets), atol=1e-4)
    eight_bit = simulate_arrays(config, SENSOR)["images"]
    assert np.array_equal(eight_bit, np.clip(np.round(sim["images"].astype(np.float64)), 0, 255))
    assert eight_bit.max() == 255  # 4-target groups saturate


def test_noise_is_added_with_the_configured_sigma(small_simulate):
    config = SimulateConfig.from_section(small_simulate)
    clean = simulate_arrays(config, Sensor(bit_depth=0))["images"]
    noisy = simulate_arrays(config, Sensor(bit_depth=0, noise_sigma=3.0))
    assert np.std(noisy["images"] - clean) == pytest.approx(3.0, rel=0.05)


def test_circle_radius_must_fit_the_path(small_simulate):
    with pytest.raises(ConfigError, match="simulate.circle_radius"):
        simulate({**small_simulate, "circle_radius": [1.0, 2.0]}, SENSOR)


def test_eight_target_variant_uses_diagonals(small_simulate):
    sim = simulate_arrays(SimulateConfig.from_section({**small_simulate, "k_min": 8, "k_max": 8}), SENSOR)
    assert sim["active"].all()
    angles = np.arctan2(sim["y"][:, 0] - sim["y"][:, 0].mean(1, keepdims=True),
                        sim["x"][:, 0] - sim["x"][:, 0].mean(1, keepdims=True))
    assert len(np.unique(np.round(angles, 6))) == 8


def test_config_object_is_accepted(small_simulate):
    config = SimulateConfig.from_section(small_simulate)
    frames, _ = simulate(dataclasses.replace(config, trajectories=2), SENSOR)
    assert frames["trajectory"].nunique() == 2


# ------------------------------------------------------------------------------------ backgrounds


def _arrays(section: dict, sensor: Sensor) -> dict:
    return simulate_arrays(SimulateConfig.from_section(section), sensor)


def test_background_draws_leave_the_scene_unchanged(small_simulate, sensor):
    """A zero clutter field gives the same bytes as no background: the background has its own
    random stream, so the scene (and a dataset without background) does not depend on it."""
    plain = _arrays(small_simulate, sensor)
    zero = _arrays({**small_simulate, "background": "clutter",
                    "clutter": {"level": [0.0, 0.0], "amplitude": 0.0, "correlation": 2.0}}, sensor)
    for key in ("x", "y", "brightness", "images"):
        np.testing.assert_array_equal(plain[key], zero[key])


def test_clutter_is_smooth_seeded_and_inside_its_level(small_simulate):
    float_sensor = Sensor(bit_depth=0)
    clutter = {"level": [20.0, 30.0], "amplitude": 5.0, "correlation": 2.0}
    section = {**small_simulate, "trajectories": 200, "background": "clutter", "clutter": clutter}
    with_background = _arrays(section, float_sensor)
    background = with_background["images"] - _arrays(small_simulate | {"trajectories": 200}, float_sensor)["images"]
    np.testing.assert_allclose(background, background[:, :1].repeat(background.shape[1], axis=1), atol=1e-4)
    field = background[:, 0]
    level = field.mean(axis=(1, 2))
    assert np.all((level >= 20.0 - 1e-3) & (level <= 30.0 + 1e-3)) and level.std() > 2.0
    np.testing.assert_allclose(field.std(axis=(1, 2)), 5.0, rtol=1e-3)
    neighbours = np.corrcoef(field[:, :, :-1].ravel(), field[:, :, 1:].ravel())[0, 1]
    assert neighbours > 0.8  # correlated over ~2 px, unlike white noise
    np.testing.assert_array_equal(with_background["images"], _arrays(section, float_sensor)["images"])


def test_image_backgrounds_are_crops_of_the_users_images(small_simulate, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(5)
    sources = [rng.integers(0, 60, (16, 20)).astype(np.uint8), rng.integers(0, 60, (30, 12)).astype(np.uint8)]
    for index, image in enumerate(sources):
        Image.fromarray(image).save(tmp_path / f"scene{index}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    float_sensor = Sensor(bit_depth=0)
    section = {**small_simulate, "background": "images", "background_dir": str(tmp_path)}
    background = (_arrays(section, float_sensor)["images"] - _arrays(small_simulate, float_sensor)["images"])[:, 0]
    crops = [np.lib.stride_tricks.sliding_window_view(image.astype(np.float32), (11, 11)).reshape(-1, 11, 11)
             for image in sources]
    crops = np.concatenate(crops)
    for field in background:
        assert np.abs(crops - field).max(axis=(1, 2)).min() < 1e-3


@pytest.mark.parametrize("damage, message", [
    (lambda folder: None, "no .png"),
    (lambda folder: folder.joinpath("small.png").write_bytes(_png(np.zeros((8, 30), np.uint8))), "small.png: 8x30"),
    (lambda folder: folder.joinpath("colour.png").write_bytes(_png(np.zeros((20, 20, 3), np.uint8))), "colour.png: a mode 'RGB'"),
    (lambda folder: folder.joinpath("broken.png").write_bytes(b"not a png"), "broken.png: not a readable image"),
])
def test_bad_background_folders_name_the_file(small_simulate, sensor, tmp_path, damage, message):
    damage(tmp_path)
    with pytest.raises(DataFileError, match=message):
        _arrays({**small_simulate, "background": "images", "background_dir": str(tmp_path)}, sensor)
    with pytest.raises(DataFileError, match="background folder not found"):
        _arrays({**small_simulate, "background": "images", "background_dir": str(tmp_path / "missing")}, sensor)


def test_image_background_needs_a_folder(small_simulate):
    with pytest.raises(ConfigError, match="simulate.background_dir = None is invalid"):
        SimulateConfig.from_section({**small_simulate, "background": "images", "background_dir": None})
    with pytest.raises(ConfigError, match="simulate.background = 'sky'"):
        SimulateConfig.from_section({**small_simulate, "background": "sky"})
    with pytest.raises(ConfigError, match="simulate.clutter.correlation"):
        SimulateConfig.from_section({**small_simulate, "clutter": {"level": [0, 1], "amplitude": 1.0, "correlation": 0}})


def _png(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_disc_layout_moves_only_the_targets(small_simulate, sensor):
    """layout: disc puts the targets anywhere within `distance` of the reference point (not on
    arms at a common radius); the trajectories, counts and brightness are those of the arms layout."""
    def arrays(**change):
        return simulate_arrays(SimulateConfig.from_section({**small_simulate, **change}), sensor)

    arms, disc = arrays(), arrays(layout="disc", distance=0.5)
    reference = arrays(distance=0.0)  # every target on the reference point
    for key in ("brightness", "active", "n_targets"):
        np.testing.assert_array_equal(arms[key], disc[key])
    active = arms["active"][:, 0]
    offset = np.hypot(disc["x"][:, 0] - reference["x"][:, 0], disc["y"][:, 0] - reference["y"][:, 0])[active]
    on_arms = np.hypot(arms["x"][:, 0] - reference["x"][:, 0], arms["y"][:, 0] - reference["y"][:, 0])[active]
    np.testing.assert_allclose(on_arms, 0.3)
    assert offset.max() <= 0.5 and offset.std() > 0.05
    with pytest.raises(ConfigError, match="simulate.layout"):
        SimulateConfig.from_section({**small_simulate, "layout": "ring"})
