"""Trajectory-level train/val/test split (70/15/15 by default), seeded."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.settings import SPLIT_NAMES, SplitConfig


def assign_split(trajectories: np.ndarray, config: SplitConfig) -> pd.DataFrame:
    """Shuffle the trajectory ids with ``config.seed`` and cut them by ``config.fractions``.

    Returns a table (trajectory, split) sorted by trajectory. Counts are rounded for train and
    val; test takes the rest, so every trajectory lands in exactly one split.
    """
    ids = np.unique(np.asarray(trajectories, dtype=np.int64))
    order = np.random.default_rng(config.seed).permutation(len(ids))
    n_train = int(round(config.fractions[0] * len(ids)))
    n_val = int(round(config.fractions[1] * len(ids)))
    labels = np.empty(len(ids), dtype=object)
    labels[order[:n_train]] = SPLIT_NAMES[0]
    labels[order[n_train:n_train + n_val]] = SPLIT_NAMES[1]
    labels[order[n_train + n_val:]] = SPLIT_NAMES[2]
    return pd.DataFrame({"trajectory": ids, "split": labels.astype(str)})


def given_split(frames: pd.DataFrame) -> pd.DataFrame:
    """The split an imported official dataset came with (its ``source_split`` column)."""
    table = frames[["trajectory", "source_split"]].drop_duplicates("trajectory")
    return table.rename(columns={"source_split": "split"}).sort_values("trajectory", ignore_index=True)


def make_split(frames: pd.DataFrame, config: SplitConfig) -> pd.DataFrame:
    """The given split for imported data, else a fresh seeded split of the trajectories."""
    if "source_split" in frames.columns and frames["source_split"].notna().all():
        return given_split(frames)
    return assign_split(frames["trajectory"].to_numpy(), config)
