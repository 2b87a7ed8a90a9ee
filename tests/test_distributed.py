"""Data-parallel training (DDP) on CPU: two gloo processes take the same steps as one process."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from physics_helpers import on_grid_windows
from pipeline import distributed
from pipeline.method_specs import MethodSpec, build_method
from pipeline.settings import TrainBudget, TrainerConfig
from pipeline.training import train_method

ROOT = Path(__file__).resolve().parents[1]


TRAINER = TrainerConfig(device="cpu", seeds=(5,), mixed_precision=False, eval_batch=64, threads=1, val_windows=None)
SPECS = {  # batch 16 of 48 windows: three full steps an epoch, 8 windows a process under DDP
    "srcnn": MethodSpec("srcnn", "srcnn", "srcnn.py", {}, TrainBudget(2, None, 16, 1e-3, 0.0)),
    "ista_net": MethodSpec("ista_net", "ista_net", "istanet.py", {"phases": 2}, TrainBudget(2, None, 16, 1e-3, 0.0)),
}
# Stated tolerance: after 6 Adam steps every weight tensor of the two-process run is within 0.1% of
# its largest magnitude of the one-process run's. Float32 rounding of the gradient average (SRCNN:
# 1.2e-7 apart) can move a pre-activation across ISTA-Net's soft threshold, which Adam's
# normalised step then carries (measured 2.2e-4 on a step size of 0.50, 4.4e-4 relative).
TOLERANCE = 1e-3


def _validate(model) -> float:
    return -float(sum(p.detach().abs().sum() for p in model.parameters()))


def _train(method: str, folder: str) -> dict:
    physics, windows = on_grid_windows()
    result = train_method(SPECS[method], TRAINER, physics, windows, _validate,
                          os.path.join(folder, f"checkpoint{distributed.current().rank}.pt"),
                          torch.device("cpu"), progress=False)
    return {"state": result.best_state, "history": result.history}


def _worker(rank: int, world: int, method: str, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(folder, 'rendezvous')}",
                            rank=rank, world_size=world)
    try:
        result = _train(method, folder)
        if rank == 0:
            torch.save(result, os.path.join(folder, "ddp.pt"))
    finally:
        distributed.stop()


@pytest.mark.parametrize("method", list(SPECS))
def test_two_gloo_processes_train_like_one(method, tmp_path):
    mp.spawn(_worker, args=(2, method, str(tmp_path)), nprocs=2, join=True)
    parallel = torch.load(tmp_path / "ddp.pt", weights_only=False)
    (tmp_path / "single").mkdir()
    single = _train(method, str(tmp_path / "single"))  # its own folder: not resumed from the DDP checkpoint
    assert set(parallel["state"]) == set(single["state"])
    relative = {k: float((parallel["state"][k].float() - weight.float()).abs().max() / weight.float().abs().max())
                for k, weight in single["state"].items() if weight.is_floating_point() and weight.abs().max() > 0}
    assert max(relative.values()) < TOLERANCE, max(relative.items(), key=lambda item: item[1])
    moved = {k: float((single["state"][k].float() - initial.float()).abs().max() / single["state"][k].float().abs().max())
             for k, initial in _initial_state(method).items() if k in relative}
    assert max(moved.values()) > 10 * TOLERANCE  # the runs did train: the agreement is not of untouched weights
    for ours, theirs in zip(parallel["history"], single["history"]):
        assert math.isclose(ours["val_cso_map"], theirs["val_cso_map"], rel_tol=1e-5)  # process 0 validated
    # process 0 saw only its half of each batch (its loss differs), yet the synchronised gradients
    # took the whole batch's steps
    assert any(ours["train_loss"] != theirs["train_loss"] for ours, theirs in zip(parallel["history"], single["history"]))


def _initial_state(method: str) -> dict:
    physics, _ = on_grid_windows()
    torch.manual_seed(TRAINER.seeds[0])
    return build_method(SPECS[method], physics).state_dict()


def test_a_single_process_has_no_world_and_shards_nothing():
    assert distributed.current() == distributed.World(1, 0) and distributed.World().main
    index = torch.arange(10)
    assert torch.equal(distributed.shard(index, distributed.World()), index)
    assert distributed.shard(index, distributed.World(2, 1)).tolist() == [1, 3, 5, 7, 9]
    assert distributed.from_main(2.5, distributed.World()) == 2.5
    world, device = distributed.start(torch.device("cpu"))  # WORLD_SIZE unset: no process group
    assert world.size == 1 and device.type == "cpu" and not dist.is_initialized()


def test_device_placement_without_a_gpu(monkeypatch):
    """What torchrun on GPUs does, checked with the CUDA calls stubbed: each process takes
    cuda:LOCAL_RANK and joins with NCCL; on CPU it keeps the CPU and joins with gloo."""
    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.setdefault("device", device))
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.setdefault("backend", backend))
    monkeypatch.setattr(dist, "is_initialized", lambda: "backend" in calls)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    world, device = distributed.start(torch.device("cuda"))
    assert device == torch.device("cuda", 1) and calls == {"device": device, "backend": "nccl"}
    assert world == distributed.World(2, 1) and not world.main
    calls.clear()
    world, device = distributed.start(torch.device("cpu"))
    assert device.type == "cpu" and calls == {"backend": "gloo"}


def test_auto_device_picks_cuda_when_present(monkeypatch):
    from pipeline.config import ConfigError
    from pipeline.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="trainer.device = 'cuda'"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda" and resolve_device("cpu").type == "cpu"


def test_the_paper_profile_without_cuda_stops_every_stage_at_once(monkeypatch, tmp_path):
    """profile: paper asks for trainer.device cuda; without a usable GPU, loading the params
    (the first thing every stage does) stops with what the torch build needs."""
    from pipeline.config import ConfigError, load_params

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    params = (ROOT / "params.yaml").read_text().replace("profile: laptop ", "profile: paper  ", 1)
    (tmp_path / "params.yaml").write_text(params)
    with pytest.raises(ConfigError, match=r"trainer.device = 'cuda' is invalid here: torch .* (CPU build|built for CUDA)"):
        load_params(tmp_path / "params.yaml")
    assert load_params(ROOT / "params.yaml")["trainer"]["device"] == "auto"  # the laptop profile
