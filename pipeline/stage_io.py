"""Loading what several stages share: the physics object, windows of a split, trained models."""
from __future__ import annotations

import io
import pickle
import zipfile
from typing import Any
from pathlib import Path

import numpy as np
import torch

from pipeline.data import Windows, load_split, make_windows
from pipeline.io import DataFileError, atomic_path, file_sha256, load_array, read_json
from pipeline.methods import PhysicsOperator, UnmixingMethod
from pipeline.priors import ScenePriors
from pipeline.sensor import Sensor


def load_physics(phi_path: str | Path, qinit_path: str | Path, sensor: Sensor) -> PhysicsOperator:
    """Phi and Q_init from their .npy files with the sensor, as one PhysicsOperator."""
    phi, qinit = load_array(phi_path), load_array(qinit_path)
    try:
        return PhysicsOperator(phi, qinit, sensor)
    except ValueError as exc:
        raise DataFileError(f"{phi_path} / {qinit_path}: {exc}") from exc


def load_priors(path: str | Path) -> ScenePriors:
    """The scene priors written by the priors stage."""
    return ScenePriors.from_dict(read_json(path), str(path))


def load_windows(frames: str | Path, targets: str | Path, split: str | Path, split_name: str,
                 physics: PhysicsOperator, window: int, stride: int = 1) -> tuple[Windows, list]:
    """The windows of one split (every ``stride``-th per trajectory) and the targets of their
    middle frames."""
    data = load_split(frames, targets, split, split_name)
    windows = make_windows(data, physics.grid, window, stride)
    return windows, data.frame_targets(windows.t, windows.f)


def load_training_windows(frames: str | Path, targets: str | Path, split: str | Path, physics: PhysicsOperator,
                          window: int, val_windows: int | None) -> tuple[Windows, Windows, list]:
    """The training windows, and ``val_windows`` validation windows evenly spaced over the
    validation split (None = all) with the targets of their middle frames."""
    train, _ = load_windows(frames, targets, split, "train", physics, window)
    val, val_truths = load_windows(frames, targets, split, "val", physics, window)
    if val_windows is not None and val_windows < len(val):
        chosen = np.unique(np.linspace(0, len(val) - 1, val_windows).round().astype(int))
        val, val_truths = val.subset(chosen), [val_truths[i] for i in chosen]
    return train, val, val_truths


def state_bytes(state: Any) -> bytes:
    """``torch.save`` of ``state`` as bytes: identical state gives identical bytes (the archive
    is not named after a temporary file)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_model(states: dict[int, dict], method: str, settings: dict, path: str | Path) -> None:
    """A trained method: its id, the settings it was built with and one state dict per training
    seed (seed -> state dict, in ``trainer.seeds`` order); identical weights give identical bytes."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(state_bytes({"method": method, "settings": settings, "states": dict(states)}))


def saved_seeds(path: str | Path, method: str) -> list[int]:
    """The training seeds whose weights ``path`` holds, in training order; names a bad file."""
    return list(_read_model(path, method)["states"])


def load_state(model: UnmixingMethod, method: str, path: str | Path, seed: int | None = None) -> UnmixingMethod:
    """Load the weights saved for ``method`` at ``path`` (those of ``seed``, default the first
    seed trained) into ``model``; names a bad file or a seed it does not hold."""
    states = _read_model(path, method)["states"]
    chosen = next(iter(states)) if seed is None else seed
    if chosen not in states:
        raise DataFileError(f"{path}: holds the seeds {list(states)} of {method}, not seed {chosen} "
                            f"(run dvc repro train@{method})")
    try:
        model.load_state_dict(states[chosen])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise DataFileError(f"{path}: not a readable checkpoint of {method} "
                            f"({' '.join(str(exc).split())[:200]})") from exc
    return model


def load_weights_file(path: str | Path, sha256: str, key: str) -> dict[str, torch.Tensor]:
    """A torch state_dict file declared in params.yaml as ``key`` (a path) with its sha256 (the
    file's identity, so DVC re-runs the stage when it changes): the tensors, or a DataFileError
    naming the file when it is missing, differs from the declared sha256 or is no state_dict."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: file not found ({key})")
    found = file_sha256(path)
    if found != sha256:
        raise DataFileError(f"{path}: its sha256 is {found}, but params.yaml declares {sha256} ({key}'s sha256); "
                            "set the declared sha256 to the file's if the file is the one you mean")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise DataFileError(f"{path}: not a readable torch state_dict ({' '.join(str(exc).split())[:200]})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataFileError(f"{path}: not a state_dict (a mapping of names to tensors)")
    return state


def load_saved_model(path: str | Path, method: str) -> dict:
    """The whole saved file of ``method`` at ``path`` (method, settings, states); names a bad file."""
    return _read_model(path, method)


def _read_model(path: str | Path, method: str) -> dict:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError as exc:
        raise DataFileError(f"{path}: file not found (run dvc repro train@{method})") from exc
    except (RuntimeError, KeyError, AttributeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
            ValueError) as exc:
        raise DataFileError(f"{path}: not a readable checkpoint of {method} "
                            f"({' '.join(str(exc).split())[:200]})") from exc
    if not isinstance(saved, dict) or saved.get("method") != method:
        found = saved.get("method") if isinstance(saved, dict) else type(saved).__name__
        raise DataFileError(f"{path}: holds method {found!r}, expected {method!r}")
    if not isinstance(saved.get("states"), dict) or not saved["states"]:
        raise DataFileError(f"{path}: holds no trained weights of {method} (saved by an older version? "
                            f"run dvc repro train@{method})")
    return saved
