"""Reading and writing the data contract: Parquet tables, arrays and JSON (the official layout is
``pipeline.official``, image files ``pipeline.images``).

Every writer goes through :func:`atomic_path`: the file is written under the fixed temporary
name ``.<name>.tmp`` in the same folder and renamed into place only when complete, so an
interrupted stage never leaves a half-written output that DVC would take as done, and the next run
overwrites or removes what a killed one left. Readers name the file when it is corrupt.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import DataFileError  # noqa: F401  (its home is pipeline.errors)


def temporary_path(path: str | Path) -> Path:
    """The fixed temporary name ``.<name>.tmp`` beside ``path`` that :func:`atomic_path` writes."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield the temporary path ``.<name>.tmp`` beside ``path``; rename it to ``path`` only on
    success. A leftover of a killed run (also the older ``.<name>.<random>.tmp``) is removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    for stale in [tmp, *path.parent.glob(f".{glob.escape(path.name)}.*.tmp")]:
        stale.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_table(path: str | Path, required: tuple[str, ...]) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: file not found (run the stage that produces it: dvc repro)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataFileError(f"{path}: not a readable Parquet file ({exc})") from exc
    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise DataFileError(f"{path}: missing columns {missing}")
    return table


FRAME_COLUMNS = ("trajectory", "frame", "image", "n_targets")
TARGET_COLUMNS = ("trajectory", "frame", "target", "x", "y", "brightness")


def write_frames(frames: pd.DataFrame, path: str | Path) -> None:
    """Frames table to Parquet; ``image`` becomes a fixed-size list of float32."""
    images = np.stack(frames["image"].to_numpy()).astype(np.float32)
    columns = {name: pa.array(frames[name].to_numpy()) for name in frames.columns if name != "image"}
    columns["image"] = pa.FixedSizeListArray.from_arrays(pa.array(images.ravel()), images.shape[1])
    ordered = [name for name in frames.columns]
    with atomic_path(path) as tmp:
        pq.write_table(pa.table({name: columns[name] for name in ordered}), tmp)


def read_frames(path: str | Path) -> pd.DataFrame:
    """Frames table with ``image`` as one float32 array per row."""
    table = _read_table(path, FRAME_COLUMNS)
    images = read_frame_images(path, table)
    frames = table.drop(["image"]).to_pandas()
    frames.insert(2, "image", list(images.reshape(len(frames), -1)))
    return frames


def read_frame_images(path: str | Path, table: pa.Table | None = None) -> np.ndarray:
    """All frames of a frames table as one (N, size, size) float32 array, in table order."""
    table = table if table is not None else _read_table(path, FRAME_COLUMNS)
    column = table.column("image").combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    n_pixels = column.type.list_size
    size = int(round(np.sqrt(n_pixels)))
    if size * size != n_pixels:
        raise DataFileError(f"{path}: image rows of {n_pixels} values are not square frames")
    return flat.reshape(len(table), size, size)


def frame_index(path: str | Path) -> pd.DataFrame:
    """The frames table without images (trajectory, frame, n_targets, ...)."""
    table = _read_table(path, FRAME_COLUMNS)
    return table.drop(["image"]).to_pandas()


def write_table(table: pd.DataFrame, path: str | Path) -> None:
    """A plain DataFrame to Parquet, atomically, without the pandas index."""
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp)


def read_table(path: str | Path, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """A Parquet table as a DataFrame, checking the required columns."""
    return _read_table(path, required).to_pandas()


def read_targets(path: str | Path) -> pd.DataFrame:
    """Targets table: trajectory, frame, target, x, y, brightness."""
    return read_table(path, TARGET_COLUMNS)


def save_array(array: np.ndarray, path: str | Path) -> None:
    """One array to .npy, atomically."""
    with atomic_path(path) as tmp:
        with tmp.open("wb") as handle:
            np.save(handle, array)


def load_array(path: str | Path) -> np.ndarray:
    """One .npy array; a missing or corrupt file is named."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: file not found (run the stage that produces it: dvc repro)")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataFileError(f"{path}: not a readable .npy array ({exc})") from exc


def load_arrays(path: str | Path, names: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every array of a .npz file, checking the required ``names``; a missing or corrupt file is named."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: file not found (run the stage that produces it: dvc repro)")
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise DataFileError(f"{path}: not a readable .npz archive ({exc})") from exc
    missing = [name for name in names if name not in arrays]
    if missing:
        raise DataFileError(f"{path}: missing arrays {missing}")
    return arrays


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(data: Mapping, path: str | Path) -> None:
    """Pretty JSON with sorted keys, atomically (stable bytes for git and DVC)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> dict:
    """A JSON file; a missing or corrupt file is named."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DataFileError(f"{path}: file not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFileError(f"{path}: not valid JSON ({exc})") from exc
