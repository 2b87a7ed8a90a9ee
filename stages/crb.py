"""Stage crb: the Cramér-Rao bound on the middle-frame positions of the scored test windows and
the CSO-mAP an unbiased single-frame estimator at the bound would reach (params: sensor, evaluate,
crb)."""
import argparse

from pipeline.bound import crb_cso_map
from pipeline.cli import DATASET, run_stage, stage_parser
from pipeline.config import load_params, section
from pipeline.settings import CrbConfig, EvaluateConfig
from pipeline.data import load_split, scored_positions
from pipeline.io import write_json
from pipeline.sensor import Sensor


def main(args: argparse.Namespace) -> None:
    params = load_params()
    sensor = Sensor.from_section(section(params, "sensor"))
    evaluate = EvaluateConfig.from_section(section(params, "evaluate"))
    config = CrbConfig.from_section(section(params, "crb"))
    test = load_split(args.frames, args.targets, args.split, "test")
    truths = test.frame_targets(*scored_positions(test, evaluate.window, evaluate.window_stride))
    write_json(crb_cso_map(truths, sensor, evaluate.distance_thresholds, config.draws, config.seed), args.out)


if __name__ == "__main__":
    run_stage(main, stage_parser(__file__, __doc__, inputs=DATASET, outputs={"out": "bound JSON output"}))
