"""Long runs (pipeline.long_run): a run stopped on one machine continues on a fresh one that has
only the repository, to the weights of an uninterrupted run; its zoo entry scores through the
pipeline's own train/evaluate stages to the recorded number."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.long_run import flattened
from pipeline.zoo import add_weights, verified_entry
from pipeline.io import DataFileError

ROOT = Path(__file__).resolve().parents[1]
DATASET = ["--frames", "data/dataset/frames.parquet", "--targets", "data/dataset/targets.parquet",
           "--split", "data/split.parquet"]
PHYSICS = ["--phi", "data/phi.npy", "--qinit", "data/qinit.npy"]


def _run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(cwd), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def _repository(folder: Path, runs_from: Path | None = None) -> Path:
    """The code and a tiny params.yaml (a long run 'tiny' of SRCNN), data regenerated from them
    as `dvc repro qinit priors` would; ``runs_from``: a folder whose runs/ the repository carries."""
    folder.mkdir()
    for name in ("pipeline", "stages", "reference"):
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["simulate"]["trajectories"] = 12
    params["long_runs"] = {"tiny": {"method": "srcnn", "val_windows": 16, "threads": 1,
                                    "train": {"epochs": 3, "windows_per_epoch": 32, "batch": 16, "lr": 1e-3,
                                              "weight_decay": 0.0, "schedule": "cosine", "warmup_windows": 16}}}
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if runs_from is not None:
        shutil.copytree(runs_from / "runs", folder / "runs")
    _run(["-m", "stages.phi", "--out", "data/phi.npy"], folder)
    _run(["-m", "stages.simulate", "--frames", DATASET[1], "--targets", DATASET[3]], folder)
    _run(["-m", "stages.split", "--frames", DATASET[1], "--out", DATASET[5]], folder)
    _run(["-m", "stages.qinit", *PHYSICS[:2], *DATASET, "--out", "data/qinit.npy"], folder)
    _run(["-m", "stages.priors", *DATASET, "--out", "reports/priors.json"], folder)
    return folder


@pytest.mark.slow
def test_a_long_run_continues_on_a_fresh_machine_and_its_zoo_entry_scores_through_evaluate(tmp_path):
    first = _repository(tmp_path / "first")
    said = _run(["-m", "pipeline.long_run", "train", "tiny", "--hours", "0"], first)
    assert "stopped after epoch 1 of 3" in said and (first / "runs/tiny/checkpoint.pt").is_file()

    fresh = _repository(tmp_path / "fresh", runs_from=first)  # nothing but the repository travels
    said = _run(["-m", "pipeline.long_run", "train", "tiny"], fresh)
    assert "budget complete" in said and not (fresh / "runs/tiny/checkpoint.pt").exists()
    curve = pd.read_csv(fresh / "runs/tiny/curve.csv")
    assert list(curve["epoch"]) == [0, 1, 2] and list(curve["windows"]) == [32, 64, 96]

    straight = _repository(tmp_path / "straight")
    _run(["-m", "pipeline.long_run", "train", "tiny"], straight)
    assert (fresh / "runs/tiny/best.pt").read_bytes() == (straight / "runs/tiny/best.pt").read_bytes()

    entry = yaml.safe_load((fresh / "zoo/metafile.yml").read_text())[0]
    assert entry["id"] == "tiny" and entry["method"] == "srcnn" and entry["training"]["windows_seen"] == 96
    test = json.loads((fresh / "runs/tiny/test.json").read_text())
    assert entry["test"]["cso_map"] == round(test["cso_map"], 2)
    assert "| SRCNN |" in (fresh / "reports/tables/converged.md").read_text()
    assert (fresh / "reports/figures/long_runs.png").stat().st_size > 0

    params = yaml.safe_load((fresh / "params.yaml").read_text())
    params["methods"]["srcnn"]["weights"] = entry["file"]
    params["evaluate"]["window_stride"] = {"laptop": 1, "paper": 1}
    (fresh / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    said = _run(["-m", "stages.train", "--method", "srcnn", *PHYSICS, *DATASET, "--model", "models/srcnn.pt",
                 "--history", "reports/training/srcnn.csv", "--checkpoint", ".checkpoints/srcnn.pt"], fresh)
    assert "installed zoo weights" in said
    _run(["-m", "stages.evaluate", "--method", "srcnn", *PHYSICS, *DATASET, "--models", "models",
          "--priors", "reports/priors.json", "--metrics", "m.json", "--curves", "c.csv", "--predictions", "p.npz"],
         fresh)
    assert json.loads((fresh / "m.json").read_text())["cso_map"] == pytest.approx(test["cso_map"], abs=1e-9)


def test_zoo_files_are_verified_by_their_sha256(tmp_path):
    source = tmp_path / "best.pt"
    source.write_bytes(b"weights")
    entry = add_weights(source, "run", {"method": "srcnn"}, zoo=tmp_path / "zoo")
    path = Path(entry["file"])
    assert path.name.startswith("run-") and path.read_bytes() == b"weights"
    assert verified_entry(path, tmp_path / "zoo/metafile.yml")["sha256"] == entry["sha256"]
    path.write_bytes(b"altered")
    with pytest.raises(DataFileError, match="sha256 differs"):
        verified_entry(path, tmp_path / "zoo/metafile.yml")
    with pytest.raises(DataFileError, match="not found"):
        verified_entry(tmp_path / "zoo/none.pt", tmp_path / "zoo/metafile.yml")


def test_a_curve_has_flattened_when_its_last_doubling_gains_little():
    rising = pd.DataFrame({"windows": [1, 2, 4, 8], "val_cso_map": [10.0, 20.0, 30.0, 40.0]})
    flat = pd.DataFrame({"windows": [1, 2, 4, 8], "val_cso_map": [10.0, 20.0, 40.0, 40.3]})
    assert flattened(rising) is False and flattened(flat) is True
    assert flattened(rising.iloc[:1]) is None


@pytest.mark.slow
def test_ctrl_c_during_training_says_the_checkpoint_is_kept_without_a_traceback(tmp_path):
    import signal
    import time

    repository = _repository(tmp_path / "repo")
    params = yaml.safe_load((repository / "params.yaml").read_text())
    params["methods"]["srcnn"]["train"].update(epochs={"laptop": 50, "paper": 50}, windows_per_epoch=64)
    (repository / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    checkpoint = repository / ".checkpoints/srcnn.seed0.pt"
    env = {**os.environ, "PYTHONPATH": str(repository), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "stages.train", "--method", "srcnn", *PHYSICS, *DATASET,
                                "--model", "models/srcnn.pt", "--history", "h.csv",
                                "--checkpoint", ".checkpoints/srcnn.pt"],
                               cwd=repository, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert checkpoint.exists(), "no checkpoint was written"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "interrupted" in err and "resumes" in err and "Traceback" not in err, err
    assert checkpoint.exists() and not (repository / "models/srcnn.pt").exists()
