"""In-memory views of one split: frames as arrays, targets keyed to their frame, windows.

Frames are put in (trajectory, frame) order explicitly, so nothing depends on file order.
Windows of ``window`` consecutive frames (5 by default) slide over each trajectory; the middle
frame of each window is scored, so frames window//2 .. F-1-window//2 (2..17 of 20) of every
trajectory are the frames every method, single- or multi-frame, is trained and scored on.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import ConfigError
from pipeline.coords import Grid
from pipeline.io import DataFileError, frame_index, read_frame_images, read_table, read_targets
from pipeline.metrics import targets_to_hr_maps


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
    """The trajectories of one split (all trajectories when ``split_name`` is None), from files."""
    return _select(frame_index(frames_path), read_frame_images(frames_path), read_targets(targets_path),
                   read_table(split_path, ("trajectory", "split")), split_name, f"{frames_path} with {split_path}")


def load_split_tables(frames: pd.DataFrame, targets: pd.DataFrame, split: pd.DataFrame,
                      split_name: str | None) -> SplitData:
    """The same from in-memory tables (frames with an ``image`` column)."""
    images = np.stack(frames["image"].to_numpy())
    size = int(round(np.sqrt(images.shape[1])))
    return _select(frames.drop(columns="image"), images.reshape(-1, size, size), targets, split,
                   split_name, "split table")


def _select(index: pd.DataFrame, images: np.ndarray, targets: pd.DataFrame, split: pd.DataFrame,
            split_name: str | None, source: str) -> SplitData:
    if split_name is not None:
        chosen = split.loc[split["split"] == split_name, "trajectory"].to_numpy()
        if len(chosen) == 0:
            raise DataFileError(f"{source}: split '{split_name}' is empty")
    else:
        chosen = split["trajectory"].to_numpy()
    keep = index["trajectory"].isin(chosen).to_numpy()
    index, images = index[keep], images[keep]
    order = np.lexsort((index["frame"].to_numpy(), index["trajectory"].to_numpy()))
    index, images = index.iloc[order].reset_index(drop=True), images[order]
    trajectories, counts = np.unique(index["trajectory"].to_numpy(), return_counts=True)
    if len(np.unique(counts)) != 1 or not np.array_equal(
            index["frame"].to_numpy(), np.tile(np.arange(counts[0]), len(trajectories))):
        raise DataFileError(f"{source}: trajectories do not all have frames 0..F-1")
    n_frames = int(counts[0])
    images = images.reshape(len(trajectories), n_frames, *images.shape[1:])

    targets = targets[targets["trajectory"].isin(trajectories)].copy()
    targets["t"] = np.searchsorted(trajectories, targets["trajectory"].to_numpy())
    targets["f"] = targets["frame"].to_numpy()
    return SplitData(trajectories, images, targets.reset_index(drop=True))


@dataclasses.dataclass
class Windows:
    """Every ``window``-frame window of a split, as arrays ready for batching.

    lr: (N, W, size, size) float32 raw frames; hr: (N, c size, c size) float32 GT maps of the
    middle frames; t, f: trajectory position and middle-frame index of each window (N,).
    Windows never cross trajectories, and their order is trajectory-major, whatever the batch.
    """

    lr: np.ndarray
    hr: np.ndarray
    t: np.ndarray
    f: np.ndarray

    def __len__(self) -> int:
        return len(self.lr)

    def subset(self, keep: np.ndarray) -> "Windows":
        """The windows selected by ``keep`` (a boolean mask or indices), in their order."""
        return Windows(self.lr[keep], self.hr[keep], self.t[keep], self.f[keep])

    def every(self, stride: int) -> "Windows":
        """One window in ``stride`` of each trajectory, the first one rotating with the trajectory
        (see :func:`scored_positions`); the all-windows set thinned to what ``make_windows`` with
        that stride gives."""
        return self.subset((self.f - self.f.min() - self.t) % stride == 0)


def scored_frames(n_frames: int, window: int) -> np.ndarray:
    """Indices of the middle frames of every full window of a trajectory of ``n_frames`` frames."""
    half = window // 2
    if n_frames < window:
        raise ConfigError(f"evaluate.window = {window} is invalid: longer than the {n_frames} frames of each trajectory")
    return np.arange(half, n_frames - half)


def scored_positions(data: SplitData, window: int, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(t, f): trajectory position and middle-frame index of every scored window, trajectory-major.

    ``stride`` k keeps one window in k of each trajectory: those whose position j (0 = the first
    full window) has j = t mod k. The offset rotates with the trajectory so that every frame
    position is scored equally often; a fixed offset would score the same frames of every
    trajectory, where the targets sit at the same sub-pixel phase (the motion is regular).
    """
    frames = scored_frames(data.n_frames, window)
    t, f = np.meshgrid(np.arange(len(data.trajectories)), frames, indexing="ij")
    keep = (f - frames[0] - t) % stride == 0
    return t[keep], f[keep]


def make_windows(data: SplitData, grid: Grid, window: int, stride: int = 1) -> Windows:
    """The windows of ``data`` at the positions of :func:`scored_positions` (``stride`` 1 = all
    sliding windows), with the GT maps of their middle frames."""
    t, f = scored_positions(data, window, stride)
    view = np.lib.stride_tricks.sliding_window_view(data.images, window, axis=1)  # (T, P, m, m, W)
    lr = np.ascontiguousarray(np.moveaxis(view[t, f - window // 2], -1, 1))
    hr = targets_to_hr_maps(data.frame_targets(t, f), grid).astype(np.float32)
    return Windows(lr.astype(np.float32), hr, t, f)
