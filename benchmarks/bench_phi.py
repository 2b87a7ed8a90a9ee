"""Benchmark: Phi build time (dblquad per distinct offset) against one dblquad per entry.

    python benchmarks/bench_phi.py [--size 11 --c 3 --sigma 0.5 --sample 300]
"""
import argparse
import math
import time

import numpy as np
from scipy import integrate

from pipeline.physics import build_phi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=11)
    parser.add_argument("--c", type=int, default=3)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--sample", type=int, default=300, help="entries timed for the naive estimate")
    args = parser.parse_args()

    start = time.perf_counter()
    phi = build_phi(args.size, args.c, args.sigma)
    built = time.perf_counter() - start

    # naive: one dblquad per (pixel, HR cell) entry, timed on a random sample of entries
    rng = np.random.default_rng(0)
    rows = rng.integers(0, phi.shape[0], args.sample)
    cols = rng.integers(0, phi.shape[1], args.sample)
    hr = args.c * args.size
    norm, two_var = 1 / (2 * math.pi * args.sigma ** 2), 2 * args.sigma ** 2
    start = time.perf_counter()
    for r, col in zip(rows, cols):
        px, py = divmod(int(r), args.size)
        tx, ty = ((np.array(divmod(int(col), hr)) - (args.c - 1) / 2) / args.c)
        integrate.dblquad(lambda v, u: norm * math.exp(-((u - tx) ** 2 + (v - ty) ** 2) / two_var),
                          px - 0.5, px + 0.5, py - 0.5, py + 0.5, epsabs=1e-13, epsrel=1e-11)
    per_entry = (time.perf_counter() - start) / args.sample
    entries = phi.shape[0] * phi.shape[1]
    print(f"Phi {phi.shape[0]}x{phi.shape[1]} (size {args.size}, c {args.c}, sigma {args.sigma})")
    print(f"  distinct-offset build : {built:8.3f} s")
    print(f"  one dblquad per entry : {per_entry * entries:8.1f} s (estimated: {entries:,} entries x "
          f"{per_entry * 1e3:.3f} ms)")
    print(f"  speed-up              : {per_entry * entries / built:8.0f}x")


if __name__ == "__main__":
    main()
