"""Stage simulate: the dataset tables, simulated or imported (params: data, simulate, sensor)."""
import argparse

from pipeline.cli import run_stage, stage_parser
from pipeline.config import load_params, section
from pipeline.settings import DataConfig, SimulateConfig
from pipeline.io import write_frames, write_table
from pipeline.official import read_official_tree
from pipeline.sensor import Sensor
from pipeline.simulate import simulate


def main(args: argparse.Namespace) -> None:
    params = load_params()
    data = DataConfig.from_section(section(params, "data"))
    config = SimulateConfig.from_section(section(params, "simulate"))
    sensor = Sensor.from_section(section(params, "sensor"))
    if data.source == "official":
        frames, targets = read_official_tree(data.official_root, config.frames, bit_depth=sensor.bit_depth,
                                             size=sensor.frame_size, psf_sigma=sensor.psf_sigma, progress=True)
    else:
        frames, targets = simulate(config, sensor)
    write_frames(frames, args.frames)
    write_table(targets, args.targets)


if __name__ == "__main__":
    run_stage(main, stage_parser(__file__, __doc__, outputs={"frames": "frames Parquet output",
                                                             "targets": "targets Parquet output"}))
