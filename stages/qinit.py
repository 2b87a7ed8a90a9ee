"""Stage qinit: Q_init from the training split only, float64 solve (params: qinit)."""
import argparse

from pipeline.cli import run_stage
from pipeline.config import QinitConfig, load_params, section
from pipeline.data import load_split
from pipeline.io import load_array, save_array
from pipeline.qinit import compute_qinit


def main(args: argparse.Namespace) -> None:
    config = QinitConfig.from_section(section(load_params(), "qinit"))
    phi = load_array(args.phi)
    train = load_split(args.frames, args.targets, args.split, "train")
    frame_rows = train.targets["t"].to_numpy() * train.n_frames + train.targets["f"].to_numpy()
    images = train.images.reshape(-1, *train.images.shape[2:])
    qinit = compute_qinit(images, train.targets, frame_rows, phi, config.measurements)
    save_array(qinit, args.out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="stages/qinit.py", description=__doc__)
    parser.add_argument("--phi", required=True, help="Phi .npy input")
    for name in ("frames", "targets", "split"):
        parser.add_argument(f"--{name}", required=True, help=f"{name} Parquet input")
    parser.add_argument("--out", required=True, help="Q_init .npy output, shape ((c size)^2, size^2)")
    run_stage(main, parser)
