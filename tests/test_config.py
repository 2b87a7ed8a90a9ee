from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_params, read_params, resolve_profile
from pipeline.settings import (DataConfig, EvaluateConfig, NoiseSweepConfig, PhiConfig, QinitConfig, ReportConfig,
                               SimulateConfig, SplitConfig, TrainerConfig)
from pipeline.data import scored_frames
from pipeline.method_specs import check_proposals, method_spec
from pipeline.sensor import Sensor

ROOT = Path(__file__).resolve().parents[1]


def test_repository_params_are_valid(params):
    Sensor.from_section(params["sensor"])
    SimulateConfig.from_section(params["simulate"])
    PhiConfig.from_section(params["phi"])
    DataConfig.from_section(params["data"])
    SplitConfig.from_section(params["split"])
    QinitConfig.from_section(params["qinit"])
    EvaluateConfig.from_section(params["evaluate"])
    NoiseSweepConfig.from_section(params["noise_sweep"])
    ReportConfig.from_section(params["report"])
    TrainerConfig.from_section(params["trainer"])
    for method in params["methods"]:
        method_spec(params["methods"], method)
    check_proposals(params["physfit_proposals"], params["methods"])


def test_profile_switch_picks_per_profile_values(tmp_path):
    raw = {"profile": "paper", "trainer": {"val_windows": {"laptop": 2048, "paper": None}},
           "methods": {"a": {"train": {"epochs": {"laptop": 2, "paper": 200}, "lr": 1e-3}}}}
    resolved = resolve_profile(raw)
    assert resolved["trainer"]["val_windows"] is None
    assert resolved["methods"]["a"]["train"] == {"epochs": 200, "lr": 1e-3}
    assert resolve_profile({**raw, "profile": "laptop"})["methods"]["a"]["train"]["epochs"] == 2
    with pytest.raises(ConfigError, match="profile = 'huge' is invalid"):
        resolve_profile({**raw, "profile": "huge"})


