"""Bad inputs end in one clear line naming the key, file or frame, never in a traceback or a
silently wrong result; a killed stage leaves nothing behind that changes the next run."""
from __future__ import annotations

import argparse
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline.settings import DataConfig, SimulateConfig, SplitConfig
from pipeline.images import read_background_images
from pipeline.io import (DataFileError, load_array, load_arrays, read_frames, read_json, read_targets, save_array,
                         temporary_path, write_frames, write_json, write_table)
from pipeline.official import read_official_tree, write_official_archive
from pipeline.metrics import cso_map, hr_map_to_detections, nearest_target_distance, targets_to_hr_maps
from pipeline.coords import Grid
from pipeline.simulate import simulate
from pipeline.split import make_split
from pipeline.stage_io import load_state, save_model

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.05, 0.10, 0.15, 0.20, 0.25)


# ------------------------------------------------------------------ bad params: one line naming the key

def _set(params: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = params
    for name in parents:
        node = node[name]
    node[last] = value


BAD_PARAMS = [  # (stage, {dotted key: bad value}, the key the message must name)
    ("simulate", {"sensor.bit_depth": 12}, "sensor.bit_depth"),
    ("simulate", {"sensor.noise_sigma": float("nan")}, "sensor.noise_sigma"),
    ("simulate", {"simulate.trajectories": 0}, "simulate.trajectories"),
    ("simulate", {"simulate.brightness": [250.0, 220.0]}, "simulate.brightness"),
    ("simulate", {"simulate.curves": ["spiral"]}, "simulate.curves[0]"),
    ("simulate", {"simulate.background": "clutter", "simulate.clutter.level": [200.0, 300.0]},
     "simulate.clutter.level"),
    ("simulate", {"data.source": "web"}, "data.source"),
    ("simulate", {"data.source": "official", "data.official_root": "/nonexistent/seqcsist"}, "data.official_root"),
    ("phi", {"phi.c": 2}, "phi.c"),
    ("split", {"split.fractions": {"train": 0.5, "val": 0.5, "test": 0.5}}, "split.fractions"),
    ("qinit", {"qinit.measurements": "pinv"}, "qinit.measurements"),
    ("train", {"evaluate.distance_thresholds": [0.1, 0.1001]}, "evaluate.distance_thresholds"),
    ("train", {"evaluate.window": 4}, "evaluate.window"),
    ("train", {"trainer.device": "tpu"}, "trainer.device"),
    ("train", {"trainer.seeds": [0, -1]}, "trainer.seeds"),
    ("train", {"methods.srcnn.model.channels": 32}, "methods.srcnn.model.channels"),
    ("train", {"methods.srcnn.model.kernel_sizes": 9}, "methods.srcnn.model.kernel_sizes"),
    ("train", {"methods.srcnn.model.faithful_loss_weights": "yes"}, "methods.srcnn.model.faithful_loss_weights"),
    ("train", {"methods.srcnn.model.width": 8}, "methods.srcnn.model.width"),
    ("train", {"methods.srcnn.train.lr": -1.0}, "methods.srcnn.train.lr"),
    ("train", {"methods.srcnn.train.epochs": 0}, "methods.srcnn.train.epochs"),
    ("train", {"profile": "desktop"}, "profile"),
    ("crb", {"crb.draws": 0}, "crb.draws"),
    ("crb", {"sensor.noise_sigma": -1.0}, "sensor.noise_sigma"),
]
STAGE_ARGS = {  # dummy paths: the params are checked before any input is read
    "simulate": ["--frames", "f.parquet", "--targets", "t.parquet"],
    "phi": ["--out", "phi.npy"],
    "split": ["--frames", "f.parquet", "--out", "s.parquet"],
    "qinit": ["--phi", "phi.npy", "--frames", "f.parquet", "--targets", "t.parquet", "--split", "s.parquet",
              "--out", "q.npy"],
    "crb": ["--frames", "f.parquet", "--targets", "t.parquet", "--split", "s.parquet", "--out", "crb.json"],
    "train": ["--phi", "phi.npy", "--qinit", "q.npy", "--frames", "f.parquet", "--targets", "t.parquet",
              "--split", "s.parquet", "--method", "srcnn", "--model", "m.pt", "--history", "h.csv",
              "--checkpoint", "c.pt"],
}


def _run_stage_in_process(stage: str, monkeypatch, capsys) -> str:
    """Run stages/<stage>.py as __main__ in the current folder; its exit must be 2: return stderr."""
    monkeypatch.setattr(sys, "argv", [f"stages/{stage}.py", *STAGE_ARGS[stage]])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "stages" / f"{stage}.py"), run_name="__main__")
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("stage,settings,named", BAD_PARAMS,
                         ids=[",".join(f"{k}={v!r}" for k, v in row[1].items()) for row in BAD_PARAMS])
