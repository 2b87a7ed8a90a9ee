"""Where a stage computes: ``trainer.device`` (auto | cpu | cuda) resolved once per stage, and
why CUDA is not usable when it is asked for."""
from __future__ import annotations

import sys

import torch

from pipeline.config import ConfigError
from pipeline.settings import DEVICES



def cuda_diagnosis() -> str:
    """Why CUDA is not usable here, naming the torch build and what it needs."""
    built = torch.version.cuda
    if built is None:
        return (f"torch {torch.__version__} is a CPU build; install a CUDA build "
                "(pip install torch==<version> from the CUDA index) on a machine with an NVIDIA GPU")
    return (f"torch {torch.__version__} is built for CUDA {built} and found no usable GPU: it needs an NVIDIA "
            f"GPU and a driver that supports CUDA {built} (nvidia-smi shows the driver's CUDA version; "
            "CUDA_VISIBLE_DEVICES must not hide the GPU)")


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when usable, else cpu with a one-line notice on a CUDA build; 'cuda' without
    a usable GPU is a ConfigError that says what the torch build needs."""
    if device not in DEVICES:
        raise ConfigError(f"trainer.device = {device!r} is invalid: allowed values are {list(DEVICES)}")
    usable = torch.cuda.is_available()
    if device == "auto":
        if not usable and torch.version.cuda is not None:
            print("trainer.device = auto: no usable CUDA device, running on the CPU", file=sys.stderr)
        return torch.device("cuda" if usable else "cpu")
    if device == "cuda" and not usable:
        raise ConfigError(f"trainer.device = 'cuda' is invalid here: {cuda_diagnosis()}; "
                          "set trainer.device to cpu (or auto) to run on the CPU on purpose")
    return torch.device(device)
