"""Stage export_official: the official per-frame layout (PNG + COS XML) packed as one .tar.gz.

Params: simulate.psf_sigma (written in every XML) and simulate.bit_depth (PNG depth).
"""
import argparse

from pipeline.cli import run_stage
from pipeline.config import SimulateConfig, load_params, section
from pipeline.io import read_frames, read_table, read_targets, write_official_archive


def main(args: argparse.Namespace) -> None:
    config = SimulateConfig.from_section(section(load_params(), "simulate"))
    frames = read_frames(args.frames)
    name = f"track_{frames['trajectory'].nunique()}_{frames['frame'].nunique()}"
    write_official_archive(frames, read_targets(args.targets), read_table(args.split, ("trajectory", "split")),
                           args.out, sigma=config.psf_sigma, bit_depth=config.bit_depth,
                           dataset_dir=name, progress=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="stages/export_official.py", description=__doc__)
    for name in ("frames", "targets", "split"):
        parser.add_argument(f"--{name}", required=True, help=f"{name} Parquet input")
    parser.add_argument("--out", required=True, help="archive output (.tar.gz)")
    run_stage(main, parser)
