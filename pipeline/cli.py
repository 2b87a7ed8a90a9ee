"""Shared command-line plumbing for the stage scripts: one declaration of every input and output
path argument, and one error boundary."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

from pipeline.errors import ConfigError, DataFileError, TrainingError

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


def run_stage(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser,
              argv: Sequence[str] | None = None) -> None:
    """Parse arguments and run ``main``; invalid params, bad data files, failed training and
    rejected values exit 2 with one clear line naming the key, file or value; Ctrl-C exits 130
    with one line saying what is kept (outputs are written atomically, training resumes from its
    checkpoint); a failed write (disk full, permissions) names the file."""
    args = parser.parse_args(argv)
    try:
        main(args)
    except (ConfigError, DataFileError, TrainingError, ValueError) as exc:
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
