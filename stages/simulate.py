"""Stage simulate: the dataset tables, simulated or imported (params: data, simulate)."""
import argparse

from pipeline.cli import run_stage
from pipeline.config import DataConfig, SimulateConfig, load_params, section
from pipeline.io import DataFileError, read_official_tree, write_frames, write_table
from pipeline.simulate import simulate


def main(args: argparse.Namespace) -> None:
    params = load_params()
    data = DataConfig.from_section(section(params, "data"))
    config = SimulateConfig.from_section(section(params, "simulate"))
    if data.source == "official":
        frames, targets = read_official_tree(data.official_root, config.frames, progress=True)
        size = round(len(frames["image"].iat[0]) ** 0.5)
        if size != config.size:
            raise DataFileError(f"{data.official_root}: frames are {size}x{size} but simulate.size = {config.size}")
    else:
        frames, targets = simulate(config)
    write_frames(frames, args.frames)
    write_table(targets, args.targets)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="stages/simulate.py", description=__doc__)
    parser.add_argument("--frames", required=True, help="frames Parquet output")
    parser.add_argument("--targets", required=True, help="targets Parquet output")
    run_stage(main, parser)
