"""Stage priors: the scene priors PhysFit uses, measured on the annotated training split
(brightness range, target counts, group size, PSF std, background level; params: sensor, priors).
Written as JSON to be read beside the simulator's settings."""
import argparse

from pipeline.cli import DATASET, run_stage, stage_parser
from pipeline.config import load_params, section
from pipeline.settings import PriorsConfig
from pipeline.data import load_split
from pipeline.io import write_json
from pipeline.priors import estimate_priors
from pipeline.sensor import Sensor


def main(args: argparse.Namespace) -> None:
    params = load_params()
    sensor = Sensor.from_section(section(params, "sensor"))
    config = PriorsConfig.from_section(section(params, "priors"))
    train = load_split(args.frames, args.targets, args.split, "train")
    write_json(estimate_priors(train, sensor, config.psf_frames).to_dict(), args.out)


if __name__ == "__main__":
    run_stage(main, stage_parser(__file__, __doc__, inputs=DATASET, outputs={"out": "scene priors JSON output"}))
