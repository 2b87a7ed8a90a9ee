"""Shared command-line plumbing for the stage scripts: one declaration of every input and output
path argument, one error boundary, and one stage at a time per DVC workspace."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from pipeline.errors import ConfigError, DataFileError, TrainingError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent runs are not detected there
    fcntl = None

STAGE_LOCK = Path(".dvc/tmp/seqcsist-stage.lock")  # relative to the workspace DVC runs a stage in

INPUTS = {
    "phi": "Phi .npy, shape (size^2, (c size)^2)",
    "qinit": "Q_init .npy, shape ((c size)^2, size^2)",
    "frames": "frames Parquet",
    "targets": "targets Parquet",
    "split": "split Parquet (trajectory, split)",
    "models": "folder of trained models (<method id>.pt)",
    "metrics_dir": "folder of per-method metrics JSON",
    "predictions_dir": "folder of per-method test HR maps (.npz)",
    "noise_dir": "folder of per-method noise-sweep JSON",
    "oracle": "grid-oracle JSON",
    "crb": "Cramér-Rao bound JSON (stage crb)",
    "priors": "scene priors JSON of the training split (stage priors)",
    "reference": "published Table VII CSV",
}
DATASET = ("frames", "targets", "split")
PHYSICS = ("phi", "qinit")


def stage_parser(script: str, doc: str | None, inputs: Sequence[str] = (),
                 outputs: Mapping[str, str] | None = None, **options: str) -> argparse.ArgumentParser:
    """An argument parser for a stage: ``--<name>`` for each input (help from :data:`INPUTS`),
    each output (name -> help) and each extra required option (name -> help)."""
    parser = argparse.ArgumentParser(prog=f"stages/{Path(script).name}", description=doc)
    for name in inputs:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True, help=f"input: {INPUTS[name]}")
    for name, text in {**(outputs or {}), **options}.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True, help=text)
    return parser


class StageBusy(RuntimeError):
    """Another stage is running in this DVC workspace (a second ``dvc repro`` or ``dvc exp run``)."""


@contextlib.contextmanager
def stage_lock(prog: str, lock: Path = STAGE_LOCK) -> Iterator[None]:
    """Hold the workspace's stage lock while a stage runs: a second ``dvc repro`` started beside a
    running one stops at once (StageBusy naming what runs) and the first keeps its work. DVC itself
    releases its repository lock while a stage's command runs, so without this both would run and
    the first die at its next lock. No lock outside a DVC workspace (no ``.dvc`` folder), in the
    non-zero ranks of a torchrun launch (rank 0 holds it) and where the OS has no ``fcntl``."""
    if fcntl is None or not lock.parent.parent.is_dir() or os.environ.get("RANK", "0") != "0":
        yield
        return
    lock.parent.mkdir(exist_ok=True)
    with lock.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another stage"
            raise StageBusy(f"{holder} is running in this workspace (another dvc repro or dvc exp run); it keeps "
                            f"its work: wait for it to end or stop it, then rerun. Experiments queued with "
                            f"`dvc exp run --queue` run in workspaces of their own") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{prog} (pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')})")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_stage(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser,
              argv: Sequence[str] | None = None) -> None:
    """Parse arguments and run ``main`` under the workspace's stage lock; invalid params, bad data
    files, failed training, rejected values and a stage already running here exit 2 with one clear
    line naming the key, file, value or running stage; Ctrl-C exits 130 with one line saying what
    is kept (outputs are written atomically, training resumes from its checkpoint); a failed write
    (disk full, permissions) names the file."""
    args = parser.parse_args(argv)
    try:
        with stage_lock(parser.prog):
            main(args)
    except (ConfigError, DataFileError, TrainingError, StageBusy, ValueError) as exc:
        print(f"{parser.prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted: no output was written (outputs are renamed into place only when "
              "complete); a training stage keeps its checkpoint of the last completed epoch and resumes from it "
              "when rerun (dvc repro)", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        where = exc.filename or "an output file"
        print(f"{parser.prog}: error: cannot write or read {where}: {exc.strerror or exc} "
              "(disk full or no permission?); nothing was recorded as done", file=sys.stderr)
        sys.exit(2)
