"""Loading what several stages share: the physics object, windows of a split, trained models."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.data import Windows, load_split, make_windows
from pipeline.io import DataFileError, atomic_path, load_array
from pipeline.methods import PhysicsOperator, UnmixingMethod


def load_physics(phi_path: str | Path, qinit_path: str | Path) -> PhysicsOperator:
    """Phi and Q_init from their .npy files as one PhysicsOperator."""
    return PhysicsOperator(load_array(phi_path), load_array(qinit_path))


def load_windows(frames: str | Path, targets: str | Path, split: str | Path, split_name: str,
                 physics: PhysicsOperator, window: int) -> tuple[Windows, list]:
    """All windows of one split and the targets of their middle frames."""
    data = load_split(frames, targets, split, split_name)
    windows = make_windows(data, physics.grid, window)
    return windows, data.frame_targets(windows.t, windows.f)


def save_model(model_state: dict, method: str, settings: dict, path: str | Path) -> None:
    """A trained method: its name, the settings it was built with and its state dict."""
    with atomic_path(path) as tmp:
        torch.save({"method": method, "settings": settings, "state_dict": model_state}, tmp)


def load_state(model: UnmixingMethod, method: str, path: str | Path) -> UnmixingMethod:
    """Load the weights saved for ``method`` at ``path`` into ``model``; names a bad file."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved.get("method") != method:
            raise DataFileError(f"{path}: holds method {saved.get('method')!r}, expected {method!r}")
        model.load_state_dict(saved["state_dict"])
    except FileNotFoundError as exc:
        raise DataFileError(f"{path}: file not found (run dvc repro train@{method})") from exc
    except (RuntimeError, KeyError, AttributeError, EOFError) as exc:
        raise DataFileError(f"{path}: not a readable checkpoint of {method} ({exc})") from exc
    return model