def test_params_are_read_as_dvc_reads_them(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("trainer:\n  lr: 1e-3\n  flag: yes\n")
    assert read_params(path)["trainer"] == {"lr": 0.001, "flag": "yes"}  # YAML 1.2, as DVC (ruamel)


@pytest.mark.parametrize("section,key,value,fragment", [
    ("noise_sweep", "sigmas", [0, -2], "noise_sweep.sigmas[1] = -2"),
    ("noise_sweep", "sigmas", [], "a non-empty list"),
    ("evaluate", "distance_thresholds", [0.05, 0.0], "evaluate.distance_thresholds[1] = 0.0"),
    ("trainer", "val_windows", 0, "trainer.val_windows = 0"),
    ("evaluate", "distance_thresholds", [0.05, 0.051], "share the AP key ap05"),
])
def test_invalid_values_of_other_sections(params, section, key, value, fragment):
    build = {"noise_sweep": NoiseSweepConfig, "evaluate": EvaluateConfig, "trainer": TrainerConfig}[section]
    with pytest.raises(ConfigError) as error:
        build.from_section({**params[section], key: value})
    assert fragment in str(error.value)


@pytest.mark.parametrize("key,value,fragment", [
    ("k_min", 5, "must not exceed simulate.k_max"),
    ("k_max", 9, "at most 8"),
    ("curves", ["line", "spiral"], "simulate.curves[1] = 'spiral'"),
    ("trajectories", -3, "simulate.trajectories = -3"),
    ("frames", 2.5, "an integer is required"),
    ("brightness", [250, 220], "low must not exceed high"),
])
def test_invalid_simulate_values_name_key_value_and_rule(params, key, value, fragment):
    with pytest.raises(ConfigError) as error:
        SimulateConfig.from_section({**params["simulate"], key: value})
    assert fragment in str(error.value)


@pytest.mark.parametrize("key,value,fragment", [
    ("psf_sigma", 0.0, "sensor.psf_sigma = 0.0"),
    ("psf_sigma", -1, "must be > 0"),
    ("bit_depth", 12, "allowed values are [0, 8, 16]"),
    ("noise_sigma", -0.1, "sensor.noise_sigma"),
    ("saturate", "yes", "true or false"),
    ("frame_size", 10, "must be odd"),
])
def test_invalid_sensor_values_name_key_value_and_rule(params, key, value, fragment):
    with pytest.raises(ConfigError) as error:
        Sensor.from_section({**params["sensor"], key: value})
    assert fragment in str(error.value)


def test_sensor_derived_values():
    assert Sensor(bit_depth=8).full_scale == 255.0 and Sensor(bit_depth=16).full_scale == 65535.0
    assert Sensor(bit_depth=0).full_scale is None and Sensor(bit_depth=0).quantum == 0.0
    assert Sensor(bit_depth=8, saturate=False).clip_high is None
    assert Sensor(noise_sigma=2.0).read_sd == pytest.approx((4 + 1 / 12) ** 0.5)


def test_unknown_and_missing_keys(params):
    with pytest.raises(ConfigError, match="simulate.sigma is not a known key"):
        SimulateConfig.from_section({**params["simulate"], "sigma": 0.5})
    section = dict(params["simulate"])
    del section["seed"]
    with pytest.raises(ConfigError, match="simulate.seed is missing"):
        SimulateConfig.from_section(section)


@pytest.mark.parametrize("c", [2, 0, -3, 4])
def test_phi_c_must_be_positive_odd(params, c):
    with pytest.raises(ConfigError, match=f"phi.c = {c}"):
        PhiConfig.from_section({**params["phi"], "c": c})


def test_split_fractions_must_sum_to_one(params):
    with pytest.raises(ConfigError, match="must sum to 1"):
        SplitConfig.from_section({**params["split"], "fractions": {"train": 0.7, "val": 0.2, "test": 0.2}})
    with pytest.raises(ConfigError, match="exactly the keys"):
        SplitConfig.from_section({**params["split"], "fractions": [0.7, 0.15, 0.15]})
    with pytest.raises(ConfigError, match="val and test must all be non-empty"):
        SplitConfig.from_section({**params["split"], "fractions": {"train": 0.85, "val": 0.0, "test": 0.15}})


def test_official_source_needs_existing_root(tmp_path):
    with pytest.raises(ConfigError, match="data.official_root"):
        DataConfig.from_section({"source": "official", "official_root": None})
    with pytest.raises(ConfigError, match="does not exist"):
        DataConfig.from_section({"source": "official", "official_root": str(tmp_path / "nope")})
    assert DataConfig.from_section({"source": "official", "official_root": str(tmp_path)}).source == "official"


def test_evaluate_window_must_be_odd_and_fit_the_trajectories(params):
    with pytest.raises(ConfigError, match="evaluate.window = 4"):
        EvaluateConfig.from_section({**params["evaluate"], "window": 4})
    with pytest.raises(ConfigError, match="evaluate.window = 7 is invalid: longer than the 5 frames"):
        scored_frames(5, 7)


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("simulate: [unclosed")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_params(broken)


def test_no_param_key_is_one_that_dvcs_run_cache_ignores():
    blind = {"size", "nfiles"}  # dvc/stage/cache.py drops these keys when it hashes a run

    def keys(value, path=""):
        if isinstance(value, dict):
            for key, item in value.items():
                yield f"{path}{key}", key
                yield from keys(item, f"{path}{key}.")
        elif isinstance(value, list):
            for item in value:
                yield from keys(item, path)

    for name in ("params.yaml", "experiments.yaml"):
        found = [dotted for dotted, key in keys(yaml.safe_load((ROOT / name).read_text())) if key in blind]
        assert not found, f"{name}: {found} would be invisible to DVC's run cache"


@pytest.mark.parametrize("dotted, bad", [("evaluate.window_stride", {"laptop": 8, "paper": -1}),
                                         ("trainer.val_windows", {"laptop": 512, "paper": 0}),
                                         ("methods.srcnn.train.lr", {"laptop": 1.0e-3, "paper": -1.0})])
def test_a_bad_value_under_the_inactive_profile_stops_now(tmp_path, dotted, bad):
    import pipeline.method_specs  # noqa: F401  (registers the trainer and methods checks, as a stage's imports do)

    params = read_params(ROOT / "params.yaml")
    *parents, last = dotted.split(".")
    node = params
    for name in parents:
        node = node[name]
    node[last] = bad
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(ConfigError, match=rf"under profile paper \(not the active one\): {dotted}"):
        load_params(tmp_path / "params.yaml")
