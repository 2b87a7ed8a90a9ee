"""The paper profile, capped, on the CPU: every stage of every method runs (slow; -m slow).

What a researcher's first GPU run does, with each training cut to one short epoch, 40
trajectories and a stand-in VGG19 file for the GANs (a random state_dict of the right format:
this checks the plumbing of the paper settings, not their numbers)."""
from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml

from pipeline.io import file_sha256
from pipeline.methods.blocks.adversarial import VGGPerceptualLoss
from repo_copy import commit_copy, run_in, tracked_copy

pytestmark = pytest.mark.slow
GANS = ("srgan", "esrgan", "bsrgan")


def capped_paper_params(params: dict, vgg_file: str, vgg_sha256: str) -> dict:
    """``params`` switched to the paper profile on the CPU with smoke-sized budgets."""
    params["profile"] = "paper"
    params["simulate"]["trajectories"] = 40
    params["trainer"].update(device={"laptop": "auto", "paper": "cpu"}, seeds={"laptop": [0], "paper": [0]},
                             max_windows={"laptop": None, "paper": 32}, val_windows={"laptop": 512, "paper": 32})
    params["evaluate"]["window_stride"] = {"laptop": 8, "paper": 16}
    params["noise_sweep"]["window_stride"] = {"laptop": 32, "paper": 64}
    params["stress"]["trajectories"] = {"laptop": 200, "paper": 8}
    params["stress"]["shifts"] = dict(list(params["stress"]["shifts"].items())[:2])
    for gan in GANS:
        params["methods"][gan]["model"].update(perceptual_weights=vgg_file, perceptual_sha256=vgg_sha256)
    return params


def test_capped_paper_profile_runs_every_stage_of_every_method(tmp_path):
    clone = tracked_copy(tmp_path / "clone")
    vgg = clone / "vgg19-standin.pth"
    torch.save({f"features.{key}": value for key, value in VGGPerceptualLoss().layers.state_dict().items()}, vgg)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    (clone / "params.yaml").write_text(yaml.safe_dump(capped_paper_params(params, vgg.name, file_sha256(vgg)),
                                                      sort_keys=False))
    commit_copy(clone)
    run_in([sys.executable, "-m", "dvc", "repro"], clone)
    assert "changed" not in run_in([sys.executable, "-m", "dvc", "status"], clone)
    methods = yaml.safe_load((clone / "params.yaml").read_text())["methods"]
    for method in methods:
        metrics = json.loads((clone / f"reports/metrics/{method}.json").read_text())
        assert 0.0 <= metrics["cso_map"] <= 100.0, method
    for gan in GANS:
        saved = torch.load(clone / f"models/{gan}.pt", map_location="cpu", weights_only=False)
        keys = [key for state in saved["states"].values() for key in state]
        assert keys and not any(key.startswith("perceptual.") for key in keys), gan  # the frozen VGG is not saved
    table = (clone / "reports/tables/table7.md").read_text()
    assert "ISTA-Net" in table and "DeRefNet" in table
