"""Reading and writing the data contract: Parquet tables, arrays, JSON and the official layout.

Every writer goes through :func:`atomic_path`: the file is written under the fixed temporary
name ``.<name>.tmp`` in the same folder and renamed into place only when complete, so an
interrupted stage never leaves a half-written output that DVC would take as done, and the next run
overwrites or removes what a killed one left. Readers name the file when it is corrupt.
"""
from __future__ import annotations

import contextlib
import glob
import gzip
import io
import json
import math
import os
import re
import tarfile
import zipfile
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from lxml import etree
from PIL import Image
from tqdm.auto import tqdm

from pipeline.config import SPLIT_NAMES
from pipeline.errors import DataFileError  # noqa: F401  (its home is pipeline.errors)

OFFICIAL_DATASET_DIR = "track_5000_20"
IMAGE_DIR, ANNOTATION_DIR = "image", "annotation"
IMAGE_NAME = "image_{id}.png"
ANNOTATION_NAME = "COS{id}.xml"


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


# --- official SeqCSIST layout -------------------------------------------------------------------

def annotation_xml(frame_id: int, targets: np.ndarray, size: int, sigma: float) -> bytes:
    """One COS{id}.xml in the toolkit schema; targets (k, 3) rows (x = row, y, brightness)."""
    root = etree.Element("annotation")
    etree.SubElement(root, "filename").text = f"COS{frame_id}"
    size_node = etree.SubElement(root, "size")
    etree.SubElement(size_node, "width").text = str(size)
    etree.SubElement(size_node, "height").text = str(size)
    etree.SubElement(size_node, "depth").text = "1"
    etree.SubElement(root, "sigma").text = repr(float(sigma))
    for x, y, brightness in targets:
        obj = etree.SubElement(root, "object")
        etree.SubElement(obj, "name").text = "Target"
        coordinate = etree.SubElement(obj, "coordinate")
        etree.SubElement(coordinate, "xc").text = repr(float(x))
        etree.SubElement(coordinate, "yc").text = repr(float(y))
        etree.SubElement(coordinate, "brightness").text = repr(float(brightness))
    return etree.tostring(root, pretty_print=True, xml_declaration=False, encoding="utf-8")


def _number(node: etree._Element, field: str, name: str, kind: type = float) -> float | int:
    """The finite number at ``field`` below ``node``; a missing, non-numeric or non-finite field is
    a DataFileError naming the file and the field."""
    text = node.findtext(field)
    if text is None:
        raise DataFileError(f"{name}: field {field} is missing")
    try:
        value = kind(text.strip())
    except ValueError:
        raise DataFileError(f"{name}: field {field} = {text.strip()!r} is not a{'n integer' if kind is int else ' number'}") from None
    if not math.isfinite(value):
        raise DataFileError(f"{name}: field {field} = {text.strip()!r} is not finite")
    return value


def parse_annotation(content: bytes, name: str) -> tuple[np.ndarray, int, float]:
    """(targets (k, 3), size, sigma) from one annotation file's bytes; ``name`` is for errors.

    Every field must be present and finite, width = height = size, and each target inside the
    frame (x, y in [-1/2, size - 1/2], LR px) with brightness >= 0; otherwise a DataFileError names
    the file, the object and the field.
    """
    try:
        root = etree.fromstring(content)
    except etree.XMLSyntaxError as exc:
        raise DataFileError(f"{name}: not a valid SeqCSIST annotation ({exc})") from exc
    size, height = _number(root, "size/width", name, int), _number(root, "size/height", name, int)
    if size < 1 or height != size:
        raise DataFileError(f"{name}: size/width = {size} and size/height = {height}: a square frame is required")
    sigma = _number(root, "sigma", name)
    rows = []
    for i, obj in enumerate(root.iterfind("object")):
        where = f"{name} (object {i})"
        x, y, brightness = (_number(obj, f"coordinate/{field}", where) for field in ("xc", "yc", "brightness"))
        for field, value in (("xc", x), ("yc", y)):
            if not -0.5 <= value <= size - 0.5:
                raise DataFileError(f"{where}: field coordinate/{field} = {value} lies outside the "
                                    f"{size}x{size} frame [-0.5, {size - 0.5}]")
        if brightness < 0:
            raise DataFileError(f"{where}: field coordinate/brightness = {brightness} is negative")
        rows.append((x, y, brightness))
    return np.array(rows, dtype=np.float64).reshape(-1, 3), size, sigma