def test_bad_param_is_one_line_naming_the_key(stage, settings, named, tmp_path, monkeypatch, capsys):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in settings.items():
        _set(params, key, value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    err = _run_stage_in_process(stage, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"stages/{stage}.py: error:"), err
    assert named in lines[0], err
    assert "Traceback" not in err


def test_constructor_errors_name_the_model_key():
    """What only the constructor can reject (here three channel counts) still names the entry."""
    from pipeline.config import ConfigError
    from pipeline.methods import PhysicsOperator
    from pipeline.physics import build_phi_closed_form
    from pipeline.method_specs import build_method, method_spec

    entry = {"module": "srcnn.py", "model": {"channels": [32, 16, 8]},
             "train": {"epochs": 1, "windows_per_epoch": 32, "batch": 32, "lr": 1e-3, "weight_decay": 0.0}}
    spec = method_spec({"srcnn": entry}, "srcnn")
    physics = PhysicsOperator(build_phi_closed_form(), np.zeros((1089, 121)))
    with pytest.raises(ConfigError, match=r"methods\.srcnn\.model = .* is invalid: ValueError: SRCNN needs 2"):
        build_method(spec, physics)


# ------------------------------------------------------------------ corrupt files: the message names the file

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """12 simulated trajectories with their split (the laptop scene, shrunk)."""
    from pipeline.config import load_params
    from pipeline.sensor import Sensor
    params = load_params(ROOT / "params.yaml")
    frames, targets = simulate(SimulateConfig.from_section({**params["simulate"], "trajectories": 12}),
                               Sensor.from_section(params["sensor"]))
    return frames, targets, make_split(frames, SplitConfig.from_section(params["split"]))


def _truncate(path: Path) -> Path:
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    return path


def _corrupt_frames(tmp_path, dataset):
    write_frames(dataset[0], tmp_path / "frames.parquet")
    return read_frames, _truncate(tmp_path / "frames.parquet")


def _corrupt_targets(tmp_path, dataset):
    write_table(dataset[1], tmp_path / "targets.parquet")
    return read_targets, _truncate(tmp_path / "targets.parquet")


def _corrupt_npz(tmp_path, dataset):
    with (tmp_path / "pred.npz").open("wb") as handle:
        np.savez(handle, hr=np.zeros((4, 33, 33)), t=np.arange(4))
    return (lambda path: load_arrays(path, ("hr", "t"))), _truncate(tmp_path / "pred.npz")


def _corrupt_npy(tmp_path, dataset):
    save_array(np.ones((121, 1089)), tmp_path / "phi.npy")
    return load_array, _truncate(tmp_path / "phi.npy")


def _corrupt_json(tmp_path, dataset):
    write_json({"method": "srcnn", "cso_map": 12.5}, tmp_path / "metrics.json")
    return read_json, _truncate(tmp_path / "metrics.json")


def _binary_json(tmp_path, dataset):
    (tmp_path / "metrics.json").write_bytes(b"\xff\xfe\x00garbage")
    return read_json, tmp_path / "metrics.json"


def _corrupt_model(tmp_path, dataset):
    model = torch.nn.Linear(3, 2)
    save_model({0: model.state_dict()}, "toy", {}, tmp_path / "toy.pt")
    return (lambda path: load_state(model, "toy", path)), _truncate(tmp_path / "toy.pt")


def _missing_npz_array(tmp_path, dataset):
    with (tmp_path / "pred.npz").open("wb") as handle:
        np.savez(handle, hr=np.zeros((4, 33, 33)))
    return (lambda path: load_arrays(path, ("hr", "t"))), tmp_path / "pred.npz"


@pytest.mark.parametrize("make", [_corrupt_frames, _corrupt_targets, _corrupt_npz, _corrupt_npy, _corrupt_json,
                                  _binary_json, _corrupt_model, _missing_npz_array])
def test_corrupt_file_is_named(make, tmp_path, dataset):
    read, path = make(tmp_path, dataset)
    with pytest.raises(DataFileError) as error:
        read(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


# ------------------------------------------------------------------ bad official trees

@pytest.fixture(scope="module")
def official_archive(dataset, tmp_path_factory) -> Path:
    frames, targets, split = dataset
    archive = tmp_path_factory.mktemp("official") / "official.tar.gz"
    write_official_archive(frames, targets, split, archive, sigma=0.5, dataset_dir="track_12_20")
    return archive


def _png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, format="PNG")


def _remove_field(path: Path, field: str) -> None:
    path.write_text(re.sub(rf"<{field}>[^<]*</{field}>", "", path.read_text(), count=1))


def _replace_field(path: Path, field: str, value: str) -> None:
    text = path.read_text()
    start = text.index(f"<{field}>") + len(field) + 2
    path.write_text(text[:start] + value + text[text.index(f"</{field}>", start):])


TRAIN = Path("track_12_20/train")
DAMAGES = {  # name: (damage of the unpacked tree, texts the message must hold)
    "wrong size": (lambda t: _png(t / TRAIN / "image/image_3.png", np.zeros((12, 12), np.uint8)),
                   ["image_3.png", "12x12", "11x11"]),
    "not square": (lambda t: _png(t / TRAIN / "image/image_3.png", np.zeros((11, 13), np.uint8)),
                   ["image_3.png", "11x13"]),
    "RGB": (lambda t: _png(t / TRAIN / "image/image_3.png", np.zeros((11, 11, 3), np.uint8)),
            ["image_3.png", "mode 'RGB'"]),
    "16-bit": (lambda t: _png(t / TRAIN / "image/image_3.png", np.full((11, 11), 300, np.uint16)),
               ["image_3.png", "16-bit", "sensor.bit_depth = 8"]),
    "truncated PNG": (lambda t: _truncate(t / TRAIN / "image/image_3.png"), ["image_3.png", "not a readable PNG"]),
    "empty image folder": (lambda t: [p.unlink() for p in (t / "track_12_20/val/image").iterdir()],
                           ["val/image", "no image_<id>.png"]),
    "missing split": (lambda t: shutil.rmtree(t / "track_12_20/test"), ["track_12_20/test", "folder missing"]),
    "missing annotation folder": (lambda t: shutil.rmtree(t / TRAIN / "annotation"),
                                  ["train/annotation", "folder missing"]),
    "gap in ids": (lambda t: (t / TRAIN / "image/image_4.png").unlink(), ["train/image", "image_4.png"]),
    "missing annotation": (lambda t: (t / TRAIN / "annotation/COS7.xml").unlink(), ["COS7.xml", "image_7.png"]),
    "NaN coordinate": (lambda t: _replace_field(t / TRAIN / "annotation/COS5.xml", "xc", "nan"),
                       ["COS5.xml", "object 0", "coordinate/xc", "not finite"]),
    "inf brightness": (lambda t: _replace_field(t / TRAIN / "annotation/COS5.xml", "brightness", "inf"),
                       ["COS5.xml", "coordinate/brightness", "not finite"]),
    "out of frame": (lambda t: _replace_field(t / TRAIN / "annotation/COS5.xml", "yc", "42.0"),
                     ["COS5.xml", "coordinate/yc", "outside"]),
    "missing field": (lambda t: _remove_field(t / TRAIN / "annotation/COS5.xml", "yc"),
                      ["COS5.xml", "object 0", "coordinate/yc", "missing"]),
    "missing width": (lambda t: _remove_field(t / TRAIN / "annotation/COS5.xml", "width"),
                      ["COS5.xml", "size/width", "missing"]),
    "text coordinate": (lambda t: _replace_field(t / TRAIN / "annotation/COS5.xml", "xc", "left"),
                        ["COS5.xml", "coordinate/xc", "'left'"]),
    "size mismatch": (lambda t: [_replace_field(t / TRAIN / "annotation/COS5.xml", field, "13")
                                 for field in ("width", "height")],
                      ["COS5.xml", "size/width = 13", "image_5.png is 11x11"]),
    "no tree": (lambda t: shutil.rmtree(t / "track_12_20"), ["no official SeqCSIST tree"]),
    "no object": (lambda t: _remove_objects(t / TRAIN / "annotation/COS6.xml"),
                  ["COS6.xml", "no object", "image_6.png"]),
    "annotation without image": (lambda t: shutil.copy(t / TRAIN / "annotation/COS0.xml",
                                                       t / TRAIN / "annotation/COS999.xml"),
                                 ["COS999.xml", "without its image", "image_999.png"]),
    "other sigma": (lambda t: _replace_field(t / TRAIN / "annotation/COS2.xml", "sigma", "0.6"),
                    ["COS2.xml", "sigma = 0.6", "sensor.psf_sigma = 0.5"]),
}


def _remove_objects(path: Path) -> None:
    path.write_text(re.sub(r"<object>.*?</object>\s*", "", path.read_text(), flags=re.S))


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_bad_official_tree_is_named(damage, official_archive, tmp_path):
    with tarfile.open(official_archive) as packed:
        packed.extractall(tmp_path, filter="data")
    apply, named = DAMAGES[damage]
    apply(tmp_path)
    with pytest.raises(DataFileError) as error:
        read_official_tree(tmp_path, 20, bit_depth=8, size=11, psf_sigma=0.5)
    message = str(error.value)
    assert all(text in message for text in named), message


def test_intact_tree_imports_and_a_16_bit_tree_needs_bit_depth_16(official_archive, dataset, tmp_path):
    with tarfile.open(official_archive) as packed:
        packed.extractall(tmp_path, filter="data")
    frames, _ = read_official_tree(tmp_path, 20, bit_depth=8, size=11)
    assert len(frames) == len(dataset[0])
    with pytest.raises(DataFileError, match="an 8-bit PNG, expected a 16-bit"):
        read_official_tree(tmp_path, 20, bit_depth=16)


# ------------------------------------------------------------------ background images the sensor cannot record

BAD_BACKGROUNDS = {  # name: (image array, sensor full scale, texts the message must hold)
    "NaN": (np.where(np.eye(16, dtype=bool), np.nan, 20.0).astype(np.float32), 255.0, ["16 pixel(s)", "not finite"]),
    "negative": (np.full((16, 16), -3.0, np.float32), 255.0, ["-3", "negative"]),
    "16-bit under 8-bit": (np.full((16, 16), 4000, np.uint16), 255.0, ["4000", "full scale 255"]),
}


@pytest.mark.parametrize("name", list(BAD_BACKGROUNDS))
def test_background_values_the_sensor_cannot_record_are_named(name, tmp_path):
    image, full_scale, named = BAD_BACKGROUNDS[name]
    path = tmp_path / "bg.tif"
    Image.fromarray(image).save(path)
    with pytest.raises(DataFileError) as error:
        read_background_images(tmp_path, 11, full_scale)
    message = str(error.value)
    assert str(path) in message and all(text in message for text in named), message


def test_in_range_background_is_read_and_a_float_sensor_has_no_full_scale(tmp_path):
    Image.fromarray(np.full((16, 16), 4000, np.uint16)).save(tmp_path / "bg.png")
    (image,) = read_background_images(tmp_path, 11, None)
    assert image.shape == (16, 16) and image.max() == 4000


# ------------------------------------------------------------------ non-finite metric inputs

def _frames_of(rows: list) -> list:
    return [np.array(r, dtype=np.float64).reshape(-1, 3) for r in rows]


GOOD_DET = [[1.0, 1.0, 200.0]]
GOOD_GT = [[1.0, 1.0, 230.0]]


@pytest.mark.parametrize("detections,truths,frame,field", [
    ([GOOD_DET, GOOD_DET, [[1.0, 1.0, np.nan]]], [GOOD_GT] * 3, 2, "score"),
    ([GOOD_DET, [[np.inf, 1.0, 9.0]], GOOD_DET], [GOOD_GT] * 3, 1, "x"),
    ([GOOD_DET, [[1.0, -np.inf, 9.0]], GOOD_DET], [GOOD_GT] * 3, 1, "y"),
    ([GOOD_DET] * 3, [[[1.0, np.nan, 230.0]], GOOD_GT, GOOD_GT], 0, "y"),
    ([GOOD_DET] * 3, [GOOD_GT, GOOD_GT, [[1.0, 1.0, np.nan]]], 2, "brightness"),
], ids=["nan score", "inf x", "-inf y", "nan gt y", "nan gt brightness"])
def test_non_finite_metric_inputs_name_the_frame(detections, truths, frame, field):
    for score in (lambda d, t: cso_map(d, t, THRESHOLDS), nearest_target_distance):
        with pytest.raises(ValueError, match=rf"frame {frame}: row 0 has a non-finite {field}"):
            score(_frames_of(detections), _frames_of(truths))


def test_non_finite_hr_maps_and_targets_name_the_frame():
    maps = np.zeros((3, 33, 33))
    maps[1, 4, 4] = np.nan
    with pytest.raises(ValueError, match="HR map of frame 1 holds NaN"):
        hr_map_to_detections(maps, c=3, threshold=70.0)
    with pytest.raises(ValueError, match="targets of frame 1: row 0 has a non-finite x"):
        targets_to_hr_maps(_frames_of([GOOD_GT, [[np.nan, 1.0, 230.0]]]), Grid())
    with pytest.raises(ValueError, match="thresholds"):
        cso_map(_frames_of([GOOD_DET]), _frames_of([GOOD_GT]), (0.1, float("nan")))


# ------------------------------------------------------------------ noise sweep on imported data

def test_noise_sweep_does_not_simulate_imported_data(tmp_path, dataset, monkeypatch):
    from pipeline.config import load_params
    from pipeline.sensor import Sensor
    import importlib.util

    spec = importlib.util.spec_from_file_location("noise_sweep_stage", ROOT / "stages" / "noise_sweep.py")
    noise_sweep = importlib.util.module_from_spec(spec)  # by path: stages/ is not an installed package
    spec.loader.exec_module(noise_sweep)

    frames, targets, split = dataset
    write_frames(frames, tmp_path / "frames.parquet")
    write_table(targets, tmp_path / "targets.parquet")
    write_table(split, tmp_path / "split.parquet")
    args = argparse.Namespace(frames=tmp_path / "frames.parquet", targets=tmp_path / "targets.parquet",
                              split=tmp_path / "split.parquet")

    def no_simulation(*_):
        raise AssertionError("imported data must not be simulated again")

    monkeypatch.setattr(noise_sweep, "simulate", no_simulation)
    params = load_params(ROOT / "params.yaml")
    sensor = Sensor.from_section(params["sensor"])
    clean = noise_sweep.load_split(args.frames, args.targets, args.split, "test").images
    noisy = noise_sweep.noisy_test_split(3.0, DataConfig("official", str(tmp_path)),
                                         SimulateConfig.from_section(params["simulate"]), sensor, 11, args)
    assert noisy.images.shape == clean.shape and not np.array_equal(noisy.images, clean)
    assert np.array_equal(noisy.images, np.round(noisy.images))  # recorded again by the 8-bit sensor


# ------------------------------------------------------------------ a killed stage leaves nothing behind

def _stage_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _simulate_stage(folder: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "stages" / "simulate.py"), "--frames", "out/frames.parquet",
                             "--targets", "out/targets.parquet"], cwd=folder, env=_stage_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_killed_stage_rerun_leaves_no_leftovers_and_same_bytes(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["simulate"]["trajectories"] = 12
    for name in ("reference", "killed"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    reference = _simulate_stage(tmp_path / "reference")
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()

    out = tmp_path / "killed" / "out"
    killed = _simulate_stage(tmp_path / "killed")
    deadline = time.monotonic() + 300
    while killed.poll() is None and not temporary_path(out / "frames.parquet").exists() \
            and time.monotonic() < deadline:
        time.sleep(0.001)
    killed.send_signal(signal.SIGKILL)  # mid-write when the poll caught the temporary file
    killed.wait()
    # whatever the kill left, make it the worst case: stale temporaries of both outputs
    out.mkdir(exist_ok=True)
    for name in ("frames.parquet", "targets.parquet"):
        (out / name).unlink(missing_ok=True)
        temporary_path(out / name).write_bytes(b"half-written by a killed run")
    rerun = _simulate_stage(tmp_path / "killed")
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()
    assert sorted(p.name for p in out.iterdir()) == ["frames.parquet", "targets.parquet"]
    for name in ("frames.parquet", "targets.parquet"):
        assert (out / name).read_bytes() == (tmp_path / "reference" / "out" / name).read_bytes()


# ------------------------------------------------------------------ concurrent runs and failed launches

def test_second_stage_in_a_workspace_stops_at_once_naming_the_running_one(tmp_path, monkeypatch, capsys):
    from pipeline.cli import stage_lock, run_stage

    (tmp_path / ".dvc").mkdir()
    monkeypatch.chdir(tmp_path)
    calls = []
    parser = argparse.ArgumentParser(prog="stages/phi.py")
    with stage_lock("stages/train.py"):  # the first run, training
        with pytest.raises(SystemExit) as exit_info:
            run_stage(lambda args: calls.append(args), parser, [])
    assert exit_info.value.code == 2 and calls == []
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and "stages/train.py (pid" in message and "is running in this workspace" in message
    run_stage(lambda args: calls.append(args), parser, [])  # the lock is free again once the first ends
    assert len(calls) == 1


def test_stage_outside_a_dvc_workspace_takes_no_lock(tmp_path, monkeypatch):
    from pipeline.cli import STAGE_LOCK, stage_lock

    monkeypatch.chdir(tmp_path)
    with stage_lock("a"), stage_lock("b"):
        pass
    assert not (tmp_path / STAGE_LOCK).exists()


def test_failed_data_parallel_launch_ends_in_one_line_without_torch_traceback(tmp_path):
    """Both processes fail (no params.yaml here): each prints its line, the launcher one more."""
    run = subprocess.run([sys.executable, "-m", "pipeline.launch", "--standalone", "--nproc_per_node", "2",
                          "-m", "stages.phi", "--out", "phi.npy"], cwd=tmp_path, env=_stage_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and "ChildFailedError" not in run.stderr, run.stderr
    assert "params.yaml: parameter file not found" in run.stderr
    assert re.search(r"pipeline\.launch: error: \d of 2 process\(es\) failed; the first was rank \d with exit code 2",
                     run.stderr), run.stderr
