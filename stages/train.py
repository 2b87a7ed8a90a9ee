"""Stage train@<method>: fit one method, once per seed of trainer.seeds (params: methods.<method>,
trainer, evaluate, sensor, profile).

Data-parallel on several GPUs (or CPU processes, gloo): ``torchrun --nproc_per_node N
stages/train.py <the same arguments>``; process 0 writes the outputs.
"""
import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.cli import DATASET, PHYSICS, run_stage, stage_parser
from pipeline.config import EvaluateConfig, load_params, section
from pipeline.evaluation import predict
from pipeline.io import atomic_path
from pipeline import distributed
from pipeline.metrics import cso_map
from pipeline.runtime import method_spec, resolve_device
from pipeline.sensor import Sensor
from pipeline.stage_io import load_physics, load_windows, save_model
from pipeline.training import TrainerConfig, seed_checkpoint, train_method


def main(args: argparse.Namespace) -> None:
    params = load_params()
    spec = method_spec(section(params, "methods"), args.method)
    trainer = TrainerConfig.from_section(section(params, "trainer"))
    evaluate = EvaluateConfig.from_section(section(params, "evaluate"))
    world, device = distributed.start(resolve_device(trainer.device))
    physics = load_physics(args.phi, args.qinit, Sensor.from_section(section(params, "sensor")))
    dataset = (args.frames, args.targets, args.split)
    train = val = val_truths = None
    if spec.trainable:  # a method with nothing to train is saved as built, without reading the data
        train, _ = load_windows(*dataset, "train", physics, evaluate.window)
        val, val_truths = load_windows(*dataset, "val", physics, evaluate.window)
        if trainer.val_windows is not None and trainer.val_windows < len(val):
            chosen = np.unique(np.linspace(0, len(val) - 1, trainer.val_windows).round().astype(int))
            val, val_truths = val.subset(chosen), [val_truths[i] for i in chosen]

    def validate(model) -> float:
        _, detections = predict(model, val.lr, trainer.eval_batch, device, evaluate.brightness_threshold)
        return cso_map(detections, val_truths, evaluate.distance_thresholds)["cso_map"]

    states, history = {}, []
    seeds = trainer.seeds if spec.trainable else trainer.seeds[:1]
    for seed in seeds:
        result = train_method(spec, trainer, physics, train, validate, seed_checkpoint(args.checkpoint, seed), device,
                              seed=seed)
        states[seed] = result.best_state
        history += [{"seed": seed, **row} for row in result.history]
    if world.main:
        save_model(states, spec.id, dataclasses.asdict(spec), args.model)
        with atomic_path(args.history) as tmp:
            pd.DataFrame(history, columns=["seed", "epoch", "train_loss", "val_cso_map"]).to_csv(tmp, index=False)
        for seed in seeds:
            seed_checkpoint(args.checkpoint, seed).unlink(missing_ok=True)
    distributed.stop()


if __name__ == "__main__":
    run_stage(main, stage_parser(
        __file__, __doc__, inputs=PHYSICS + DATASET, method="a key of params.yaml methods",
        outputs={"model": "trained model output (.pt)", "history": "per-epoch loss / validation CSV output",
                 "checkpoint": "resume checkpoint, one per seed beside it (deleted when training ends)"}))
