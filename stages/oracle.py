"""Stage oracle: the grid-oracle CSO-mAP bound on the test split (params: evaluate)."""
import argparse

from pipeline.cli import DATASET, run_stage, stage_parser
from pipeline.config import load_params, section
from pipeline.settings import EvaluateConfig
from pipeline.coords import Grid
from pipeline.data import load_split
from pipeline.evaluation import grid_oracle
from pipeline.io import load_array, write_json


def main(args: argparse.Namespace) -> None:
    config = EvaluateConfig.from_section(section(load_params(), "evaluate"))
    grid = Grid.from_phi(load_array(args.phi))
    test = load_split(args.frames, args.targets, args.split, "test")
    write_json(grid_oracle(test, grid, config), args.out)


if __name__ == "__main__":
    run_stage(main, stage_parser(__file__, __doc__, inputs=("phi", *DATASET), outputs={"out": "bound JSON output"}))
