"""Stage split: trajectory-level train/val/test membership (params: split)."""
import argparse

from pipeline.cli import run_stage, stage_parser
from pipeline.config import load_params, section
from pipeline.settings import SplitConfig
from pipeline.io import frame_index, write_table
from pipeline.split import make_split


def main(args: argparse.Namespace) -> None:
    config = SplitConfig.from_section(section(load_params(), "split"))
    write_table(make_split(frame_index(args.frames), config), args.out)


if __name__ == "__main__":
    run_stage(main, stage_parser(__file__, __doc__, inputs=("frames",),
                                 outputs={"out": "split Parquet output (trajectory, split)"}))
