"""The paper profile holds the paper's and the reference configs' training settings, method by
method (reference/paper_settings.csv names the source of each row)."""
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import ConfigError, read_params, resolve_profile
from pipeline.methods import method_class
from pipeline.method_specs import check_profile_requirements, method_spec

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = pd.read_csv(ROOT / "reference/paper_settings.csv")


@pytest.fixture(scope="module")
def paper() -> dict:
    """params.yaml resolved for profile: paper (without the stage-time CUDA check)."""
    return resolve_profile({**read_params(ROOT / "params.yaml"), "profile": "paper"})


@pytest.mark.parametrize("row", SETTINGS.to_dict("records"), ids=list(SETTINGS["method_id"]))
def test_paper_profile_matches_the_reference_settings(paper, row):
    budget = method_spec(paper["methods"], row["method_id"]).train
    assert budget.lr == pytest.approx(row["lr"]), row["source"]
    assert budget.weight_decay == pytest.approx(row["weight_decay"]), row["source"]
    assert budget.epochs == row["epochs"], row["source"]
    assert budget.batch == row["batch_windows"], row["source"]
    assert budget.draw == row["draw"], row["source"]
    assert budget.validate_every == row["validate_every"], row["source"]
    assert budget.windows_per_epoch is None  # every training window once per epoch
    assert budget.schedule == "constant" and budget.grad_clip is None  # no scheduler, no clipping


def test_every_trainable_method_has_a_reference_row(paper):
    trainable = {key for key, entry in paper["methods"].items() if method_spec(paper["methods"], key).trainable}
    assert trainable == set(SETTINGS["method_id"])


def test_paper_profile_trains_in_fp32_on_cuda(paper):
    assert paper["trainer"]["device"] == "cuda" and paper["trainer"]["mixed_precision"] is False
    assert paper["evaluate"]["window_stride"] == 1 and paper["trainer"]["val_windows"] is None


def test_gans_need_their_perceptual_weights_in_the_paper_profile(paper):
    for key in ("srgan", "esrgan", "bsrgan"):
        spec = method_spec(paper["methods"], key)
        assert "perceptual_weights" in method_class(spec.name).paper_requires
        with pytest.raises(ConfigError, match=f"methods.{key}.model.perceptual_weights is required in the paper"):
            check_profile_requirements(spec, "paper")
        check_profile_requirements(spec, "laptop")  # the laptop profile runs with a random VGG19, and says so
