"""The sensor: what a calibrated infrared camera knows about how its frames were recorded.

One frozen value built once from the ``sensor`` section of params.yaml and carried by the physics
object next to Phi and Q_init (deepinv's ``physics.forward = sensor(noise(A x))``). The simulator
records frames through it and every method reads it from ``physics.sensor``; scene statistics
(brightness range, spacing, target count) are not part of it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from pipeline.config import (build_config, check_bool, check_choice, check_integer, check_number,
                             register_section_check, require)
from pipeline.settings import BIT_DEPTHS


@dataclasses.dataclass(frozen=True)
class Sensor:
    """Frame side ``frame_size`` (LR px, odd), Gaussian PSF std ``psf_sigma`` (LR px), additive noise
    std ``noise_sigma`` (counts), ``bit_depth`` (0 = float frames, else unsigned integers) and
    whether values clip at full scale (``saturate``)."""

    frame_size: int = 11
    psf_sigma: float = 0.5
    noise_sigma: float = 0.0
    bit_depth: int = 8
    saturate: bool = True

    def __post_init__(self) -> None:
        if self.frame_size < 3 or self.frame_size % 2 == 0:
            raise ValueError(f"sensor frame_size must be odd and >= 3, got {self.frame_size}")
        if not self.psf_sigma > 0 or self.noise_sigma < 0:
            raise ValueError(f"sensor needs psf_sigma > 0 and noise_sigma >= 0, got {self.psf_sigma}, "
                             f"{self.noise_sigma}")
        if self.bit_depth not in BIT_DEPTHS:
            raise ValueError(f"sensor bit_depth must be one of {BIT_DEPTHS}, got {self.bit_depth}")

    @classmethod
    def from_section(cls, given: Mapping, name: str = "sensor") -> "Sensor":
        """The sensor of params.yaml's ``sensor`` section; a bad value is a ConfigError naming its key."""
        def frame_size(key: str, value: Any) -> int:
            check_integer(key, value, 3)
            require(value % 2 == 1, key, value, "must be odd (the group starts on a pixel centre)")
            return value

        return build_config(cls, name, given, {
            "frame_size": frame_size,
            "psf_sigma": lambda k, v: check_number(k, v, 0.0, strict=True),
            "noise_sigma": lambda k, v: check_number(k, v, 0.0),
            "bit_depth": lambda k, v: check_choice(k, v, BIT_DEPTHS),
            "saturate": check_bool,
        })

    @property
    def quantised(self) -> bool:
        """Whether frames are rounded to integers (bit depth 8 or 16)."""
        return self.bit_depth > 0

    @property
    def quantum(self) -> float:
        """Quantisation step (counts): 1 for integer frames, 0 for float frames."""
        return 1.0 if self.quantised else 0.0

    @property
    def full_scale(self) -> float | None:
        """Largest recordable value, 2^bit_depth - 1 (counts); None for float frames."""
        return 2.0 ** self.bit_depth - 1.0 if self.quantised else None

    @property
    def clip_high(self) -> float | None:
        """Where values saturate: the full scale when ``saturate``, else None (no upper clip)."""
        return self.full_scale if self.saturate else None

    @property
    def read_sd(self) -> float:
        """Per-pixel noise std (counts) of a recorded frame: additive noise plus rounding (q^2 / 12)."""
        return float(np.sqrt(self.noise_sigma ** 2 + self.quantum ** 2 / 12.0))

    def with_noise(self, noise_sigma: float) -> "Sensor":
        """The same sensor with another additive noise std (counts)."""
        return dataclasses.replace(self, noise_sigma=float(noise_sigma))

    def record(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Noise-free frames (any shape, counts) -> recorded float32 frames.

        Additive Gaussian noise, then for integer bit depths rounding, clipping at 0 (unsigned)
        and, with ``saturate``, at the full scale.
        """
        images = np.asarray(clean, dtype=np.float64)
        if self.noise_sigma > 0:
            images = images + rng.normal(0.0, self.noise_sigma, images.shape)
        if self.quantised:
            images = np.clip(np.round(images), 0.0, self.clip_high)
        return images.astype(np.float32)


register_section_check("sensor", lambda params: Sensor.from_section(params["sensor"]))
