"""Stage qinit: Q_init from the training split only, float64 solve (params: qinit)."""
import argparse

from pipeline.cli import DATASET, run_stage, stage_parser
from pipeline.config import load_params, section
from pipeline.settings import QinitConfig
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
    run_stage(main, stage_parser(__file__, __doc__, inputs=("phi", *DATASET),
                                 outputs={"out": "Q_init .npy output, shape ((c size)^2, size^2)"}))
