"""Shared command-line plumbing for the stage scripts."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from pipeline.config import ConfigError
from pipeline.io import DataFileError


def run_stage(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser,
              argv: Sequence[str] | None = None) -> None:
    """Parse arguments and run ``main``; invalid params or data files exit 2 with one clear line."""
    args = parser.parse_args(argv)
    try:
        main(args)
    except (ConfigError, DataFileError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
