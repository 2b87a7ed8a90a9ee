"""Stage phi: the sampling matrix Phi by dblquad (params: sensor.frame_size, sensor.psf_sigma, phi)."""
import argparse

from pipeline.cli import run_stage, stage_parser
from pipeline.config import load_params, section
from pipeline.settings import PhiConfig
from pipeline.io import save_array
from pipeline.physics import build_phi
from pipeline.sensor import Sensor


def main(args: argparse.Namespace) -> None:
    params = load_params()
    sensor = Sensor.from_section(section(params, "sensor"))
    config = PhiConfig.from_section(section(params, "phi"))
    phi = build_phi(sensor.frame_size, config.c, sensor.psf_sigma, epsabs=config.epsabs, epsrel=config.epsrel,
                    progress=True)
    save_array(phi, args.out)


if __name__ == "__main__":
    run_stage(main, stage_parser(__file__, __doc__, outputs={"out": "Phi .npy, shape (size^2, (c size)^2)"}))
