"""Estimated GPU-hours of the paper profile, method by method (a model, not a measurement).

    python benchmarks/paper_budget.py [--step-overhead-ms 15] [--tflops 50]

For each trainable method: optimiser steps = epochs x ceil(training windows / batch) of the
paper profile, validation passes = epochs / validate_every over every validation window; the
time of a training step is the larger of a fixed per-step overhead (Python, optimiser, kernel
launches: small networks are bound by it) and 3 x forward FLOPs x batch / sustained throughput
(forward + backward), a validation window costs one forward pass. FLOPs per window come from the
committed metrics JSON (evaluate stage). Measure a real step time on your GPU with the smoke
experiment (README) and pass it as --step-overhead-ms to sharpen the estimate.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd

from pipeline.config import read_params, resolve_profile
from pipeline.method_specs import method_spec

TRAIN_WINDOWS = 3_500 * 16  # 70% of the 5,000 trajectories, 16 scored windows each (frames 2..17)
VAL_WINDOWS = 750 * 16


def estimate(params: dict, metrics_dir: Path, overhead_s: float, flops_per_s: float) -> pd.DataFrame:
    rows = []
    for method in params["methods"]:
        spec = method_spec(params["methods"], method)
        if not spec.trainable:
            continue
        budget = spec.train
        metrics = metrics_dir / f"{method}.json"
        flops = json.loads(metrics.read_text()).get("flops", 0) if metrics.is_file() else 0
        steps = budget.epochs * math.ceil(TRAIN_WINDOWS / budget.batch)
        step_s = max(overhead_s, 3 * flops * budget.batch / flops_per_s)
        validations = math.ceil(budget.epochs / budget.validate_every)
        val_s = validations * VAL_WINDOWS * flops / flops_per_s
        rows.append({"method": method, "epochs": budget.epochs, "batch": budget.batch, "steps": steps,
                     "GFLOPs/window": flops / 1e9, "GPU-hours": (steps * step_s + val_s) / 3600})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-overhead-ms", type=float, default=15.0)
    parser.add_argument("--tflops", type=float, default=50.0, help="sustained FLOP/s of the GPU, in 1e12")
    parser.add_argument("--metrics", type=Path, default=Path("reports/metrics"))
    args = parser.parse_args()
    params = resolve_profile({**read_params("params.yaml"), "profile": "paper"})
    table = estimate(params, args.metrics, args.step_overhead_ms / 1000, args.tflops * 1e12)
    print(f"paper profile, one GPU: {args.step_overhead_ms:g} ms per-step overhead, {args.tflops:g} TFLOP/s sustained "
          "(assumptions, not measurements)")
    print(table.to_string(index=False, float_format=lambda x: f"{x:,.2f}"))
    print(f"total: {table['GPU-hours'].sum():,.0f} GPU-hours")


if __name__ == "__main__":
    main()
