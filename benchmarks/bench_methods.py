"""Benchmark: cost of every registered network at its default (paper) architecture.

Per method: trainable parameters, FLOPs per window (torch.utils.flop_counter), milliseconds per
training step (forward, loss, backward and Adam on a batch, discriminator step included for
adversarial methods) and evaluation throughput (windows per second), on random data shaped like
the protocol's 5-frame windows. Use it to size the laptop budgets of params.yaml: a method's
``train`` costs epochs x windows_per_epoch / batch steps, its evaluation 12,000 test windows.
A script, not a test: it prints figures and asserts nothing.

    python benchmarks/bench_methods.py [--methods srcnn ista_net] [--batch 32] [--steps 5]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pipeline.coords import Grid
from pipeline.evaluation import count_flops
from pipeline.methods import PhysicsOperator, available_models, get_model
from pipeline.physics import build_phi_closed_form


def random_physics(grid: Grid, sigma: float) -> PhysicsOperator:
    """Phi of the grid and a Q_init with the right shape (its values do not change the cost)."""
    phi = build_phi_closed_form(grid.size, grid.c, sigma)
    return PhysicsOperator(phi, np.linalg.pinv(phi))


def time_training(model, lr: torch.Tensor, target: torch.Tensor, steps: int) -> float:
    """Median seconds of one optimiser step (generator and, if any, discriminator)."""
    generator = torch.optim.Adam(model.generator_parameters(), lr=1e-4)
    adversary = model.adversary()
    critic = torch.optim.Adam(adversary.parameters(), lr=1e-4) if adversary is not None else None
    model.train()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        output = model(lr)
        total, _ = model.loss(output, target)
        generator.zero_grad()
        total.backward()
        generator.step()
        if critic is not None:
            critic_loss, _ = model.discriminator_loss(model(lr), target)
            critic.zero_grad()
            critic_loss.backward()
            critic.step()
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def time_inference(model, lr: torch.Tensor, repeats: int) -> float:
    """Windows per second of forward passes without gradients."""
    model.eval()
    with torch.no_grad():
        model(lr)
        start = time.perf_counter()
        for _ in range(repeats):
            model(lr)
    return repeats * len(lr) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=available_models(trainable=True))
    parser.add_argument("--batch", type=int, default=32, help="training batch (windows)")
    parser.add_argument("--eval-batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--c", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    grid = Grid(11, args.c)
    physics = random_physics(grid, 0.5)
    rng = np.random.default_rng(0)
    window = torch.as_tensor(rng.uniform(0, 255, (args.eval_batch, 5, grid.size, grid.size)), dtype=torch.float32)
    target = torch.zeros(args.batch, grid.hr_size, grid.hr_size)
    print(f"{'method':<16}{'params':>12}{'GFLOPs/window':>15}{'ms/step@' + str(args.batch):>14}"
          f"{'windows/s':>11}{'12k windows (s)':>17}   ({torch.get_num_threads()} threads)")
    for name in args.methods:
        torch.manual_seed(0)
        model = get_model(name, physics)
        params = sum(p.numel() for p in model.generator_parameters())
        flops = count_flops(model, window[0].numpy(), torch.device("cpu"))
        step = time_training(model, window[:args.batch], target, args.steps) if params else float("nan")
        rate = time_inference(model, window, repeats=1)
        print(f"{name:<16}{params:>12,}{flops / 1e9:>15.3f}{step * 1e3:>14.1f}{rate:>11.0f}{12000 / rate:>17.0f}",
              flush=True)


if __name__ == "__main__":
    main()
