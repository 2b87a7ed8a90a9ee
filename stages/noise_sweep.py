"""Stage noise_sweep@<method>: CSO-mAP of one method against additive noise (the paper's Table V protocol).

Simulated data is simulated again for each sigma with the same seed (same trajectories, targets
and split) and only the sensor noise changed; imported data gets seeded noise added to its test
frames, which the sensor then records again. The method, trained on the default data, is scored
on the noisy test split and sees the noisy sensor through the physics object. The tables stage
collects every method's sweep into reports/tables/noise_sweep.md.
Params: noise_sweep, data, simulate, sensor, methods.<method> (and its network), trainer, evaluate, profile.
"""
import argparse

import numpy as np

from pipeline.cli import DATASET, PHYSICS, run_stage, stage_parser
from pipeline.config import load_params, section
from pipeline.settings import DataConfig, EvaluateConfig, NoiseSweepConfig, SimulateConfig, TrainerConfig
from pipeline.device import resolve_device
from pipeline.data import SplitData, load_split, load_split_tables, make_windows
from pipeline.evaluation import evaluate_method
from pipeline.io import read_table, write_json
from pipeline.method_specs import build_for_evaluation
from pipeline.sensor import Sensor
from pipeline.simulate import simulate
from pipeline.stage_io import load_physics, load_priors


def noisy_test_split(sigma: float, data: DataConfig, scene: SimulateConfig, sensor: Sensor, seed: int,
                     args: argparse.Namespace) -> SplitData:
    """The test split recorded by ``sensor`` with additive noise ``sigma`` (counts)."""
    noisy = sensor.with_noise(sigma)
    if data.source == "simulate":
        frames, targets = simulate(scene, noisy)
        return load_split_tables(frames, targets, read_table(args.split, ("trajectory", "split")), "test")
    test = load_split(args.frames, args.targets, args.split, "test")
    test.images = noisy.record(test.images, np.random.default_rng([seed, round(sigma * 1000)]))
    return test


def main(args: argparse.Namespace) -> None:
    params = load_params()
    sweep = NoiseSweepConfig.from_section(section(params, "noise_sweep"))
    data = DataConfig.from_section(section(params, "data"))
    scene = SimulateConfig.from_section(section(params, "simulate"))
    sensor = Sensor.from_section(section(params, "sensor"))
    trainer = TrainerConfig.from_section(section(params, "trainer"))
    evaluate = EvaluateConfig.from_section(section(params, "evaluate"))
    device = resolve_device(trainer.device)
    base = load_physics(args.phi, args.qinit, sensor)
    priors = load_priors(args.priors)
    rows = []
    for sigma in sweep.sigmas:
        physics = base.with_sensor(sensor.with_noise(sigma))
        test = noisy_test_split(sigma, data, scene, sensor, sweep.seed, args)
        windows = make_windows(test, physics.grid, evaluate.window, sweep.window_stride)
        model = build_for_evaluation(args.method, section(params, "methods"), physics, args.models, device,
                                     priors=priors)
        metrics = evaluate_method(model, windows, test.frame_targets(windows.t, windows.f), evaluate, device,
                                  trainer.eval_batch)[0]
        rows.append({"noise_sigma": sigma, "windows": len(windows), "cso_map": metrics["cso_map"],
                     **{key: metrics[key] for key in metrics if key.startswith("ap")}})
    write_json({"method": args.method, "window_stride": sweep.window_stride, "rows": rows}, args.out)


if __name__ == "__main__":
    run_stage(main, stage_parser(__file__, __doc__, inputs=PHYSICS + DATASET + ("models", "priors"),
                                 method="a key of params.yaml methods, or physfit_<network>",
                                 outputs={"out": "this method's sweep JSON output"}))
