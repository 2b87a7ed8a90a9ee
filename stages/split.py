"""Stage split: trajectory-level train/val/test membership (params: split)."""
import argparse

from pipeline.cli import run_stage
from pipeline.config import SplitConfig, load_params, section
from pipeline.io import frame_index, write_table
from pipeline.split import make_split


def main(args: argparse.Namespace) -> None:
    config = SplitConfig.from_section(section(load_params(), "split"))
    write_table(make_split(frame_index(args.frames), config), args.out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="stages/split.py", description=__doc__)
    parser.add_argument("--frames", required=True, help="frames Parquet input")
    parser.add_argument("--out", required=True, help="split Parquet output (trajectory, split)")
    run_stage(main, parser)
