"""Stage evaluate@<method>: CSO-mAP, PSNR/SSIM, params, FLOPs and FPS on the test split.

Params: train.<method> (to rebuild the method), trainer, evaluate, and the simulate sensor keys
(sensor-aware methods are told how the frames were recorded).
"""
import argparse

import numpy as np

from pipeline.cli import run_stage
from pipeline.config import EvaluateConfig, load_params, section
from pipeline.evaluation import evaluate_method
from pipeline.io import atomic_path, write_json
from pipeline.stage_io import build_evaluable, load_physics, load_windows
from pipeline.training import TrainerConfig, resolve_device


def main(args: argparse.Namespace) -> None:
    params = load_params()
    trainer = TrainerConfig.from_section(section(params, "trainer"))
    evaluate = EvaluateConfig.from_section(section(params, "evaluate"))
    device = resolve_device(trainer.device)
    physics = load_physics(args.phi, args.qinit)
    model = build_evaluable(args.method, params, physics, args.models)
    test, truths = load_windows(args.frames, args.targets, args.split, "test", physics, evaluate.window)
    metrics, curves, maps = evaluate_method(model, test, truths, evaluate, device, trainer.eval_batch,
                                            progress=True)
    write_json({"method": args.method, **metrics}, args.metrics)
    with atomic_path(args.curves) as tmp:
        curves.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(args.predictions) as tmp, tmp.open("wb") as handle:
        np.savez(handle, hr=maps, t=test.t, f=test.f)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="stages/evaluate.py", description=__doc__)
    parser.add_argument("--method", required=True, help="a train entry, or physfit_<network>")
    for name in ("phi", "qinit"):
        parser.add_argument(f"--{name}", required=True, help=f"{name} .npy input")
    for name in ("frames", "targets", "split"):
        parser.add_argument(f"--{name}", required=True, help=f"{name} Parquet input")
    parser.add_argument("--models", required=True, help="folder of trained models (<method>.pt)")
    parser.add_argument("--metrics", required=True, help="metrics JSON output")
    parser.add_argument("--curves", required=True, help="PR-curve CSV output")
    parser.add_argument("--predictions", required=True, help="test HR maps .npz output")
    run_stage(main, parser)
