"""Benchmark: simulating the dataset (default: paper scale, 5,000 trajectories = 100,000 frames).

    python benchmarks/bench_simulate.py [--trajectories 5000]
"""
import argparse
import time
import tracemalloc
from pathlib import Path

from pipeline.config import load_params
from pipeline.settings import SimulateConfig
from pipeline.sensor import Sensor
from pipeline.simulate import simulate_arrays, to_tables

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trajectories", type=int, default=5000)
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    config = SimulateConfig.from_section({**params["simulate"], "trajectories": args.trajectories})
    sensor = Sensor.from_section(params["sensor"])
    tracemalloc.start()
    start = time.perf_counter()
    arrays = simulate_arrays(config, sensor)
    simulated = time.perf_counter() - start
    frames, targets = to_tables(arrays)
    total = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    n = len(frames)
    print(f"simulate {config.trajectories:,} trajectories = {n:,} frames, {len(targets):,} targets")
    print(f"  arrays (render + sensor): {simulated:6.2f} s")
    print(f"  with tables             : {total:6.2f} s ({n / total:,.0f} frames/s)")
    print(f"  peak traced memory      : {peak / 2**20:6.0f} MiB")


if __name__ == "__main__":
    main()
