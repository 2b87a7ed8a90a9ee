"""Stage evaluate@<method>: CSO-mAP, PSNR/SSIM, params, FLOPs and FPS on the test split.

Params: methods.<method> (to rebuild it), trainer, evaluate, sensor (how the frames were
recorded, which the physics object carries), profile. A method trained on several seeds is scored
once per seed: the metrics are their mean with ``<metric>_std`` beside it; the PR curves and
predictions are the first seed's.
"""
import argparse

import numpy as np

from pipeline.cli import DATASET, PHYSICS, run_stage, stage_parser
from pipeline.config import load_params, section
from pipeline.settings import EvaluateConfig, TrainerConfig
from pipeline.device import resolve_device
from pipeline.evaluation import combine_seeds, evaluate_method, pack_detections
from pipeline.io import atomic_path, write_json
from pipeline.method_specs import build_for_evaluation, model_path, trained_network
from pipeline.sensor import Sensor
from pipeline.stage_io import load_physics, load_priors, load_windows, saved_seeds


def main(args: argparse.Namespace) -> None:
    params = load_params()
    trainer = TrainerConfig.from_section(section(params, "trainer"))
    evaluate = EvaluateConfig.from_section(section(params, "evaluate"))
    device = resolve_device(trainer.device)
    physics = load_physics(args.phi, args.qinit, Sensor.from_section(section(params, "sensor")))
    methods = section(params, "methods")
    priors = load_priors(args.priors)
    network = trained_network(args.method, methods)
    seeds = [None] if network is None else saved_seeds(model_path(args.models, network), network)
    test, truths = load_windows(args.frames, args.targets, args.split, "test", physics, evaluate.window,
                                evaluate.window_stride)
    scored = []
    for seed in seeds:
        model = build_for_evaluation(args.method, methods, physics, args.models, device, seed, priors)
        scored.append(evaluate_method(model, test, truths, evaluate, device, trainer.eval_batch, progress=True))
    metrics = combine_seeds([result[0] for result in scored], seeds, evaluate.score_keys)
    _, curves, maps, detections = scored[0]
    write_json({"method": args.method, **metrics}, args.metrics)
    with atomic_path(args.curves) as tmp:
        curves.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(args.predictions) as tmp, tmp.open("wb") as handle:
        np.savez(handle, hr=maps, t=test.t, f=test.f, **pack_detections(detections))


if __name__ == "__main__":
    run_stage(main, stage_parser(
        __file__, __doc__, inputs=PHYSICS + DATASET + ("models", "priors"),
        method="a key of params.yaml methods, or physfit_<network>",
        outputs={"metrics": "metrics JSON output", "curves": "PR-curve CSV output",
                 "predictions": "test HR maps and detections (.npz) output"}))
