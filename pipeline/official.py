"""The official SeqCSIST folder layout: export as one deterministic archive, import an unpacked tree.

``{dataset}/{train,val,test}/image/image_{id}.png`` with ``.../annotation/COS{id}.xml`` (the
toolkit's schema: size, sigma and one ``object`` per target with ``coordinate/xc, yc, brightness``).
The importer refuses, naming the file, what the format cannot hold: a frame without targets, an
annotation without its image (or the reverse), a PSF width other than the sensor's, a target
outside the frame.
"""
from __future__ import annotations

import gzip
import io
import math
import re
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
from lxml import etree
from tqdm.auto import tqdm

from pipeline.settings import SPLIT_NAMES
from pipeline.errors import DataFileError
from pipeline.images import png_bytes, read_png
from pipeline.io import atomic_path

OFFICIAL_DATASET_DIR = "track_5000_20"
IMAGE_DIR, ANNOTATION_DIR = "image", "annotation"
IMAGE_NAME = "image_{id}.png"
ANNOTATION_NAME = "COS{id}.xml"
SIGMA_TOLERANCE = 1e-6  # LR px: an annotation's sigma must be the sensor's PSF std to this


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


def read_official_tree(root: str | Path, frames_per_trajectory: int, *, bit_depth: int,
                       size: int | None = None, psf_sigma: float | None = None,
                       progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Import an unpacked official tree into (frames, targets) tables.

    Every split folder train, val and test with its ``image`` and ``annotation`` folders must be
    present. Frame ids are sorted numerically per split; trajectory t of a split is frames
    t*F .. t*F + F - 1. Trajectory numbers run on across splits (train, val, test), and the
    frames table carries the given split in a ``source_split`` column. PNGs must be grey,
    ``bit_depth`` deep (the sensor's; 0 = float sensor, 8-bit PNGs) and ``size`` x ``size`` (the
    sensor's; None = the first frame's); annotations must be complete, finite, inside the frame,
    hold at least one target and, when ``psf_sigma`` is given (the sensor's), carry that sigma;
    every annotation must have its image. Any violation is a DataFileError naming the file and
    the field.
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
        orphans = sorted(set(_numbered_files(annotation_dir, r"COS(\d+)\.xml")) - set(ids))
        if orphans:
            raise DataFileError(f"{annotation_dir / ANNOTATION_NAME.format(id=orphans[0])}: annotation without its "
                                f"image {IMAGE_NAME.format(id=orphans[0])} ({len(orphans)} such file(s) in "
                                f"{annotation_dir})")
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
            targets, annotated_size, sigma = parse_annotation(annotation_path.read_bytes(), str(annotation_path))
            if annotated_size != size:
                raise DataFileError(f"{annotation_path}: field size/width = {annotated_size} but "
                                    f"{image_path.name} is {size}x{size}")
            if not len(targets):
                raise DataFileError(f"{annotation_path}: no object: every frame of the format holds at least one "
                                    f"target, and {image_path.name} would be imported with none")
            if psf_sigma is not None and abs(sigma - psf_sigma) > SIGMA_TOLERANCE:
                raise DataFileError(f"{annotation_path}: field sigma = {sigma:g} but sensor.psf_sigma = {psf_sigma:g}; "
                                    "set sensor.psf_sigma to the data's PSF")
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
