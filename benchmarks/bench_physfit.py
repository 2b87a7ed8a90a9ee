"""Benchmark of the continuous physics fit (pipeline.methods.physfit) with CSO-mAP.

Simulates trajectories (pipeline.simulate when present, else a small local generator that follows
the same rules), builds the 5-frame windows of the evaluation protocol (middle frames 2..17) and
scores, per sensor setting:

* single: ``fit_frames`` on the middle frames alone;
* multi:  ``fit_windows`` on the 5-frame windows (joint rigid-motion fit, middle frame reported);

each as pure physics (variant "physics": default PhysFitSettings) and with the optional SeqCSIST
group-geometry prior (variant "prior": group_prior_sd = 0.01 px).

Also prints the grid oracle (ground truth snapped to the 33x33 HR grid, the ceiling of every
HR-map method) and frames per second. A script, not a test: it prints figures and asserts nothing.

    .venv/bin/python benchmarks/bench_physfit.py --trajectories 300
"""
from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.methods import physfit  # noqa: E402
from pipeline.coords import Grid  # noqa: E402
from pipeline.physics import build_phi_closed_form, render_batch  # noqa: E402
from pipeline.sensor import Sensor  # noqa: E402

SECTION = {  # the simulate section of the laptop profile (params.yaml), counts and LR px
    "seed": 20250711, "trajectories": 300, "frames": 20, "size": 11, "psf_sigma": 0.5,
    "k_min": 2, "k_max": 4, "distance": 0.3, "step": 0.04, "drift_max": 0.0014,
    "brightness": [220.0, 250.0], "curves": ["line", "quadratic", "circle"],
    "line_slope_max": 0.5, "quadratic_curvature_max": 0.25, "circle_radius": [3.0, 8.0],
    "noise_sigma": 0.0, "bit_depth": 8, "saturate": True,
}
SETTINGS = (  # (label, bit depth, additive noise sigma)
    ("8-bit", 8, 0.0),
    ("float", 0, 0.0),
    ("8-bit+noise2", 8, 2.0),
    ("8-bit+noise5", 8, 5.0),
)
WINDOW = 5
DIRECTIONS = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])


def _local_simulation(section: dict) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """Fallback generator with the SeqCSIST rules (used only when pipeline.simulate is absent)."""
    rng = np.random.default_rng(section["seed"])
    n, frames, size = section["trajectories"], section["frames"], section["size"]
    images = np.zeros((n, frames, size, size))
    truth = []
    t = np.arange(frames)
    for i in range(n):
        x0 = float(rng.integers(1, size - 1))
        heading = 1.0 if x0 < (size - 1) / 2 else -1.0
        dx = heading * section["step"] * t
        slope = rng.uniform(-section["line_slope_max"], section["line_slope_max"])
        curv = rng.uniform(-section["quadratic_curvature_max"], section["quadratic_curvature_max"])
        ref = np.stack([x0 + dx, rng.uniform(1.0, size - 2.0) + slope * dx + curv * dx * dx], axis=1)
        k = int(rng.integers(section["k_min"], section["k_max"] + 1))
        dirs = DIRECTIONS[rng.permutation(4)[:k]]
        drift = rng.uniform(0.0, section["drift_max"], (frames, k))
        drift[0] = 0.0
        radius = section["distance"] + np.cumsum(drift, axis=0)
        pos = ref[:, None, :] + radius[..., None] * dirs[None]
        b = np.broadcast_to(rng.uniform(*section["brightness"], k), (frames, k))
        img = render_batch(pos[..., 0], pos[..., 1], b, size, section["psf_sigma"])
        if section["noise_sigma"] > 0:
            img = img + rng.normal(0.0, section["noise_sigma"], img.shape)
        if section["bit_depth"]:
            img = np.clip(np.round(img), 0.0, 2.0 ** section["bit_depth"] - 1.0)
        images[i] = img
        truth.append([np.column_stack([pos[f, :, 0], pos[f, :, 1], b[f]]) for f in range(frames)])
    return images, truth


def simulate(section: dict) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """Images (T, F, m, m) and ground truth per trajectory and frame ((k, 3) x, y, brightness)."""
    try:
        from pipeline.simulate import simulate as pipeline_simulate
    except ImportError:
        return _local_simulation(section)
    sensor_keys = ("size", "psf_sigma", "noise_sigma", "bit_depth", "saturate")
    scene = {key: value for key, value in section.items() if key not in sensor_keys}
    frames_df, targets_df = pipeline_simulate(scene, Sensor(**{key: section[key] for key in sensor_keys}))
    n, f, m = section["trajectories"], section["frames"], section["size"]
    frames_df = frames_df.sort_values(["trajectory", "frame"])
    images = np.stack(frames_df["image"].to_numpy()).astype(np.float64).reshape(n, f, m, m)
    truth = [[np.zeros((0, 3)) for _ in range(f)] for _ in range(n)]
    for (traj, frame), group in targets_df.groupby(["trajectory", "frame"]):
        truth[traj][frame] = group[["x", "y", "brightness"]].to_numpy(np.float64)
    return images, truth