def png_bytes(image: np.ndarray, bit_depth: int) -> bytes:
    """A frame as PNG: 16-bit for bit depth 16, else the official 8-bit (round, clip to 0-255)."""
    if bit_depth == 16:
        pil = Image.fromarray(np.clip(np.round(image), 0, 65535).astype(np.uint16))
    else:
        pil = Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def _add_member(archive: tarfile.TarFile, name: str, content: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    info.mode = 0o644
    info.mtime = 0  # fixed metadata: the same data gives the same archive bytes
    archive.addfile(info, io.BytesIO(content))


def write_official_archive(frames: pd.DataFrame, targets: pd.DataFrame, split: pd.DataFrame,
                           path: str | Path, *, sigma: float, bit_depth: int = 8,
                           dataset_dir: str = OFFICIAL_DATASET_DIR, progress: bool = False) -> None:
    """Pack the official per-frame layout into one deterministic .tar.gz.

    Members: ``{dataset_dir}/{train,val,test}/image/image_{id}.png`` and
    ``.../annotation/COS{id}.xml``; ids restart at 0 in each split and run through the split's
    trajectories in ascending order, frame by frame, as the official loaders expect.
    """
    images = np.stack(frames["image"].to_numpy())
    size = int(round(np.sqrt(images.shape[1])))
    order = frames[["trajectory", "frame"]].merge(split, on="trajectory", how="left")
    if order["split"].isna().any():
        raise DataFileError("split table does not cover every trajectory of the frames table")
    grouped_targets = {key: group[["x", "y", "brightness"]].to_numpy()
                       for key, group in targets.groupby(["trajectory", "frame"], sort=False)}
    empty = np.zeros((0, 3))
    with atomic_path(path) as tmp, tmp.open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped, \
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for split_name in SPLIT_NAMES:
            rows = order.index[order["split"] == split_name]
            rows = rows[np.lexsort((order.loc[rows, "frame"], order.loc[rows, "trajectory"]))]
            base = f"{dataset_dir}/{split_name}"
            for frame_id, row in enumerate(tqdm(rows, desc=f"pack {split_name}", unit="frame",
                                                disable=not progress)):
                key = (order.at[row, "trajectory"], order.at[row, "frame"])
                _add_member(archive, f"{base}/{IMAGE_DIR}/{IMAGE_NAME.format(id=frame_id)}",
                            png_bytes(images[row].reshape(size, size), bit_depth))
                _add_member(archive, f"{base}/{ANNOTATION_DIR}/{ANNOTATION_NAME.format(id=frame_id)}",
                            annotation_xml(frame_id, grouped_targets.get(key, empty), size, sigma))


def find_official_tree(root: str | Path) -> Path:
    """The folder holding train/val/test: ``root`` itself, root/track_5000_20, or one root/track_*."""
    root = Path(root)
    if not root.is_dir():
        raise DataFileError(f"{root}: folder not found (data.official_root)")
    if (root / "train").is_dir():
        return root
    if (root / OFFICIAL_DATASET_DIR).is_dir():
        return root / OFFICIAL_DATASET_DIR
    candidates = sorted(p for p in root.glob("track_*") if p.is_dir())
    if len(candidates) == 1:
        return candidates[0]
    found = f"; found {[p.name for p in candidates]}" if candidates else ""
    raise DataFileError(f"{root}: no official SeqCSIST tree found (expected {OFFICIAL_DATASET_DIR}/"
                        f"{{train,val,test}}/{{{IMAGE_DIR},{ANNOTATION_DIR}}}{found})")


def _numbered_files(folder: Path, pattern: str) -> dict[int, Path]:
    """Files of ``folder`` whose name matches pattern (one int group), keyed by that integer."""
    regex = re.compile(pattern)
    found = {}
    for path in folder.iterdir():
        match = regex.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


PNG_MODES = {8: ("L",), 16: ("I;16", "I;16B", "I;16L", "I")}  # PIL modes of 8- and 16-bit grey PNGs


def read_png(path: Path, bit_depth: int, size: int | None = None) -> np.ndarray:
    """One grey PNG frame as float32 (size, size); a file that is unreadable, of another mode or
    bit depth than ``bit_depth`` (0 = float sensor, stored as 8-bit PNG) or not size x size raises
    a DataFileError naming it."""
    expected = PNG_MODES[16 if bit_depth == 16 else 8]
    try:
        with Image.open(path) as pil:
            mode, shape = pil.mode, (pil.height, pil.width)
            if mode in expected:
                image = np.asarray(pil, dtype=np.float32)
    except OSError as exc:
        raise DataFileError(f"{path}: not a readable PNG ({exc})") from exc
    if mode not in expected:
        found = "a 16-bit" if mode in PNG_MODES[16] else "an 8-bit" if mode == "L" else f"a mode {mode!r}"
        raise DataFileError(f"{path}: {found} PNG, expected a {bit_depth if bit_depth == 16 else 8}-bit grey PNG "
                            f"(sensor.bit_depth = {bit_depth})")
    if shape[0] != shape[1] or (size is not None and shape[0] != size):
        raise DataFileError(f"{path}: image is {shape[0]}x{shape[1]} pixels, expected "
                            f"{'a square frame' if size is None else f'{size}x{size}'}")
    return image


BACKGROUND_SUFFIXES = (".png", ".tif", ".tiff")


def read_background_images(folder: str | Path, size: int) -> list[np.ndarray]:
    """Every grey PNG/TIFF image of ``folder`` (sorted by name) as a float32 array in its own
    counts; a missing or empty folder, an unreadable or colour image, or one smaller than
    ``size`` x ``size`` raises a DataFileError naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFileError(f"{folder}: background folder not found (simulate.background_dir)")
    paths = sorted(path for path in folder.iterdir() if path.suffix.lower() in BACKGROUND_SUFFIXES)
    if not paths:
        raise DataFileError(f"{folder}: no {'/'.join(BACKGROUND_SUFFIXES)} images (simulate.background_dir)")
    images = []
    for path in paths:
        try:
            with Image.open(path) as pil:
                mode = pil.mode
                image = np.asarray(pil, dtype=np.float32) if mode in ("L", "F", *PNG_MODES[16]) else None
        except OSError as exc:
            raise DataFileError(f"{path}: not a readable image ({exc})") from exc
        if image is None or image.ndim != 2:
            raise DataFileError(f"{path}: a mode {mode!r} image, expected a grey (single-channel) image")
        if min(image.shape) < size:
            raise DataFileError(f"{path}: {image.shape[0]}x{image.shape[1]} pixels, smaller than a "
                                f"{size}x{size} frame")
        images.append(image)
    return images


def read_official_tree(root: str | Path, frames_per_trajectory: int, *, bit_depth: int,
                       size: int | None = None, progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Import an unpacked official tree into (frames, targets) tables.

    Every split folder train, val and test with its ``image`` and ``annotation`` folders must be
    present. Frame ids are sorted numerically per split; trajectory t of a split is frames
    t*F .. t*F + F - 1. Trajectory numbers run on across splits (train, val, test), and the
    frames table carries the given split in a ``source_split`` column. PNGs must be grey,
    ``bit_depth`` deep (the sensor's; 0 = float sensor, 8-bit PNGs) and ``size`` x ``size`` (the
    sensor's; None = the first frame's); annotations must be complete, finite and inside the
    frame. Any violation is a DataFileError naming the file and the field.
    """
    tree = find_official_tree(root)
    frame_parts, target_parts = [], []
    trajectory_base = 0
    for split_name in SPLIT_NAMES:
        image_dir, annotation_dir = tree / split_name / IMAGE_DIR, tree / split_name / ANNOTATION_DIR
        for folder in (tree / split_name, image_dir, annotation_dir):
            if not folder.is_dir():
                raise DataFileError(f"{folder}: folder missing (an official tree has {list(SPLIT_NAMES)}, "
                                    f"each with {IMAGE_DIR}/ and {ANNOTATION_DIR}/)")
        image_files = _numbered_files(image_dir, r"image_(\d+)\.png")
        ids = sorted(image_files)
        if not ids:
            raise DataFileError(f"{image_dir}: no image_<id>.png files")
        if ids != list(range(len(ids))):
            missing = sorted(set(range(ids[-1] + 1)) - set(ids))
            raise DataFileError(f"{image_dir}: image ids are not 0..{len(ids) - 1} "
                                f"({IMAGE_NAME.format(id=missing[0])} is missing)")
        if len(ids) % frames_per_trajectory:
            raise DataFileError(f"{image_dir}: {len(ids)} frames is not a multiple of "
                                f"{frames_per_trajectory} frames per trajectory")
        images, rows = [], []
        for frame_id in tqdm(ids, desc=f"import {split_name}", unit="frame", disable=not progress):
            image_path = image_files[frame_id]
            image = read_png(image_path, bit_depth, size)
            size = len(image)
            annotation_path = annotation_dir / ANNOTATION_NAME.format(id=frame_id)
            if not annotation_path.is_file():
                raise DataFileError(f"{annotation_path}: annotation missing for {image_path.name}")
            targets, annotated_size, _ = parse_annotation(annotation_path.read_bytes(), str(annotation_path))
            if annotated_size != size:
                raise DataFileError(f"{annotation_path}: field size/width = {annotated_size} but "
                                    f"{image_path.name} is {size}x{size}")
            images.append(image)
            trajectory = trajectory_base + frame_id // frames_per_trajectory
            frame = frame_id % frames_per_trajectory
            rows.append((trajectory, frame, len(targets)))
            target_parts.append(pd.DataFrame({
                "trajectory": trajectory, "frame": frame, "target": np.arange(len(targets)),
                "x": targets[:, 0], "y": targets[:, 1], "brightness": targets[:, 2]}))
        stacked = np.stack(images)
        meta = np.array(rows, dtype=np.int64).reshape(-1, 3)
        frame_parts.append(pd.DataFrame({
            "trajectory": meta[:, 0], "frame": meta[:, 1],
            "image": list(stacked.reshape(len(stacked), -1)), "n_targets": meta[:, 2],
            "source_split": split_name}))
        trajectory_base += len(ids) // frames_per_trajectory
    frames = pd.concat(frame_parts, ignore_index=True)
    targets = pd.concat(target_parts, ignore_index=True).astype(
        {"trajectory": np.int64, "frame": np.int64, "target": np.int64})
    return frames, targets
