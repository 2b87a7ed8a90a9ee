"""Stage train@<method>: fit one method, once per seed of trainer.seeds (params: methods.<method>,
trainer, evaluate, sensor, profile).

Data-parallel on several GPUs (or CPU processes, gloo): ``python -m pipeline.launch --standalone
--nproc_per_node N -m stages.train <the same arguments>`` (torchrun's arguments, one line when a
process fails); process 0 writes the outputs.
"""
import argparse
import dataclasses
from pathlib import Path

import pandas as pd

from pipeline.cli import DATASET, PHYSICS, run_stage, stage_parser
from pipeline.config import ConfigError, load_params, section
from pipeline.settings import EvaluateConfig, TrainerConfig
from pipeline.device import resolve_device
from pipeline.evaluation import validation_scorer
from pipeline.io import atomic_path
from pipeline import distributed
from pipeline.method_specs import check_profile_requirements, method_spec
from pipeline.sensor import Sensor
from pipeline.stage_io import load_physics, load_saved_model, load_training_windows, save_model
from pipeline.zoo import verified_entry
from pipeline.training import seed_checkpoint, train_method

HISTORY_COLUMNS = ["seed", "epoch", "windows", "train_loss", "val_cso_map"]


def main(args: argparse.Namespace) -> None:
    params = load_params()
    spec = method_spec(section(params, "methods"), args.method)
    check_profile_requirements(spec, params.get("profile", "laptop"))
    trainer = TrainerConfig.from_section(section(params, "trainer"))
    evaluate = EvaluateConfig.from_section(section(params, "evaluate"))
    world, device = distributed.start(resolve_device(trainer.device))
    physics = load_physics(args.phi, args.qinit, Sensor.from_section(section(params, "sensor")))
    if spec.weights is not None:
        if world.main:
            install_zoo_weights(spec, args.model, args.history)
        distributed.stop()
        return
    dataset = (args.frames, args.targets, args.split)
    train = val = val_truths = None
    if spec.trainable:  # a method with nothing to train is saved as built, without reading the data
        train, val, val_truths = load_training_windows(*dataset, physics, evaluate.window, trainer.val_windows)

    validate = validation_scorer(val, val_truths, evaluate, trainer.eval_batch, device) if spec.trainable else None
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
            pd.DataFrame(history, columns=HISTORY_COLUMNS).to_csv(tmp, index=False)
        for seed in seeds:
            seed_checkpoint(args.checkpoint, seed).unlink(missing_ok=True)
    distributed.stop()


def install_zoo_weights(spec, model_out: Path, history_out: Path) -> None:
    """``methods.<id>.weights``: the zoo file's weights (sha256 checked against zoo/metafile.yml,
    method and architecture against ``spec``) written as the stage's model, with an empty
    training history (the zoo entry records how the weights were trained)."""
    entry = verified_entry(spec.weights)
    key = f"methods.{spec.id}.weights"
    if entry.get("method") != spec.name:
        raise ConfigError(f"{key} = {spec.weights!r}: the file holds {entry.get('method')!r} weights, not {spec.name!r}")
    if entry.get("architecture") != spec.model:
        raise ConfigError(f"{key} = {spec.weights!r}: trained with model {entry.get('architecture')!r}, "
                          f"but methods.{spec.id}.model is {spec.model!r}")
    saved = load_saved_model(spec.weights, spec.name)
    save_model(saved["states"], spec.id, dataclasses.asdict(spec), model_out)
    with atomic_path(history_out) as tmp:
        pd.DataFrame([], columns=HISTORY_COLUMNS).to_csv(tmp, index=False)
    print(f"train@{spec.id}: installed zoo weights {spec.weights} (sha256 {entry['sha256'][:12]}, "
          f"{entry.get('training', {}).get('windows_seen', '?')} training windows); no training")


if __name__ == "__main__":
    run_stage(main, stage_parser(
        __file__, __doc__, inputs=PHYSICS + DATASET, method="a key of params.yaml methods",
        outputs={"model": "trained model output (.pt)", "history": "per-epoch loss / validation CSV output",
                 "checkpoint": "resume checkpoint, one per seed beside it (deleted when training ends)"}))
