"""Loading what several stages share: the physics object, windows of a split, trained models."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from pipeline.config import ConfigError, SimulateConfig, section
from pipeline.data import Windows, load_split, make_windows
from pipeline.io import DataFileError, atomic_path, load_array
from pipeline.methods import PhysicsOperator, UnmixingMethod
from pipeline.methods.registry import method_class
from pipeline.training import MethodConfig, build_method

PROPOSAL_PREFIX = "physfit_"


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


def sensor_settings(simulate: SimulateConfig) -> dict:
    """What a sensor-aware method (``uses_sensor_model``) is told about the frames."""
    return {"psf_sigma": simulate.psf_sigma, "bit_depth": simulate.bit_depth, "saturate": simulate.saturate,
            "noise_sigma": simulate.noise_sigma}


def build_evaluable(method_id: str, params: Mapping, physics: PhysicsOperator, models: str | Path,
                    simulate: SimulateConfig | None = None) -> UnmixingMethod:
    """A method ready to evaluate: a ``train`` entry (trained weights from ``models``/<id>.pt), or
    ``physfit_<network>``.

    ``physfit_<network>`` is PhysFit (settings from ``train.physfit``) seeded by the trained
    ``<network>``. Sensor-aware methods get the sensor of ``simulate`` (default: params' own).
    """
    methods = section(params, "train")
    simulate = simulate or SimulateConfig.from_section(section(params, "simulate"))
    proposal = None
    name = method_id
    if method_id not in methods and method_id.startswith(PROPOSAL_PREFIX):
        proposal = build_evaluable(method_id[len(PROPOSAL_PREFIX):], params, physics, models, simulate)
        name = PROPOSAL_PREFIX.rstrip("_")
    if name not in methods:
        raise ConfigError(f"method {method_id!r} is invalid: not a key of params.yaml train "
                          f"({', '.join(methods)}) nor {PROPOSAL_PREFIX}<one of them>")
    config = MethodConfig.from_section(name, methods[name])
    extra = dict(sensor_settings(simulate)) if getattr(method_class(name), "uses_sensor_model", False) else {}
    if proposal is not None:
        extra["proposal"] = proposal
    model = build_method(config, physics, **extra)
    if model.trainable:  # the others hold no learned state: Phi and Q_init come from physics
        load_state(model, name, Path(models) / f"{name}.pt")
    return model
