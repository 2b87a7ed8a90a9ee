"""Stage phi: the sampling matrix Phi by dblquad (params: simulate.size, simulate.psf_sigma, phi)."""
import argparse

from pipeline.cli import run_stage
from pipeline.config import PhiConfig, SimulateConfig, load_params, section
from pipeline.io import save_array
from pipeline.physics import build_phi


def main(args: argparse.Namespace) -> None:
    params = load_params()
    physics = SimulateConfig.from_section(section(params, "simulate"))
    config = PhiConfig.from_section(section(params, "phi"))
    phi = build_phi(physics.size, config.c, physics.psf_sigma, epsabs=config.epsabs,
                    epsrel=config.epsrel, progress=True)
    save_array(phi, args.out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="stages/phi.py", description=__doc__)
    parser.add_argument("--out", required=True, help="Phi .npy, shape (size^2, (c size)^2)")
    run_stage(main, parser)
