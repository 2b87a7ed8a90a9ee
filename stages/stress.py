"""Stage stress: PhysFit and a trained network on shifted scenes (reports/tables/stress.md).

Each shift changes some keys of the ``simulate`` and ``sensor`` sections (brightness, distance,
layout, target count, background, PSF width); its test frames are simulated afresh with
``stress.seed`` and scored with the evaluation protocol. The methods were trained (or, PhysFit,
given its scene priors) on the default data, and the physics object they receive keeps the
default sensor: a PSF shift is a sensor that is not what its calibration says. The grid-oracle
bound of each shift is printed beside. Params: stress, simulate, sensor, methods, trainer,
evaluate, profile.
"""
import argparse
import dataclasses

import numpy as np
import pandas as pd

from pipeline.cli import PHYSICS, run_stage, stage_parser
from pipeline.config import PROFILES, load_params, section
from pipeline.settings import EvaluateConfig, StressConfig, TrainerConfig
from pipeline.device import resolve_device
from pipeline.data import load_split_tables, make_windows
from pipeline.evaluation import evaluate_method, grid_oracle
from pipeline.io import atomic_path, write_json
from pipeline.method_specs import build_for_evaluation, method_label
from pipeline.reports import stress_markdown
from pipeline.sensor import Sensor
from pipeline.simulate import simulate
from pipeline.stage_io import load_physics, load_priors

PHYSFIT = "physfit"


def main(args: argparse.Namespace) -> None:
    params = load_params()
    methods = section(params, "methods")
    stress = StressConfig.from_section(section(params, "stress"), methods=list(methods))
    scenes = stress.scenes(section(params, "simulate"), section(params, "sensor"))
    sensor = Sensor.from_section(section(params, "sensor"))
    trainer = TrainerConfig.from_section(section(params, "trainer"))
    evaluate = dataclasses.replace(EvaluateConfig.from_section(section(params, "evaluate")),
                                   window_stride=stress.window_stride)
    shifted_sensors = [Sensor.from_section(recorder, f"stress.shifts.{label}.sensor") for label, _, recorder in scenes]
    device = resolve_device(trainer.device)
    physics = load_physics(args.phi, args.qinit, sensor)
    priors = load_priors(args.priors)
    rows = []
    for (label, scene, _), recorder in zip(scenes, shifted_sensors):
        frames, targets = simulate(scene, recorder)
        split = pd.DataFrame({"trajectory": np.arange(scene.trajectories), "split": "test"})
        test = load_split_tables(frames, targets, split, "test")
        windows = make_windows(test, physics.grid, evaluate.window, evaluate.window_stride)
        truths = test.frame_targets(windows.t, windows.f)
        row = {"shift": label, "windows": int(len(windows)),
               "grid_oracle": grid_oracle(test, physics.grid, evaluate)["brightness"]["cso_map"], "methods": {}}
        for method_id in (PHYSFIT, stress.network):
            model = build_for_evaluation(method_id, methods, physics, args.models, device, priors=priors)
            metrics = evaluate_method(model, windows, truths, evaluate, device, trainer.eval_batch)[0]
            row["methods"][method_id] = {key: metrics[key] for key in evaluate.score_keys}
            if getattr(model, "calibrated_sigma", None) is not None:
                row["physfit_psf_sigma"] = model.calibrated_sigma
        rows.append(row)
    labels = {method_id: method_label(method_id, methods)[1] for method_id in (PHYSFIT, stress.network)}
    write_json({"trajectories": stress.trajectories, "window_stride": stress.window_stride, "seed": stress.seed,
                "rows": rows}, args.out)
    with atomic_path(args.table) as tmp:
        tmp.write_text(stress_markdown(rows, labels, params.get("profile", PROFILES[0]), stress))


if __name__ == "__main__":
    run_stage(main, stage_parser(__file__, __doc__, inputs=PHYSICS + ("models", "priors"),
                                 outputs={"out": "stress metrics JSON output", "table": "stress table Markdown output"}))
