"""One trainer for every trainable method.

Adam (lr, weight decay, epochs, batch from the method's ``train.<method>`` section), seeded
initialisation and a per-epoch seeded shuffle, mixed precision on CUDA, a checkpoint after every
epoch that a rerun resumes from (bit-identical to an uninterrupted run on CPU), validation
CSO-mAP after every epoch and the best weights by it. A non-finite loss stops training with the
method, epoch and step named.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.config import (ConfigError, build_config, check_bool, check_choice, check_integer, check_number,
                             require)
from pipeline.data import Windows
from pipeline.io import atomic_path
from pipeline.methods import UnmixingMethod, get_model
from pipeline.methods.base import PhysicsOperator

DEVICES = ("auto", "cpu", "cuda")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names method, epoch and step."""


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Settings shared by all methods (section ``trainer``).

    ``train_window_stride``: train on every k-th window of each trajectory (consecutive windows
    differ by a 0.04 px shift; the laptop profile trains on every 2nd); validation and test
    always use every window.
    """

    device: str
    seed: int
    mixed_precision: bool
    eval_batch: int
    threads: int
    train_window_stride: int

    @classmethod
    def from_section(cls, given: Mapping, name: str = "trainer") -> "TrainerConfig":
        return build_config(cls, name, given, {
            "device": lambda k, v: check_choice(k, v, DEVICES),
            "seed": lambda k, v: check_integer(k, v, 0),
            "mixed_precision": check_bool,
            "eval_batch": lambda k, v: check_integer(k, v, 1),
            "threads": lambda k, v: check_integer(k, v, 0),
            "train_window_stride": lambda k, v: check_integer(k, v, 1),
        })


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """One method's section ``train.<method>``: optimiser settings and constructor params."""

    name: str
    epochs: int
    batch: int
    lr: float
    weight_decay: float
    model: dict

    @classmethod
    def from_section(cls, method: str, given: Mapping, name: str | None = None) -> "MethodConfig":
        name = name or f"train.{method}"

        def model(key, value):
            value = {} if value is None else value
            require(isinstance(value, Mapping), key, value, "a mapping of constructor parameters is required")
            return dict(value)

        fields = {k: v for k, v in given.items()}
        fields.setdefault("name", method)
        return build_config(cls, name, fields, {
            "name": lambda k, v: v,
            "epochs": lambda k, v: check_integer(k, v, 0),
            "batch": lambda k, v: check_integer(k, v, 1),
            "lr": lambda k, v: check_number(k, v, 0.0, strict=True),
            "weight_decay": lambda k, v: check_number(k, v, 0.0),
            "model": model,
        })


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device = 'cuda' is invalid: no CUDA device is available (use 'auto')")
    return torch.device(device)


def build_method(config: MethodConfig, physics: PhysicsOperator, **extra) -> UnmixingMethod:
    """The registered method with its constructor params (plus ``extra`` objects the pipeline
    supplies, e.g. a sensor description or a proposal network); bad params become a ConfigError."""
    try:
        return get_model(config.name, physics, **config.model, **extra)
    except KeyError as exc:
        raise ConfigError(f"train.{config.name}: {exc.args[0]}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"train.{config.name}.model = {config.model!r} is invalid: {exc}") from exc


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able settings and arrays, to tell whether a checkpoint still applies."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


@dataclasses.dataclass
class TrainResult:
    """Best weights by validation score and the per-epoch history rows."""

    best_state: dict
    history: list[dict]


def train_method(config: MethodConfig, trainer: TrainerConfig, physics: PhysicsOperator, train: Windows,
                 validate: Callable[[UnmixingMethod], float], checkpoint: Path, *, progress: bool = True,
                 on_step: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train one method; a non-trainable method (or ``epochs: 0``) is returned as built, no history.

    ``validate(model) -> float`` scores the model (validation CSO-mAP, higher is better).
    ``checkpoint``: file holding the state after the last completed epoch; a rerun with the same
    settings resumes from it. ``on_step(epoch, step)`` is called before each step (tests use it
    to interrupt a run).
    """
    device = resolve_device(trainer.device)
    if trainer.threads:
        torch.set_num_threads(trainer.threads)
    torch.manual_seed(trainer.seed)
    model = build_method(config, physics).to(device)
    if not model.trainable or config.epochs == 0:
        return TrainResult(copy.deepcopy(model.state_dict()), [])

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    key = fingerprint(dataclasses.asdict(config), dataclasses.asdict(trainer), train.lr[:64], len(train))
    state = _load_checkpoint(checkpoint, key)
    start_epoch, history, best_state, best_score = 0, [], None, -math.inf
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        best_state, best_score = state["best_state"], state["best_score"]
    use_amp = trainer.mixed_precision and device.type == "cuda"
    lr_all, hr_all = torch.from_numpy(train.lr), torch.from_numpy(train.hr)
    epochs = tqdm(range(start_epoch, config.epochs), desc=f"train {config.name}", unit="epoch",
                  initial=start_epoch, total=config.epochs, disable=not progress)
    for epoch in epochs:
        model.train()
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(trainer.seed * 100_003 + epoch))
        losses = []
        for step, start in enumerate(range(0, len(order), config.batch)):
            if on_step is not None:
                on_step(epoch, step)
            index = order[start:start + config.batch]
            lr_batch, hr_batch = lr_all[index].to(device), hr_all[index].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                output = model(lr_batch)
                loss, _ = model.loss(output, hr_batch)
            if not torch.isfinite(loss):
                raise TrainingError(f"method {config.name}: non-finite loss {loss.item()} at epoch {epoch}, "
                                    f"step {step}; lower train.{config.name}.lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        score = validate(model)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_cso_map": score})
        if score > best_score or best_state is None:
            best_score, best_state = score, copy.deepcopy(model.state_dict())
        epochs.set_postfix(loss=f"{history[-1]['train_loss']:.4g}", val_map=f"{score:.2f}")
        _save_checkpoint(checkpoint, {"key": key, "epoch": epoch, "model": model.state_dict(),
                                      "optimizer": optimizer.state_dict(), "history": history,
                                      "best_state": best_state, "best_score": best_score})
    return TrainResult(best_state, history)


def _load_checkpoint(path: Path, key: str) -> dict | None:
    """The checkpoint at ``path`` if it was written with the same settings, else None."""
    if not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # a checkpoint that cannot be read is ignored: training restarts cleanly
        return None
    return state if isinstance(state, dict) and state.get("key") == key else None


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
