"""Benchmark of the continuous physics fit (pipeline.methods.physfit) with CSO-mAP.

Simulates trajectories with the project's simulator (the simulate and sensor sections of
params.yaml, fewer trajectories and another seed), builds the 5-frame windows of the evaluation
protocol and scores, per sensor setting:

* single: ``fit_frames`` on the middle frames alone;
* multi:  ``fit_windows`` on the 5-frame windows (joint rigid-motion fit, middle frame reported);

each as pure physics (variant "physics": default PhysFitSettings) and with the optional SeqCSIST
group-geometry prior (variant "prior": group_prior_sd = 0.01 px).

Also prints the grid oracle (ground truth snapped to the HR grid, the ceiling of every HR-map
method) and windows per second. A script, not a test: it prints figures and asserts nothing.

``--compare`` instead times, on the same 8-bit windows and in one run, the pipeline's PhysFit
before the scene priors (the library defaults: brightness box 215-255 and K 1-5 written in, the
slower search) against today's (``methods.physfit.model`` of params.yaml with the scene priors
measured on a separately simulated training set), and prints the speed-up.

    python benchmarks/bench_physfit.py --trajectories 300
    python benchmarks/bench_physfit.py --compare --trajectories 100 --threads 1
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import time

import numpy as np
import torch

from pipeline.config import load_params
from pipeline.settings import SimulateConfig
from pipeline.coords import Grid
from pipeline.methods import physfit
from pipeline.metrics import cso_map
from pipeline.physics import build_phi_closed_form
from pipeline.sensor import Sensor
from pipeline.simulate import simulate_arrays

SETTINGS = (  # (label, bit depth, additive noise sigma)
    ("8-bit", 8, 0.0),
    ("float", 0, 0.0),
    ("8-bit+noise2", 8, 2.0),
    ("8-bit+noise5", 8, 5.0),
)


def windows_and_truth(config: SimulateConfig, sensor: Sensor, window: int
                      ) -> tuple[np.ndarray, list[np.ndarray]]:
    """(N, window, m, m) windows around every middle frame that has a full window, and the
    ground truth (k, 3: x, y, brightness) of each middle frame."""
    arrays = simulate_arrays(config, sensor)
    images = arrays["images"].astype(np.float64)
    half = window // 2
    middles = np.arange(half, config.frames - half)
    windows = np.stack([images[:, t - half:t + half + 1] for t in middles], axis=1).reshape(-1, window, *images.shape[2:])
    truth = [np.column_stack([arrays[key][i, t][arrays["active"][i, t]] for key in ("x", "y", "brightness")])
             for i in range(config.trajectories) for t in middles]
    return windows, truth


def run_setting(label: str, bit_depth: int, noise: float, params: dict, args) -> None:
    config = dataclasses.replace(SimulateConfig.from_section(params["simulate"]), trajectories=args.trajectories,
                                 seed=args.seed)
    sensor = dataclasses.replace(Sensor.from_section(params["sensor"]), bit_depth=bit_depth, noise_sigma=noise)
    window = params["evaluate"]["window"]
    thresholds = params["evaluate"]["distance_thresholds"]
    windows, truth = windows_and_truth(config, sensor, window)
    grid = Grid(sensor.frame_size, params["phi"]["c"])
    phi = build_phi_closed_form(grid.size, grid.c, sensor.psf_sigma)
    oracle = [np.column_stack([grid.snap(g[:, 0]), grid.snap(g[:, 1]), g[:, 2]]) for g in truth]
    k_true = np.array([len(g) for g in truth])
    print(f"\n== {label}: {config.trajectories} trajectories, {len(truth)} windows, noise sigma {noise}, "
          f"bit depth {bit_depth}")
    print(f"  grid oracle (c = {grid.c})       {_fmt(cso_map(oracle, truth, thresholds))}")
    overrides = {key: ast.literal_eval(value) for key, value in (args.set or [])}
    for variant in args.variants:
        fields = dict(overrides, **({"group_prior_sd": args.prior_sd} if variant == "prior" else {}))
        settings = physfit.PhysFitSettings.for_sensor(sensor, **fields)
        for method in args.methods:
            start = time.perf_counter()
            if method == "single":
                result = physfit.fit_frames_detailed(windows[:, window // 2], settings, phi=phi)
            else:
                result = physfit.fit_windows_detailed(windows, settings, phi=phi)
            elapsed = time.perf_counter() - start
            name = f"{method}-frame fit, {variant}"
            print(f"  {name:<27} {_fmt(cso_map(result.detections, truth, thresholds))}  "
                  f"K acc {np.mean(result.k == k_true):.3f}  {len(truth) / elapsed:6.1f} windows/s", flush=True)


def compare_old_new(params: dict, args) -> None:
    """Windows per second and CSO-mAP of the old and the current pipeline settings, one run."""
    from pipeline.data import load_split_tables
    from pipeline.priors import estimate_priors
    from pipeline.simulate import simulate
    import pandas as pd

    scene = SimulateConfig.from_section(params["simulate"])
    sensor = Sensor.from_section(params["sensor"])
    train_scene = dataclasses.replace(scene, trajectories=args.trajectories, seed=args.seed + 1)
    frames, targets = simulate(train_scene, sensor)
    split = pd.DataFrame({"trajectory": np.arange(train_scene.trajectories), "split": "train"})
    priors = estimate_priors(load_split_tables(frames, targets, split, "train"), sensor, 256)
    windows, truth = windows_and_truth(dataclasses.replace(scene, trajectories=args.trajectories, seed=args.seed),
                                       sensor, params["evaluate"]["window"])
    grid = Grid(sensor.frame_size, params["phi"]["c"])
    phi = build_phi_closed_form(grid.size, grid.c, sensor.psf_sigma)
    model = {key: value for key, value in params["methods"]["physfit"]["model"].items()
             if key not in ("multi_frame", "psf_calibration")}
    runs = {"old (library defaults, simulator's box)": physfit.PhysFitSettings.for_sensor(sensor),
            "new (scene priors, params.yaml)": physfit.PhysFitSettings.for_scene(sensor, priors, **model)}
    thresholds = params["evaluate"]["distance_thresholds"]
    print(f"\n== old vs new: {len(truth)} windows (8-bit, {args.trajectories} trajectories, seed {args.seed}), "
          f"{torch.get_num_threads()} thread(s); PSF calibration not included")
    speed = {}
    for label, settings in runs.items():
        start = time.perf_counter()
        result = physfit.fit_windows_detailed(windows, settings, phi=phi)
        speed[label] = len(truth) / (time.perf_counter() - start)
        print(f"  {label:<40} {_fmt(cso_map(result.detections, truth, thresholds))}  {speed[label]:6.1f} windows/s",
              flush=True)
    old, new = speed.values()
    print(f"  speed-up: {new / old:.2f}x")


def _fmt(result: dict) -> str:
    return "  ".join(f"{key}={value:6.2f}" for key, value in result.items() if key == "cso_map" or key.startswith("ap"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trajectories", type=int, default=300)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (2 on an idle 2-core laptop; use 1 when the cores are shared "
                             "with other jobs: oversubscribed torch threads slow the small batched ops many-fold)")
    parser.add_argument("--settings", nargs="*", default=[s[0] for s in SETTINGS],
                        choices=[s[0] for s in SETTINGS])
    parser.add_argument("--methods", nargs="*", default=["single", "multi"], choices=["single", "multi"])
    parser.add_argument("--variants", nargs="*", default=["physics", "prior"], choices=["physics", "prior"])
    parser.add_argument("--prior-sd", type=float, default=0.01, help="group_prior_sd of the 'prior' variant (LR px)")
    parser.add_argument("--compare", action="store_true",
                        help="old vs current pipeline settings on the same windows (see above) instead")
    parser.add_argument("--set", nargs=2, action="append", metavar=("FIELD", "VALUE"),
                        help="override a PhysFitSettings field (Python literal), e.g. --set random_starts 4")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = load_params()
    if args.compare:
        compare_old_new(params, args)
        return
    for label, bit_depth, noise in SETTINGS:
        if label in args.settings:
            run_setting(label, bit_depth, noise, params, args)


if __name__ == "__main__":
    main()
