import pytest

from pipeline.config import (ConfigError, DataConfig, EvaluateConfig, NoiseSweepConfig, PhiConfig, QinitConfig,
                             ReportConfig, SimulateConfig, SplitConfig, load_params)
from pipeline.training import MethodConfig, TrainerConfig


def test_repository_params_are_valid(params):
    SimulateConfig.from_section(params["simulate"])
    PhiConfig.from_section(params["phi"])
    DataConfig.from_section(params["data"])
    SplitConfig.from_section(params["split"])
    QinitConfig.from_section(params["qinit"])
    EvaluateConfig.from_section(params["evaluate"])
    NoiseSweepConfig.from_section(params["noise_sweep"])
    ReportConfig.from_section(params["report"])
    TrainerConfig.from_section(params["trainer"])
    for method, section in params["train"].items():
        MethodConfig.from_section(method, section)


@pytest.mark.parametrize("section,key,value,fragment", [
    ("noise_sweep", "sigmas", [0, -2], "noise_sweep.sigmas[1] = -2"),
    ("noise_sweep", "sigmas", [], "a non-empty list"),
    ("evaluate", "distance_thresholds", [0.05, 0.0], "evaluate.distance_thresholds[1] = 0.0"),
    ("trainer", "train_window_stride", 0, "trainer.train_window_stride = 0"),
])
def test_invalid_values_of_other_sections(params, section, key, value, fragment):
    build = {"noise_sweep": NoiseSweepConfig, "evaluate": EvaluateConfig, "trainer": TrainerConfig}[section]
    with pytest.raises(ConfigError) as error:
        build.from_section({**params[section], key: value})
    assert fragment in str(error.value)


@pytest.mark.parametrize("key,value,fragment", [
    ("psf_sigma", 0.0, "simulate.psf_sigma = 0.0"),
    ("psf_sigma", -1, "must be > 0"),
    ("k_min", 5, "must not exceed simulate.k_max"),
    ("k_max", 9, "at most 8"),
    ("curves", ["line", "spiral"], "simulate.curves[1] = 'spiral'"),
    ("bit_depth", 12, "allowed values are [0, 8, 16]"),
    ("trajectories", -3, "simulate.trajectories = -3"),
    ("frames", 2.5, "an integer is required"),
    ("noise_sigma", -0.1, "simulate.noise_sigma"),
    ("brightness", [250, 220], "low must not exceed high"),
    ("saturate", "yes", "true or false"),
    ("size", 10, "must be odd"),
])
def test_invalid_simulate_values_name_key_value_and_rule(params, key, value, fragment):
    with pytest.raises(ConfigError) as error:
        SimulateConfig.from_section({**params["simulate"], key: value})
    assert fragment in str(error.value)


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


def test_official_source_needs_existing_root(tmp_path):
    with pytest.raises(ConfigError, match="data.official_root"):
        DataConfig.from_section({"source": "official", "official_root": None})
    with pytest.raises(ConfigError, match="does not exist"):
        DataConfig.from_section({"source": "official", "official_root": str(tmp_path / "nope")})
    assert DataConfig.from_section({"source": "official", "official_root": str(tmp_path)}).source == "official"


def test_evaluate_window_must_be_odd(params):
    with pytest.raises(ConfigError, match="evaluate.window = 4"):
        EvaluateConfig.from_section({**params["evaluate"], "window": 4})


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("simulate: [unclosed")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_params(broken)
