"""Stage evaluate@<method>: CSO-mAP, PSNR/SSIM, params, FLOPs and FPS on the test split.

Params: methods.<method> (to rebuild it), trainer, evaluate, sensor (how the frames were
recorded, which the physics object carries), profile.
"""
import argparse

import numpy as np

from pipeline.cli import DATASET, PHYSICS, run_stage, stage_parser
from pipeline.config import EvaluateConfig, load_params, section
from pipeline.evaluation import evaluate_method, pack_detections
from pipeline.io import atomic_path, write_json
from pipeline.runtime import build_for_evaluation, resolve_device
from pipeline.sensor import Sensor
from pipeline.stage_io import load_physics, load_windows
from pipeline.training import TrainerConfig


def main(args: argparse.Namespace) -> None:
    params = load_params()
    trainer = TrainerConfig.from_section(section(params, "trainer"))
    evaluate = EvaluateConfig.from_section(section(params, "evaluate"))
    device = resolve_device(trainer.device)
    physics = load_physics(args.phi, args.qinit, Sensor.from_section(section(params, "sensor")))
    model = build_for_evaluation(args.method, section(params, "methods"), physics, args.models, device)
    test, truths = load_windows(args.frames, args.targets, args.split, "test", physics, evaluate.window,
                                evaluate.window_stride)
    metrics, curves, maps, detections = evaluate_method(model, test, truths, evaluate, device,
                                                        trainer.eval_batch, progress=True)
    write_json({"method": args.method, **metrics}, args.metrics)
    with atomic_path(args.curves) as tmp:
        curves.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(args.predictions) as tmp, tmp.open("wb") as handle:
        np.savez(handle, hr=maps, t=test.t, f=test.f, **pack_detections(detections))


if __name__ == "__main__":
    run_stage(main, stage_parser(
        __file__, __doc__, inputs=PHYSICS + DATASET + ("models",),
        method="a key of params.yaml methods, or physfit_<network>",
        outputs={"metrics": "metrics JSON output", "curves": "PR-curve CSV output",
                 "predictions": "test HR maps and detections (.npz) output"}))
