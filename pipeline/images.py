"""Grey image files: frames as PNG (8- or 16-bit) and the user's infrared background images.

Every reader names the file it refuses: unreadable, colour, of another bit depth or size than the
sensor's, or holding values the sensor cannot record (not finite, negative, beyond full scale).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.errors import DataFileError

PNG_MODES = {8: ("L",), 16: ("I;16", "I;16B", "I;16L", "I")}  # PIL modes of 8- and 16-bit grey PNGs
BACKGROUND_SUFFIXES = (".png", ".tif", ".tiff")
GREY_MODES = ("L", "F", *PNG_MODES[16])


def png_bytes(image: np.ndarray, bit_depth: int) -> bytes:
    """A frame as PNG: 16-bit for bit depth 16, else the official 8-bit (round, clip to 0-255)."""
    if bit_depth == 16:
        pil = Image.fromarray(np.clip(np.round(image), 0, 65535).astype(np.uint16))
    else:
        pil = Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


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


def check_counts(image: np.ndarray, where: str, full_scale: float | None) -> None:
    """Values a sensor can record: finite, >= 0 and, for an integer sensor, <= its ``full_scale``
    (counts); otherwise a DataFileError naming ``where``."""
    finite = np.isfinite(image)
    if not finite.all():
        raise DataFileError(f"{where}: {int((~finite).sum())} pixel(s) are not finite (NaN or infinite)")
    low, high = float(image.min()), float(image.max())
    if low < 0:
        raise DataFileError(f"{where}: values down to {low:g} are negative; a background is in the sensor's "
                            "counts (>= 0)")
    if full_scale is not None and high > full_scale:
        raise DataFileError(f"{where}: values up to {high:g} exceed the sensor's full scale {full_scale:g} "
                            f"(sensor.bit_depth); rescale the images to the sensor's counts (every frame would "
                            "saturate and the targets vanish)")


def read_background_images(folder: str | Path, size: int, full_scale: float | None) -> list[np.ndarray]:
    """Every grey PNG/TIFF image of ``folder`` (sorted by name) as a float32 array in its own
    counts; a missing or empty folder, an unreadable or colour image, one smaller than
    ``size`` x ``size``, or one with values the sensor cannot record (:func:`check_counts`
    against ``full_scale``, None for a float sensor) raises a DataFileError naming it."""
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
                image = np.asarray(pil, dtype=np.float32) if mode in GREY_MODES else None
        except OSError as exc:
            raise DataFileError(f"{path}: not a readable image ({exc})") from exc
        if image is None or image.ndim != 2:
            raise DataFileError(f"{path}: a mode {mode!r} image, expected a grey (single-channel) image")
        if min(image.shape) < size:
            raise DataFileError(f"{path}: {image.shape[0]}x{image.shape[1]} pixels, smaller than a "
                                f"{size}x{size} frame")
        check_counts(image, str(path), full_scale)
        images.append(image)
    return images
