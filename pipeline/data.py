"""In-memory views of one split: frames as arrays, targets keyed to their frame row.

Frames are put in (trajectory, frame) order explicitly, so nothing depends on file order.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.io import DataFileError, frame_index, read_frame_images, read_table, read_targets


@dataclasses.dataclass
class SplitData:
    """Frames of whole trajectories: images (T, F, size, size) and their targets.

    ``targets`` has columns trajectory, frame, x, y, brightness and ``t``, ``f``: the position
    of its frame in ``images``.
    """

    trajectories: np.ndarray
    images: np.ndarray
    targets: pd.DataFrame

    @property
    def n_frames(self) -> int:
        """Frames per trajectory."""
        return self.images.shape[1]

    def frame_targets(self, t: np.ndarray, f: np.ndarray) -> list[np.ndarray]:
        """Targets (k, 3) rows (x, y, brightness) of the frames (t[i], f[i]), in that order."""
        keys = np.asarray(t) * self.n_frames + np.asarray(f)
        own = self.targets["t"].to_numpy() * self.n_frames + self.targets["f"].to_numpy()
        order = np.argsort(own, kind="stable")
        sorted_keys = own[order]
        values = self.targets[["x", "y", "brightness"]].to_numpy()[order]
        start = np.searchsorted(sorted_keys, keys, side="left")
        stop = np.searchsorted(sorted_keys, keys, side="right")
        return [values[a:b] for a, b in zip(start, stop)]


def load_split(frames_path: str | Path, targets_path: str | Path, split_path: str | Path,
               split_name: str | None) -> SplitData:
    """The trajectories of one split (all trajectories when ``split_name`` is None)."""
    index = frame_index(frames_path)
    images = read_frame_images(frames_path)
    split = read_table(split_path, ("trajectory", "split"))
    if split_name is not None:
        chosen = split.loc[split["split"] == split_name, "trajectory"].to_numpy()
        if len(chosen) == 0:
            raise DataFileError(f"{split_path}: split '{split_name}' is empty")
    else:
        chosen = split["trajectory"].to_numpy()
    keep = index["trajectory"].isin(chosen).to_numpy()
    index, images = index[keep], images[keep]
    order = np.lexsort((index["frame"].to_numpy(), index["trajectory"].to_numpy()))
    index, images = index.iloc[order].reset_index(drop=True), images[order]
    trajectories, counts = np.unique(index["trajectory"].to_numpy(), return_counts=True)
    if len(np.unique(counts)) != 1 or not np.array_equal(
            index["frame"].to_numpy(), np.tile(np.arange(counts[0]), len(trajectories))):
        raise DataFileError(f"{frames_path}: trajectories do not all have frames 0..F-1")
    n_frames = int(counts[0])
    images = images.reshape(len(trajectories), n_frames, *images.shape[1:])

    targets = read_targets(targets_path)
    targets = targets[targets["trajectory"].isin(trajectories)].copy()
    targets["t"] = np.searchsorted(trajectories, targets["trajectory"].to_numpy())
    targets["f"] = targets["frame"].to_numpy()
    return SplitData(trajectories, images, targets.reset_index(drop=True))
