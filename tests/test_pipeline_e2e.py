"""End-to-end: the DVC pipeline on a fresh copy of the repository (slow; run with -m slow)."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.stage_io import saved_seeds
from repo_copy import commit_copy, dvc_env, run_in, tracked_copy

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


_env = dvc_env
_run = run_in


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> Path:
    """The tracked files of the working tree in a new git repository, with a tiny profile."""
    clone = tracked_copy(tmp_path_factory.mktemp("clone"))
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["simulate"]["trajectories"] = 30
    params["trainer"]["val_windows"] = 64
    for entry in params["methods"].values():
        if "train" in entry:
            entry["train"].update(epochs=1, windows_per_epoch=64)
    params["methods"]["ista"]["model"]["iterations"] = 20
    params["noise_sweep"]["window_stride"] = 8
    params["stress"]["trajectories"] = 4
    params["stress"]["shifts"] = dict(list(params["stress"]["shifts"].items())[:2])
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return commit_copy(clone)


FOUNDATION = ["phi", "simulate", "split", "export_official", "qinit", "oracle"]


def test_foundation_stages_reproduce_byte_identically(fresh_clone):
    dvc = [sys.executable, "-m", "dvc"]
    _run(dvc + ["repro", *FOUNDATION], fresh_clone)
    for path in ("data/phi.npy", "data/dataset/frames.parquet", "data/dataset/targets.parquet",
                 "data/split.parquet", "data/official.tar.gz", "data/qinit.npy",
                 "reports/metrics/grid_oracle.json"):
        assert (fresh_clone / path).is_file(), path
    first = (fresh_clone / "dvc.lock").read_text()
    _run(dvc + ["repro", "--force", *FOUNDATION], fresh_clone)
    assert (fresh_clone / "dvc.lock").read_text() == first
    assert "changed" not in _run(dvc + ["status", *FOUNDATION], fresh_clone)


def test_invalid_param_stops_before_compute(fresh_clone):
    params_path = fresh_clone / "params.yaml"
    original = params_path.read_text()
    try:
        params = yaml.safe_load(original)
        params["sensor"]["psf_sigma"] = -0.5
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
        done = subprocess.run([sys.executable, "stages/phi.py", "--out", "data/phi_bad.npy"],
                              cwd=fresh_clone, env=_env(fresh_clone), capture_output=True, text=True)
        assert done.returncode == 2
        assert "sensor.psf_sigma = -0.5 is invalid: must be > 0" in done.stderr
        assert not (fresh_clone / "data/phi_bad.npy").exists()
    finally:
        params_path.write_text(original)


def _ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def test_full_pipeline_and_dvc_workflow(fresh_clone):
    """dvc repro end to end, then: an -S change of one method's lr reruns only that method and
    the tables; metrics diff prints a table; status is clean after a repro."""
    dvc = [sys.executable, "-m", "dvc"]
    _run(dvc + ["repro"], fresh_clone)
    for path in ("reports/tables/table7.md", "reports/tables/table7.tex", "reports/figures/test_windows.png",
                 "reports/metrics/srcnn.json", "reports/curves/srcnn.csv", "reports/training/srcnn.csv"):
        assert (fresh_clone / path).is_file(), path
    table = (fresh_clone / "reports/tables/table7.md").read_text()
    assert "laptop profile: 30 trajectories" in table and "SRCNN" in table and "Grid oracle" in table
    assert "Cramér-Rao bound, one frame" in table
    assert "changed" not in _run(dvc + ["status"], fresh_clone)

    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost"]
    _run(git + ["add", "-A"], fresh_clone)
    _run(git + ["commit", "-qm", "results"], fresh_clone)
    output = _run(dvc + ["exp", "run", "-S", "methods.srcnn.train.lr=0.002"], fresh_clone)
    ran = _ran_stages(output)
    assert {"train@srcnn", "evaluate@srcnn", "tables"} <= ran
    assert not any(name.endswith(("@ista", "@ista_net", "@ista_net_plus")) for name in ran), ran
    assert not ran & {"phi", "simulate", "split", "qinit"}
    diff = _run(dvc + ["metrics", "diff", "--md"], fresh_clone)
    assert "reports/metrics/srcnn.json" in diff and "cso_map" in diff
    assert "changed" not in _run(dvc + ["status"], fresh_clone)


TOY_METHOD = '''"""A toy method for the end-to-end test: Q_init followed by one learned gain."""
import torch
from torch import nn

from pipeline.methods.base import MethodOutput, UnmixingMethod
from pipeline.methods.registry import register_model


@register_model("toy")
class Toy(UnmixingMethod):
    family = "toy_family"
    label = "Toy"

    def __init__(self, physics):
        super().__init__(physics)
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, lr):
        return MethodOutput(hr=self.to_map(self.gain * self.physics.initial(self.middle_frame(lr))))
'''


def test_adding_a_method_touches_only_its_own_stages(fresh_clone):
    """One module and one params entry: dvc status names only the new method's stages (and the
    tables, which show it); after a repro the toy row is in table7."""
    dvc = [sys.executable, "-m", "dvc"]
    _run(dvc + ["repro"], fresh_clone)
    (fresh_clone / "pipeline/methods/toy.py").write_text(TOY_METHOD)
    params = yaml.safe_load((fresh_clone / "params.yaml").read_text())
    params["methods"]["toy"] = {"module": "toy.py", "model": {}, "train": {
        "epochs": 1, "windows_per_epoch": 32, "batch": 8, "lr": 1e-3, "weight_decay": 0.0}}
    (fresh_clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = yaml.safe_load(_run(dvc + ["status", "--json"], fresh_clone))
    assert set(status) == {"train@toy", "evaluate@toy", "tables"}, sorted(status)
    ran = _ran_stages(_run(dvc + ["repro"], fresh_clone))
    assert ran == {"train@toy", "evaluate@toy", "tables"}, ran
    table = (fresh_clone / "reports/tables/table7.md").read_text()
    assert "| **Toy family** |" in table and "| Toy |" in table


def test_two_seeds_and_a_two_process_training(fresh_clone):
    """trainer.seeds with two seeds: the model file holds both runs and the metrics their mean
    and std; then train@srcnn under torchrun (2 gloo processes) writes a loadable model. Last in
    the file: it leaves params.yaml changed."""
    dvc = [sys.executable, "-m", "dvc"]
    _run(dvc + ["exp", "run", "evaluate@srcnn", "-S", "trainer.seeds={laptop: [0, 1], paper: [0, 1]}"], fresh_clone)
    metrics = json.loads((fresh_clone / "reports/metrics/srcnn.json").read_text())
    assert metrics["seeds"] == 2 and set(metrics["per_seed"]) == {"0", "1"} and metrics["cso_map_std"] >= 0
    assert saved_seeds(fresh_clone / "models/srcnn.pt", "srcnn") == [0, 1]
    history = pd.read_csv(fresh_clone / "reports/training/srcnn.csv")
    assert sorted(history["seed"].unique()) == [0, 1]

    stage = yaml.safe_load((fresh_clone / "dvc.yaml").read_text())["stages"]["train"]["do"]["cmd"]
    paths = yaml.safe_load((fresh_clone / "dvc.yaml").read_text())["vars"][0]["paths"]
    command = stage.replace("${key}", "srcnn")
    for name, value in paths.items():
        command = command.replace("${paths.%s}" % name, " ".join(value.split()))
    arguments = command.split()[3:]  # drop "python -m stages.train"
    for flag, path in (("--model", "ddp.pt"), ("--history", "ddp.csv"), ("--checkpoint", "ddp-checkpoint.pt")):
        arguments[arguments.index(flag) + 1] = path  # beside the stage's outputs, not over them
    _run([sys.executable, "-m", "pipeline.launch", "--standalone", "--nproc_per_node", "2",
          "-m", "stages.train", *arguments], fresh_clone)
    assert saved_seeds(fresh_clone / "ddp.pt", "srcnn") == [0, 1]  # params.yaml still holds both seeds


# A changed value for every key of the sections that make the dataset and Phi (a new key must be
# added here: the test below checks that DVC sees each of them).
DATA_KEY_CHANGES = {
    "sensor": {"frame_size": 13, "psf_sigma": 0.55, "noise_sigma": 1.0, "bit_depth": 16, "saturate": False},
    "simulate": {"seed": 1, "trajectories": 13, "frames": 12, "k_min": 3, "k_max": 3, "distance": 0.25,
                 "layout": "disc", "step": 0.05, "drift_max": 0.001, "brightness": [200.0, 250.0],
                 "curves": ["line"], "line_slope_max": 0.4, "quadratic_curvature_max": 0.2,
                 "circle_radius": [3.0, 7.0], "background": "clutter", "background_dir": "other_backgrounds",
                 "clutter": {"level": [5.0, 20.0], "amplitude": 3.0, "correlation": 2.0}},
    "phi": {"c": 5, "epsabs": 1.0e-12, "epsrel": 1.0e-10},
}


def test_every_data_key_is_seen_by_dvc_and_reruns_its_stage(fresh_clone):
    """DVC's run cache drops dict keys named ``size`` or ``nfiles`` when it hashes a run: a
    changed value of such a key would be "cached - skipping run". Each sensor/simulate/phi key,
    changed, must make `dvc status` call its stage changed and `dvc repro` run it."""
    dvc = [sys.executable, "-m", "dvc"]
    params_path = fresh_clone / "params.yaml"
    original = params_path.read_text()
    base = yaml.safe_load(original)
    for section, changes in DATA_KEY_CHANGES.items():
        assert set(changes) == set(base[section]), f"{section}: keys without a change to test"
    _run(dvc + ["repro", "phi", "simulate"], fresh_clone)
    try:
        for section, changes in DATA_KEY_CHANGES.items():
            stage = "phi" if section == "phi" else "simulate"
            for key, value in changes.items():
                if section == "simulate" and key == "background_dir":
                    (fresh_clone / value).mkdir(exist_ok=True)  # a declared dep: the folder must exist
                    (fresh_clone / value / "README.md").write_text("another folder of background images\n")
                params = yaml.safe_load(original)
                params[section][key] = value
                params_path.write_text(yaml.safe_dump(params, sort_keys=False))
                assert "changed" in _run(dvc + ["status", stage], fresh_clone), f"{section}.{key}"
                ran = _ran_stages(_run(dvc + ["repro", "-s", stage], fresh_clone))
                assert stage in ran, f"{section}.{key} changed but {stage} was not re-run"
        # the images themselves are a dependency: a new image in the folder re-runs the stage
        params_path.write_text(original)
        _run(dvc + ["repro", "simulate"], fresh_clone)
        folder = fresh_clone / yaml.safe_load(original)["simulate"]["background_dir"]
        (folder / "new.png").write_bytes(b"not read unless background: images")
        assert "changed" in _run(dvc + ["status", "simulate"], fresh_clone), "a new background image went unseen"
        (folder / "new.png").unlink()
    finally:
        params_path.write_text(original)
        _run(dvc + ["repro", "phi", "simulate"], fresh_clone)

