"""Stage export_official: the official per-frame layout (PNG + COS XML) packed as one .tar.gz.

Params: sensor.psf_sigma (written in every XML) and sensor.bit_depth (PNG depth).
"""
import argparse

from pipeline.cli import DATASET, run_stage, stage_parser
from pipeline.config import load_params, section
from pipeline.io import read_frames, read_table, read_targets
from pipeline.official import write_official_archive
from pipeline.sensor import Sensor


def main(args: argparse.Namespace) -> None:
    sensor = Sensor.from_section(section(load_params(), "sensor"))
    frames = read_frames(args.frames)
    name = f"track_{frames['trajectory'].nunique()}_{frames['frame'].nunique()}"
    write_official_archive(frames, read_targets(args.targets), read_table(args.split, ("trajectory", "split")),
                           args.out, sigma=sensor.psf_sigma, bit_depth=sensor.bit_depth,
                           dataset_dir=name, progress=True)


if __name__ == "__main__":
    run_stage(main, stage_parser(__file__, __doc__, inputs=DATASET, outputs={"out": "archive output (.tar.gz)"}))
