"""Stage train@<method>: fit one method (params: train.<method>, trainer, evaluate)."""
import argparse
import dataclasses
from pathlib import Path

import pandas as pd

from pipeline.cli import run_stage
from pipeline.config import EvaluateConfig, load_params, section
from pipeline.evaluation import predict
from pipeline.io import atomic_path
from pipeline.metrics import cso_map
from pipeline.stage_io import load_physics, load_windows, save_model
from pipeline.training import MethodConfig, TrainerConfig, resolve_device, train_method


def main(args: argparse.Namespace) -> None:
    params = load_params()
    config = MethodConfig.from_section(args.method, section(section(params, "train"), args.method))
    trainer = TrainerConfig.from_section(section(params, "trainer"))
    evaluate = EvaluateConfig.from_section(section(params, "evaluate"))
    device = resolve_device(trainer.device)
    physics = load_physics(args.phi, args.qinit)
    paths = (args.frames, args.targets, args.split)
    train, _ = load_windows(*paths, "train", physics, evaluate.window)
    train = train.every(trainer.train_window_stride)
    val, val_truths = load_windows(*paths, "val", physics, evaluate.window)

    def validate(model) -> float:
        _, detections = predict(model, val.lr, trainer.eval_batch, device, evaluate.brightness_threshold)
        return cso_map(detections, val_truths, evaluate.distance_thresholds)["cso_map"]

    checkpoint = Path(args.checkpoint)
    result = train_method(config, trainer, physics, train, validate, checkpoint)
    save_model(result.best_state, args.method, dataclasses.asdict(config), args.model)
    with atomic_path(args.history) as tmp:
        pd.DataFrame(result.history, columns=["epoch", "train_loss", "val_cso_map"]).to_csv(tmp, index=False)
    checkpoint.unlink(missing_ok=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="stages/train.py", description=__doc__)
    parser.add_argument("--method", required=True, help="registered method id")
    for name in ("phi", "qinit"):
        parser.add_argument(f"--{name}", required=True, help=f"{name} .npy input")
    for name in ("frames", "targets", "split"):
        parser.add_argument(f"--{name}", required=True, help=f"{name} Parquet input")
    parser.add_argument("--model", required=True, help="trained model output (.pt)")
    parser.add_argument("--history", required=True, help="per-epoch loss / validation CSV output")
    parser.add_argument("--checkpoint", required=True, help="resume checkpoint (deleted when training ends)")
    run_stage(main, parser)
