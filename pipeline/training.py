"""One trainer for every trainable method.

Adam on the method's own parameters (settings and budget from ``methods.<id>.train``), seeded
initialisation and a seeded draw of training windows every epoch (one run per seed of
``trainer.seeds``), optional bf16 autocast of the forward pass on CUDA (``mixed_precision``; the
loss, targets and sampling grids stay fp32), data-parallel across processes started by
``torchrun`` (:mod:`pipeline.distributed`), a
checkpoint after every epoch that a rerun resumes from (bit-identical to an uninterrupted run on
CPU), validation CSO-mAP after every epoch and the best weights by it. Adversarial methods (a
``discriminator`` submodule) alternate a generator and a discriminator step inside the same loop.
A non-finite loss stops training with the method, epoch and step named; a checkpoint made from
other inputs (settings, Phi, Q_init, sensor or data) is discarded with a one-line notice.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline import distributed
from pipeline.config import ConfigError
from pipeline.data import Windows
from pipeline.errors import TrainingError
from pipeline.io import atomic_path
from pipeline.methods import MethodOutput, PhysicsOperator, UnmixingMethod
from pipeline.method_specs import MethodSpec, build_method
from pipeline.settings import TrainBudget, TrainerConfig
from pipeline.stage_io import state_bytes


def seed_checkpoint(checkpoint: Path, seed: int) -> Path:
    """The resume file of one seed's run, beside ``checkpoint`` (``<stem>.seed<k><suffix>``)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.seed{seed}{checkpoint.suffix}")


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able settings and arrays, to tell whether a checkpoint still applies."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, (np.ndarray, torch.Tensor)):
            array = part.detach().cpu().numpy() if isinstance(part, torch.Tensor) else part
            digest.update(str(array.dtype).encode() + str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def explicit_settings(value: Any) -> Any:
    """A dataclass as a dict without the fields left at their declared default (recursively), so
    that an option added later, at its default, leaves the fingerprint of older runs unchanged."""
    if not dataclasses.is_dataclass(value):
        return value
    return {field.name: explicit_settings(getattr(value, field.name)) for field in dataclasses.fields(value)
            if field.default is dataclasses.MISSING or getattr(value, field.name) != field.default}


def run_inputs(spec: MethodSpec, trainer: TrainerConfig, physics: PhysicsOperator, train: Windows,
               seed: int) -> dict[str, str]:
    """The named inputs a training run depends on, each as a short hash: a checkpoint resumes only
    when all of them match, and a mismatch names the input that changed."""
    run = {**explicit_settings(trainer), "seeds": None, "seed": seed}
    return {"settings": fingerprint(explicit_settings(spec), run), "sensor": fingerprint(dataclasses.asdict(physics.sensor)),
            "phi": fingerprint(physics.phi), "qinit": fingerprint(physics.qinit),
            "training data": fingerprint(train.lr, train.hr)}


@dataclasses.dataclass
class TrainResult:
    """Best weights by validation score and the per-epoch history rows."""

    best_state: dict
    history: list[dict]
    finished: bool = True


def _detached(output: MethodOutput) -> MethodOutput:
    return dataclasses.replace(output, hr=output.hr.detach())


def _fp32(value: Any) -> Any:
    """Floating tensors of a method's output (also inside lists and dicts) as fp32: under bf16
    autocast only the forward pass runs in bf16, the loss against fp32 targets in fp32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, MethodOutput):
        return dataclasses.replace(value, hr=_fp32(value.hr), extras=_fp32(value.extras))
    if isinstance(value, dict):
        return {key: _fp32(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_fp32(item) for item in value)
    return value


def _checked(loss: torch.Tensor, what: str, spec: MethodSpec, epoch: int, step: int, every: int = 1
             ) -> torch.Tensor:
    """``loss`` when it is finite or when this step is not checked (one check every ``every``
    steps: a NaN from an unchecked step reaches the next checked loss through the weights)."""
    if (step + 1) % every == 0 and not torch.isfinite(loss):
        since = f"step {step}" if every == 1 else f"step {step} (checked every {every} steps)"
        raise TrainingError(f"method {spec.id}: non-finite {what} {loss.item()} at epoch {epoch}, {since}; "
                            f"lower methods.{spec.id}.train.lr or check the data")
    return loss


def capped(budget: TrainBudget, max_windows: int | None, n_windows: int) -> TrainBudget:
    """``budget`` limited to one epoch of at most ``max_windows`` windows (``trainer.max_windows``)."""
    if max_windows is None:
        return budget
    return dataclasses.replace(budget, epochs=1, windows_per_epoch=min(budget.windows_drawn(n_windows), max_windows),
                               validate_every=1,
                               checkpoint_every=1, warmup_windows=min(budget.warmup_windows, max_windows))


def epoch_order(train: Windows, draw: str, generator: torch.Generator) -> torch.Tensor:
    """A seeded permutation of the training windows (N,): of single windows (``draw`` =
    "windows"), or of whole trajectories, each keeping its windows consecutive in frame order
    ("trajectories")."""
    if draw == "windows":
        return torch.randperm(len(train), generator=generator)
    trajectories, which = np.unique(train.t, return_inverse=True)
    rank = torch.empty(len(trajectories), dtype=torch.long)
    rank[torch.randperm(len(trajectories), generator=generator)] = torch.arange(len(trajectories))
    return torch.from_numpy(np.lexsort((train.f, rank.numpy()[which])))


def train_method(spec: MethodSpec, trainer: TrainerConfig, physics: PhysicsOperator, train: Windows | None,
                 validate: Callable[[UnmixingMethod], float], checkpoint: Path, device: torch.device, *,
                 seed: int | None = None, progress: bool = True,
                 on_step: Callable[[int, int], None] | None = None,
                 after_epoch: Callable[[list[dict]], bool] | None = None, accept_inputs: bool = False) -> TrainResult:
    """Train the method of ``spec`` on the ``train`` windows from ``seed`` (default: the first of
    ``trainer.seeds``); a non-trainable one is returned as built, with no history (``train`` may
    then be None).

    ``validate(model) -> float`` scores the model (validation CSO-mAP, higher is better).
    ``checkpoint``: file holding the state after the last completed epoch (weights, optimiser,
    torch RNG, position and history); a rerun from the same inputs (:func:`run_inputs`) resumes
    from it, ``accept_inputs`` resumes even when the data, Phi or Q_init differ (a notice names
    them; the settings must match). ``on_step(epoch, step)`` is called before each step (tests use
    it to interrupt a run); ``after_epoch(history)`` is called after every epoch but the last, and
    a true answer ends the run there, unfinished (``finished`` False, a checkpoint written).
    Validation and checkpoints follow ``validate_every`` / ``checkpoint_every`` of the budget
    (an epoch not validated has a NaN score in the history). Each history row holds the epoch, mean training
    loss, validation CSO-mAP, training windows seen, learning rate at the epoch's end and the
    cumulative CPU and wall seconds of training over every resumed part. Inside a process group
    (:func:`pipeline.distributed.start`) the model is wrapped in DDP and each process trains on
    its share of every batch; process 0 validates and writes the checkpoint, and only its result
    holds the best weights.
    """
    seed = trainer.seeds[0] if seed is None else seed
    world = distributed.current()
    if trainer.threads:
        torch.set_num_threads(trainer.threads)
    torch.manual_seed(seed)
    model = build_method(spec, physics, device)
    if spec.train is None:
        return TrainResult(copy.deepcopy(model.state_dict()), [])
    budget = capped(spec.train, trainer.max_windows, len(train))
    adversary = model.adversary()
    if world.size > 1 and adversary is not None:
        raise ConfigError(f"method {spec.id} is adversarial: data-parallel training (torchrun) supports "
                          "methods without a discriminator; run it in one process")
    if budget.batch < world.size:
        raise ConfigError(f"methods.{spec.id}.train.batch = {budget.batch} is invalid with {world.size} "
                          "processes: each needs at least one window of every batch")
    optimizer = torch.optim.Adam(model.generator_parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
    critic = (torch.optim.Adam(adversary.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
              if adversary is not None else None)
    inputs = run_inputs(spec, trainer, physics, train, seed)
    state = _load_checkpoint(checkpoint, inputs, spec.id, accept_inputs)
    start_epoch, history, best_state, best_score = 0, [], None, -math.inf
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if critic is not None:
            critic.load_state_dict(state["critic"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        best_state, best_score = state["best_state"], state["best_score"]
        torch.set_rng_state(state["rng"])
    forward = model
    if world.size > 1:
        forward = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    use_amp = trainer.mixed_precision and device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    # on a GPU the training windows live on it: a step's batch is an index, not a host copy
    lr_all, hr_all = torch.from_numpy(train.lr).to(device), torch.from_numpy(train.hr).to(device)
    drawn = budget.windows_drawn(len(train))
    total = budget.windows_per_run(len(train))
    seen = history[-1]["windows"] if history else 0
    cpu_done, wall_done = (history[-1]["cpu_seconds"], history[-1]["wall_seconds"]) if history else (0.0, 0.0)
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    epochs = tqdm(range(start_epoch, budget.epochs), desc=f"train {spec.id}", unit="epoch",
                  initial=start_epoch, total=budget.epochs, disable=not (progress and world.main))
    for epoch in epochs:
        model.train()
        order = epoch_order(train, budget.draw, torch.Generator().manual_seed(seed * 100_003 + epoch))[:drawn]
        losses = []
        for step, start in enumerate(range(0, drawn, budget.batch)):
            if on_step is not None:
                on_step(epoch, step)
            index = order[start:start + budget.batch]
            if len(index) < world.size:
                continue  # a last batch too small to share out
            lr = budget.lr_at(seen, total)
            for optim in (optimizer, critic):
                for group in optim.param_groups if optim is not None else ():
                    group["lr"] = lr
            seen += len(index)
            index = distributed.shard(index, world).to(device)
            lr_batch, hr_batch = lr_all[index], hr_all[index]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                output = forward(lr_batch)
            if use_amp:
                output = _fp32(output)
            loss, _ = model.loss(output, hr_batch)
            _checked(loss, "loss", spec, epoch, step, trainer.check_every)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if budget.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.generator_parameters(), budget.grad_clip)
            optimizer.step()
            if critic is not None:
                critic.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    critic_loss, _ = model.discriminator_loss(_detached(output), hr_batch)
                critic_loss = critic_loss.float()
                _checked(critic_loss, "discriminator loss", spec, epoch, step, trainer.check_every).backward()
                if budget.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(adversary.parameters(), budget.grad_clip)
                critic.step()
            losses.append(loss.detach())
        cpu_seconds = cpu_done + time.process_time() - cpu_start
        wall_seconds = wall_done + time.perf_counter() - wall_start
        last = epoch + 1 == budget.epochs
        validated = last or (epoch + 1) % budget.validate_every == 0
        score = distributed.from_main(validate(model) if world.main else math.nan, world) if validated else math.nan
        mean_loss = torch.stack(losses).double().mean().item() if losses else math.nan  # one sync an epoch
        history.append({"epoch": epoch, "train_loss": mean_loss, "val_cso_map": score,
                        "windows": seen, "lr": budget.lr_at(max(seen - 1, 0), total),
                        "cpu_seconds": round(cpu_seconds, 1), "wall_seconds": round(wall_seconds, 1)})
        if validated and (score > best_score or best_state is None):
            best_score, best_state = score, copy.deepcopy(model.state_dict())
        epochs.set_postfix(loss=f"{history[-1]['train_loss']:.4g}", val_map=f"{best_score:.2f}")
        stop_now = after_epoch is not None and not last and after_epoch(history)
        if world.main and (last or stop_now or (epoch + 1) % budget.checkpoint_every == 0):
            _save_checkpoint(checkpoint, {"inputs": inputs, "epoch": epoch, "model": model.state_dict(),
                                          "optimizer": optimizer.state_dict(),
                                          "critic": critic.state_dict() if critic is not None else None,
                                          "rng": torch.get_rng_state(), "history": history,
                                          "best_state": best_state, "best_score": best_score})
        if stop_now:
            return TrainResult(best_state, history, finished=False)
    return TrainResult(best_state, history)


def _notice(message: str) -> None:
    print(message, file=sys.stderr)


def _load_checkpoint(path: Path, inputs: dict[str, str], method_id: str, accept_inputs: bool) -> dict | None:
    """The checkpoint at ``path`` if it was made from the same ``inputs`` (or, with
    ``accept_inputs``, the same settings), else None (with a notice naming what differs)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types (unpickling, zip, EOF) for a file it cannot read
        _notice(f"train@{method_id}: ignoring unreadable checkpoint {path} ({type(exc).__name__}); starting afresh")
        return None
    made_from = state.get("inputs") if isinstance(state, dict) else None
    if not isinstance(made_from, dict):
        _notice(f"train@{method_id}: discarding checkpoint {path}: it names no inputs (an older format); "
                "starting afresh")
        return None
    changed = [name for name in inputs if made_from.get(name) != inputs[name]]
    if not changed:
        return state
    if accept_inputs and "settings" not in changed:
        _notice(f"train@{method_id}: resuming {path} although its {', '.join(changed)} differ from this "
                "machine's (accepted)")
        return state
    _notice(f"train@{method_id}: discarding checkpoint {path}: it was made from other inputs "
            f"({', '.join(changed)} differ); starting afresh")
    return None


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(state_bytes(state))