def _distance_thresholds() -> list[float]:
    """evaluate.distance_thresholds of params.yaml (LR px): the benchmark scores as the pipeline."""
    from pipeline.config import load_params
    return load_params(Path(__file__).resolve().parents[1] / "params.yaml")["evaluate"]["distance_thresholds"]


def _local_cso_map(detections, truths, thresholds) -> dict:
    """Minimal CSO-mAP (used only when pipeline.metrics is absent): nearest-GT greedy matching per
    frame in descending score, pooled VOC-area AP, percent."""
    n_gt = sum(len(t) for t in truths)
    out = {}
    for thr in thresholds:
        scores, hits = [], []
        for det, gt in zip(detections, truths):
            taken = set()
            for row in det[np.argsort(-det[:, 2], kind="stable")]:
                hit = 0.0
                if len(gt):
                    dist = np.hypot(gt[:, 0] - row[0], gt[:, 1] - row[1])
                    j = int(dist.argmin())
                    if dist[j] <= thr and j not in taken:
                        taken.add(j)
                        hit = 1.0
                scores.append(row[2])
                hits.append(hit)
        order = np.argsort(-np.asarray(scores), kind="stable")
        tp = np.cumsum(np.asarray(hits)[order])
        recall = tp / max(n_gt, 1)
        precision = tp / np.arange(1, len(tp) + 1)
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.maximum.accumulate(np.concatenate([[0.0], precision, [0.0]])[::-1])[::-1]
        step = np.flatnonzero(mrec[1:] != mrec[:-1])
        out[f"ap{round(thr * 100):02d}"] = 100.0 * float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))
    return {"cso_map": float(np.mean(list(out.values()))), **out}


def cso_map(detections, truths) -> dict:
    try:
        from pipeline.metrics import cso_map as pipeline_cso_map
    except ImportError:
        return _local_cso_map(detections, truths, _distance_thresholds())
    return pipeline_cso_map(detections, truths, _distance_thresholds())


def _fmt(result: dict) -> str:
    keys = ["cso_map", "ap05", "ap10", "ap15", "ap20", "ap25"]
    return "  ".join(f"{k}={result[k]:6.2f}" for k in keys)


def run_setting(label: str, bit_depth: int, noise: float, args) -> None:
    section = dict(SECTION, trajectories=args.trajectories, seed=args.seed, bit_depth=bit_depth,
                   noise_sigma=noise)
    images, truth = simulate(section)
    n, f = images.shape[:2]
    half = WINDOW // 2
    middles = list(range(half, f - half))  # frames 2..17
    windows = np.stack([images[:, t - half:t + half + 1] for t in middles], axis=1)  # (T, 16, W, m, m)
    windows = windows.reshape(-1, WINDOW, *images.shape[2:])
    gts = [truth[i][t] for i in range(n) for t in middles]
    overrides = {key: ast.literal_eval(value) for key, value in (args.set or [])}
    grid = Grid(images.shape[-1], 3)
    phi = build_phi_closed_form(grid.size, grid.c, SECTION["psf_sigma"])
    oracle = [np.column_stack([grid.snap(g[:, 0]), grid.snap(g[:, 1]), g[:, 2]]) for g in gts]
    k_true = np.array([len(g) for g in gts])
    print(f"\n== {label}: {n} trajectories, {len(gts)} middle frames (2..17), noise sigma {noise}, "
          f"bit depth {bit_depth}")
    print(f"  grid oracle (33x33)         {_fmt(cso_map(oracle, gts))}")
    for variant in args.variants:
        fields = dict(overrides)
        if variant == "prior":
            fields.setdefault("group_prior_sd", args.prior_sd)
        sensor = Sensor(size=images.shape[-1], bit_depth=bit_depth, noise_sigma=noise)
        settings = physfit.PhysFitSettings.for_sensor(sensor, **fields)
        for method in args.methods:
            start = time.perf_counter()
            if method == "single":
                result = physfit.fit_frames_detailed(windows[:, half], settings, phi=phi)
            else:
                result = physfit.fit_windows_detailed(windows, settings, phi=phi)
            elapsed = time.perf_counter() - start
            unit = "frames/s" if method == "single" else "windows/s"
            name = f"{method}-frame fit, {variant}"
            print(f"  {name:<27} {_fmt(cso_map(result.detections, gts))}  K acc {np.mean(result.k == k_true):.3f}"
                  f"  {len(gts) / elapsed:6.1f} {unit}", flush=True)


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
    parser.add_argument("--set", nargs=2, action="append", metavar=("FIELD", "VALUE"),
                        help="override a PhysFitSettings field (Python literal), e.g. --set random_starts 4")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for label, bit_depth, noise in SETTINGS:
        if label in args.settings:
            run_setting(label, bit_depth, noise, args)


if __name__ == "__main__":
    main()
