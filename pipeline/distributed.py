"""Data-parallel training across processes with torch's own engine (DDP, started by ``torchrun``).

``python -m pipeline.launch --nproc_per_node N -m stages.train ...`` (torchrun, :mod:`pipeline.launch`)
starts N copies of a stage; each reads
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` from the environment, :func:`start` joins them into one
process group (NCCL on CUDA, gloo on CPU) and gives each its device. The trainer then wraps the
model in :class:`~torch.nn.parallel.DistributedDataParallel`: every process draws the same
seeded batch order and trains on its own share of each batch (:func:`shard`), DDP averages the
gradients, so the N processes take the optimiser step of one process on the whole batch (up
to float rounding). Process 0 validates, keeps the best weights and writes every output.
"""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among ``size`` training processes (size 1: no process group)."""

    size: int = 1
    rank: int = 0

    @property
    def main(self) -> bool:
        """Process 0: the one that validates and writes outputs."""
        return self.rank == 0


def current() -> World:
    """The initialised process group's size and this rank, or a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_world_size(), dist.get_rank())
    return World()


def start(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group ``torchrun`` describes in the environment (nothing when
    ``WORLD_SIZE`` is unset or 1) and return it with this process's device (``cuda:LOCAL_RANK``
    on CUDA)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return current(), device


def stop() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(index: torch.Tensor, world: World) -> torch.Tensor:
    """This process's share of one batch's window indices: every ``size``-th from its rank."""
    return index[world.rank::world.size]


def from_main(value: float, world: World) -> float:
    """``value`` as process 0 has it, on every process (a validation score)."""
    if world.size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
