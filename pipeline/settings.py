"""Every section's typed settings: one frozen dataclass per params.yaml section (and per method
budget), each built by ``from_section`` from the section as given and checked key by key with the
toolkit of :mod:`pipeline.config` (a bad value is a ConfigError naming the key, the value and what
is allowed). The sensor, a physical object with behaviour, is :class:`pipeline.sensor.Sensor`.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.config import (build_config, check_bool, check_choice, check_integer, check_interval,
                             check_list, check_number, check_number_list, register_section_check, require)

CURVE_TYPES = ("line", "quadratic", "circle")
BACKGROUNDS = ("none", "clutter", "images")  # what the targets are pasted on (paper Table IV)
LAYOUTS = ("arms", "disc")  # targets on distinct compass arms of the reference point, or anywhere in a disc
BIT_DEPTHS = (0, 8, 16)
DATA_SOURCES = ("simulate", "official")
QINIT_MEASUREMENTS = ("frames", "phi_gt")
SPLIT_NAMES = ("train", "val", "test")
MAX_TARGETS = 8  # four cardinal plus four diagonal directions
DEVICES = ("auto", "cpu", "cuda")


@dataclasses.dataclass(frozen=True)
class ClutterConfig:
    """Synthetic clutter: per trajectory a mean ``level`` drawn uniformly from [low, high] plus a
    smooth random field of std ``amplitude`` (counts) and Gaussian correlation length
    ``correlation`` (LR px)."""

    level: tuple[float, float]
    amplitude: float
    correlation: float

    @classmethod
    def from_section(cls, given: Mapping, name: str) -> "ClutterConfig":
        return build_config(cls, name, given, {
            "level": lambda k, v: check_interval(k, v, 0.0),
            "amplitude": lambda k, v: check_number(k, v, 0.0),
            "correlation": lambda k, v: check_number(k, v, 0.0, strict=True),
        })


@dataclasses.dataclass(frozen=True)
class SimulateConfig:
    """The SeqCSIST scene simulator (paper section III); lengths in LR pixels, brightness in counts.
    How frames are recorded (size, PSF, noise, bits) is the sensor's (pipeline.sensor)."""

    seed: int
    trajectories: int
    frames: int
    k_min: int
    k_max: int
    distance: float
    step: float
    drift_max: float
    brightness: tuple[float, float]
    curves: tuple[str, ...]
    line_slope_max: float
    quadratic_curvature_max: float
    circle_radius: tuple[float, float]
    background: str
    background_dir: str | None
    clutter: ClutterConfig
    layout: str = "arms"

    @classmethod
    def from_section(cls, given: Mapping, name: str = "simulate") -> "SimulateConfig":
        def curves(key, value):
            check_list(key, value, f"curve types from {list(CURVE_TYPES)}")
            for i, curve in enumerate(value):
                check_choice(f"{key}[{i}]", curve, CURVE_TYPES)
            return tuple(value)

        config = build_config(cls, name, given, {
            "seed": lambda k, v: check_integer(k, v, 0),
            "trajectories": lambda k, v: check_integer(k, v, 1),
            "frames": lambda k, v: check_integer(k, v, 1),
            "k_min": lambda k, v: check_integer(k, v, 1),
            "k_max": lambda k, v: check_integer(k, v, 1),
            "distance": lambda k, v: check_number(k, v, 0.0),
            "step": lambda k, v: check_number(k, v, 0.0),
            "drift_max": lambda k, v: check_number(k, v, 0.0),
            "brightness": lambda k, v: check_interval(k, v, 0.0, strict=True),
            "curves": curves,
            "line_slope_max": lambda k, v: check_number(k, v, 0.0),
            "quadratic_curvature_max": lambda k, v: check_number(k, v, 0.0),
            "circle_radius": lambda k, v: check_interval(k, v, 0.0, strict=True),
            "background": lambda k, v: check_choice(k, v, BACKGROUNDS),
            "background_dir": lambda k, v: v,
            "clutter": lambda k, v: ClutterConfig.from_section(v, k),
            "layout": lambda k, v: check_choice(k, v, LAYOUTS),
        })
        require(config.background != "images" or (isinstance(config.background_dir, str) and config.background_dir),
                f"{name}.background_dir", config.background_dir,
                f"a folder of infrared images is required when {name}.background = 'images'")
        require(config.background_dir is None or isinstance(config.background_dir, str),
                f"{name}.background_dir", config.background_dir, "a folder path or null")
        require(config.k_min <= config.k_max, f"{name}.k_min", config.k_min,
                 f"must not exceed {name}.k_max = {config.k_max}")
        require(config.k_max <= MAX_TARGETS, f"{name}.k_max", config.k_max,
                 f"at most {MAX_TARGETS} (one target per compass direction)")
        return config


@dataclasses.dataclass(frozen=True)
class PhiConfig:
    """The sampling matrix: sub-pixel ratio c (odd) and dblquad tolerances."""

    c: int
    epsabs: float
    epsrel: float

    @classmethod
    def from_section(cls, given: Mapping, name: str = "phi") -> "PhiConfig":
        config = build_config(cls, name, given, {
            "c": lambda k, v: check_integer(k, v, 1),
            "epsabs": lambda k, v: check_number(k, v, 0.0, strict=True),
            "epsrel": lambda k, v: check_number(k, v, 0.0, strict=True),
        })
        require(config.c % 2 == 1, f"{name}.c", config.c, "must be a positive odd integer (1, 3, 5, ...)")
        return config


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the frames come from: the simulator, or an unpacked official SeqCSIST tree."""

    source: str
    official_root: str | None

    @classmethod
    def from_section(cls, given: Mapping, name: str = "data") -> "DataConfig":
        def root(key, value):
            require(value is None or (isinstance(value, str) and value != ""), key, value,
                     "null or a path to a folder holding track_5000_20/")
            return value

        config = build_config(cls, name, given, {
            "source": lambda k, v: check_choice(k, v, DATA_SOURCES),
            "official_root": root,
        })
        if config.source == "official":
            require(config.official_root is not None, f"{name}.official_root", None,
                     f"a path is required when {name}.source is 'official'")
            require(Path(config.official_root).is_dir(), f"{name}.official_root", config.official_root,
                     "the folder does not exist")
        return config


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """Trajectory-level split fractions (train, val, test) and its seed."""

    seed: int
    fractions: tuple[float, float, float]

    @classmethod
    def from_section(cls, given: Mapping, name: str = "split") -> "SplitConfig":
        def fractions(key, value):
            require(isinstance(value, Mapping) and set(value) == set(SPLIT_NAMES), key, value,
                     f"a mapping with exactly the keys {list(SPLIT_NAMES)} is required")
            parts = tuple(check_number(f"{key}.{s}", value[s], 0.0, upper=1.0) for s in SPLIT_NAMES)
            require(abs(sum(parts) - 1.0) < 1e-9, key, dict(value), f"must sum to 1 (they sum to {sum(parts):g})")
            require(all(part > 0 for part in parts), key, dict(value),
                    "train, val and test must all be non-empty (val picks the best epoch)")
            return parts

        return build_config(cls, name, given, {
            "seed": lambda k, v: check_integer(k, v, 0),
            "fractions": fractions,
        })


@dataclasses.dataclass(frozen=True)
class QinitConfig:
    """Q_init = argmin ||Q Z - S||: Z the training frames ('frames') or Phi S as shipped ('phi_gt')."""

    measurements: str

    @classmethod
    def from_section(cls, given: Mapping, name: str = "qinit") -> "QinitConfig":
        return build_config(cls, name, given, {"measurements": lambda k, v: check_choice(k, v, QINIT_MEASUREMENTS)})


def ap_key(threshold: float) -> str:
    """Metric key of the AP at a distance threshold (LR px): 0.05 -> 'ap05', 0.1 -> 'ap10'."""
    return f"ap{round(threshold * 100):02d}"


def score_keys(thresholds: Sequence[float]) -> tuple[str, ...]:
    """The score keys of a metrics JSON: ``cso_map``, then one AP key per distance threshold."""
    return ("cso_map", *(ap_key(t) for t in thresholds))


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """CSO-mAP protocol: HR-map brightness threshold, distance thresholds (LR px), window length,
    and which test windows are scored (one in ``window_stride`` of each trajectory, the offset
    rotating with the trajectory, :func:`pipeline.data.scored_positions`; 1 = all); ``match_radius``
    (LR px): the pairing radius of the matched metrics (Jaccard, RMSE, efficiency)."""

    brightness_threshold: float
    distance_thresholds: tuple[float, ...]
    window: int
    window_stride: int
    match_radius: float = 0.25

    @classmethod
    def from_section(cls, given: Mapping, name: str = "evaluate") -> "EvaluateConfig":
        config = build_config(cls, name, given, {
            "brightness_threshold": lambda k, v: check_number(k, v, 0.0),
            "distance_thresholds": lambda k, v: check_number_list(k, v, 0.0, strict=True),
            "window": lambda k, v: check_integer(k, v, 1),
            "window_stride": lambda k, v: check_integer(k, v, 1),
            "match_radius": lambda k, v: check_number(k, v, 0.0, strict=True),
        })
        require(config.window % 2 == 1, f"{name}.window", config.window, "must be odd (a middle frame is scored)")
        keys = [ap_key(t) for t in config.distance_thresholds]
        duplicate = next((key for i, key in enumerate(keys) if key in keys[:i]), None)
        require(duplicate is None, f"{name}.distance_thresholds", list(config.distance_thresholds),
                f"two thresholds share the AP key {duplicate} (keys are the threshold in hundredths of a px)")
        return config

    @property
    def score_keys(self) -> tuple[str, ...]:
        """``cso_map`` and the AP keys of this protocol's distance thresholds."""
        return score_keys(self.distance_thresholds)


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """Tables and figures: how many test windows the figure shows."""

    figure_windows: int

    @classmethod
    def from_section(cls, given: Mapping, name: str = "report") -> "ReportConfig":
        return build_config(cls, name, given, {"figure_windows": lambda k, v: check_integer(k, v, 1)})


@dataclasses.dataclass(frozen=True)
class CrbConfig:
    """The Cramér-Rao reference row (pipeline/bound.py): error ``draws`` per test target for its
    expected CSO-mAP, and their ``seed``."""

    draws: int
    seed: int

    @classmethod
    def from_section(cls, given: Mapping, name: str = "crb") -> "CrbConfig":
        return build_config(cls, name, given, {"draws": lambda k, v: check_integer(k, v, 1),
                                               "seed": lambda k, v: check_integer(k, v, 0)})


@dataclasses.dataclass(frozen=True)
class PriorsConfig:
    """Scene priors from the training split (pipeline/priors.py): the PSF std is fitted on
    ``psf_frames`` training frames."""

    psf_frames: int

    @classmethod
    def from_section(cls, given: Mapping, name: str = "priors") -> "PriorsConfig":
        return build_config(cls, name, given, {"psf_frames": lambda k, v: check_integer(k, v, 1)})


def _merged(base: Mapping, change: Mapping) -> dict:
    """``base`` with the keys of ``change`` replaced, nested mappings merged key by key."""
    out = dict(base)
    for key, value in change.items():
        out[key] = _merged(base[key], value) if isinstance(value, Mapping) and isinstance(base.get(key), Mapping) else value
    return out


@dataclasses.dataclass(frozen=True)
class StressConfig:
    """Scene shifts for the stress table: each shift changes some keys of the ``simulate`` and
    ``sensor`` sections; ``trajectories`` test trajectories are simulated per shift with ``seed``
    (data no method has seen) and one window in ``window_stride`` of each is scored by PhysFit
    and the trained ``network`` (a ``methods`` key; trained on the default data; the physics they
    receive keeps the default sensor). ``shifts`` maps a row label to
    ``{simulate: {...}, sensor: {...}}`` (either may be left out)."""

    network: str
    trajectories: int
    window_stride: int
    seed: int
    shifts: tuple[tuple[str, Mapping, Mapping], ...]

    @classmethod
    def from_section(cls, given: Mapping, name: str = "stress", methods: Sequence[str] = ()) -> "StressConfig":
        """``methods``: the method ids the network must be one of (not checked when empty)."""
        def network(key, value):
            require(isinstance(value, str), key, value, "a method id (a key of methods)")
            if methods:
                check_choice(key, value, tuple(methods))
            return value

        def shifts(key, value):
            require(isinstance(value, Mapping) and len(value) > 0, key, value,
                    "a mapping of row label -> {simulate: {...}, sensor: {...}}")
            rows = []
            for label, change in value.items():
                require(isinstance(change, Mapping) and set(change) <= {"simulate", "sensor"}, f"{key}.{label}",
                        change, "a mapping with the keys simulate and/or sensor")
                for part in ("simulate", "sensor"):
                    require(isinstance(change.get(part, {}), Mapping), f"{key}.{label}.{part}", change.get(part),
                            "a mapping of keys of that section")
                rows.append((str(label), dict(change.get("simulate", {})), dict(change.get("sensor", {}))))
            return tuple(rows)

        return build_config(cls, name, given, {"network": network,
                                               "trajectories": lambda k, v: check_integer(k, v, 1),
                                               "window_stride": lambda k, v: check_integer(k, v, 1),
                                               "seed": lambda k, v: check_integer(k, v, 0),
                                               "shifts": shifts})

    def scenes(self, simulate: Mapping, sensor: Mapping, name: str = "stress") -> list[tuple[str, "SimulateConfig", Mapping]]:
        """(label, shifted simulate config, shifted sensor section) per shift, every value checked
        (a bad one is a ConfigError naming ``stress.shifts.<label>.<section>.<key>``)."""
        out = []
        for label, scene, recorder in self.shifts:
            where = f"{name}.shifts.{label}"
            config = SimulateConfig.from_section(
                _merged(simulate, {**scene, "seed": self.seed, "trajectories": self.trajectories}), f"{where}.simulate")
            out.append((label, config, _merged(sensor, recorder)))
        return out


@dataclasses.dataclass(frozen=True)
class NoiseSweepConfig:
    """Additive-noise levels (counts), the methods scored at each, the test-window stride (one
    window in k of each test trajectory is scored, as evaluate.window_stride; 1 = all) and the seed of the noise added to
    imported (not simulated) frames."""

    sigmas: tuple[float, ...]
    methods: tuple[str, ...]
    window_stride: int
    seed: int

    @classmethod
    def from_section(cls, given: Mapping, name: str = "noise_sweep") -> "NoiseSweepConfig":
        def methods(key, value):
            check_list(key, value, "method ids")
            require(all(isinstance(v, str) for v in value), key, value, "method ids are strings")
            return tuple(value)

        return build_config(cls, name, given, {"sigmas": lambda k, v: check_number_list(k, v, 0.0),
                                               "methods": methods,
                                               "window_stride": lambda k, v: check_integer(k, v, 1),
                                               "seed": lambda k, v: check_integer(k, v, 0)})


for _name, _check in {
    "data": lambda p: DataConfig.from_section(p["data"]),
    "simulate": lambda p: SimulateConfig.from_section(p["simulate"]),
    "phi": lambda p: PhiConfig.from_section(p["phi"]),
    "split": lambda p: SplitConfig.from_section(p["split"]),
    "qinit": lambda p: QinitConfig.from_section(p["qinit"]),
    "evaluate": lambda p: EvaluateConfig.from_section(p["evaluate"]),
    "report": lambda p: ReportConfig.from_section(p["report"]),
    "crb": lambda p: CrbConfig.from_section(p["crb"]),
    "priors": lambda p: PriorsConfig.from_section(p["priors"]),
    "noise_sweep": lambda p: NoiseSweepConfig.from_section(p["noise_sweep"]),
    "stress": lambda p: StressConfig.from_section(p["stress"], methods=list(p.get("methods") or {})),
}.items():
    register_section_check(_name, _check)


DRAWS = ("windows", "trajectories")
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class TrainBudget:
    """Optimiser and budget of a trainable method (``methods.<id>.train``).

    ``epochs`` passes of ``windows_per_epoch`` training windows each, drawn afresh every epoch by
    a seeded shuffle (None = every window once per epoch); Adam with ``lr`` and
    ``weight_decay`` on batches of ``batch`` windows (the discriminator of an adversarial method
    uses the same settings). ``draw``: ``windows`` shuffles single windows; ``trajectories``
    shuffles whole trajectories and keeps each one's windows consecutive, so that a batch holds
    overlapping windows whose shared frames a multi-frame method processes once (the shipped
    DeRefNet trains on one trajectory per batch). ``schedule``: ``constant`` keeps ``lr``;
    ``cosine`` warms up linearly over the first ``warmup_windows`` training windows, then decays
    by a half cosine to 0 at the end of the budget. ``grad_clip``: the largest global gradient
    norm of a step (None = no clipping). ``validate_every``: epochs between validations (the last
    epoch is always validated; the best weights are chosen among the validated epochs);
    ``checkpoint_every``: epochs between resume checkpoints (the last epoch always writes one).
    """

    epochs: int
    windows_per_epoch: int | None
    batch: int
    lr: float
    weight_decay: float
    draw: str = "windows"
    schedule: str = "constant"
    warmup_windows: int = 0
    grad_clip: float | None = None
    validate_every: int = 1
    checkpoint_every: int = 1

    @classmethod
    def from_section(cls, given: Mapping, name: str) -> "TrainBudget":
        return build_config(cls, name, given, {
            "epochs": lambda k, v: check_integer(k, v, 1),
            "windows_per_epoch": lambda k, v: None if v is None else check_integer(k, v, 1),
            "batch": lambda k, v: check_integer(k, v, 1),
            "lr": lambda k, v: check_number(k, v, 0.0, strict=True),
            "weight_decay": lambda k, v: check_number(k, v, 0.0),
            "draw": lambda k, v: check_choice(k, v, DRAWS),
            "schedule": lambda k, v: check_choice(k, v, SCHEDULES),
            "warmup_windows": lambda k, v: check_integer(k, v, 0),
            "grad_clip": lambda k, v: None if v is None else check_number(k, v, 0.0, strict=True),
            "validate_every": lambda k, v: check_integer(k, v, 1),
            "checkpoint_every": lambda k, v: check_integer(k, v, 1),
        })

    def windows_drawn(self, n_windows: int) -> int:
        """Training windows drawn each epoch from a training set of ``n_windows``."""
        return n_windows if self.windows_per_epoch is None else min(self.windows_per_epoch, n_windows)

    def steps_per_epoch(self, n_windows: int) -> int:
        """Optimiser steps in one epoch over a training set of ``n_windows`` windows."""
        return -(-self.windows_drawn(n_windows) // self.batch)

    def windows_per_run(self, n_windows: int) -> int:
        """Training windows the whole budget draws from a training set of ``n_windows``."""
        return self.epochs * self.windows_drawn(n_windows)

    def lr_at(self, seen: int, total: int) -> float:
        """The learning rate of a step that starts after ``seen`` of the run's ``total`` windows."""
        if self.schedule == "constant":
            return self.lr
        if seen < self.warmup_windows:
            return self.lr * (seen + 1) / self.warmup_windows
        decay = (seen - self.warmup_windows) / max(total - self.warmup_windows, 1)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(decay, 1.0)))


MAX_SEED = 2**32  # seeds index numpy's and torch's generators; seed * 100_003 + epoch stays in 64 bits


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Settings shared by all methods (section ``trainer``).

    ``seeds``: one training run per seed (initial weights and window draws), scored each; tables
    give mean ± std when there are several. ``val_windows``: validation windows scored after
    every epoch, evenly spaced over the validation split (None = all of them). ``max_windows``:
    a cap on the training windows of every run (one epoch of at most that many; None = the
    methods' own budgets), for smoke runs of a profile. ``check_every``: optimiser steps between
    the non-finite-loss checks, each a host sync on a GPU (1 = every step).
    """

    device: str
    seeds: tuple[int, ...]
    mixed_precision: bool
    eval_batch: int
    threads: int
    val_windows: int | None
    max_windows: int | None = None
    check_every: int = 1

    @classmethod
    def from_section(cls, given: Mapping, name: str = "trainer") -> "TrainerConfig":
        return build_config(cls, name, given, {
            "device": lambda k, v: check_choice(k, v, DEVICES),
            "seeds": check_seeds,
            "mixed_precision": check_bool,
            "eval_batch": lambda k, v: check_integer(k, v, 1),
            "threads": lambda k, v: check_integer(k, v, 0),
            "val_windows": lambda k, v: None if v is None else check_integer(k, v, 1),
            "max_windows": lambda k, v: None if v is None else check_integer(k, v, 1),
            "check_every": lambda k, v: check_integer(k, v, 1),
        })


def check_seeds(key: str, value: Any) -> tuple[int, ...]:
    """A non-empty list of distinct integers >= 0."""
    require(isinstance(value, (list, tuple)) and len(value) > 0, key, value,
            "a non-empty list of distinct integers >= 0, e.g. [0] or [0, 1, 2]")
    seeds = tuple(check_integer(f"{key}[{i}]", seed, 0) for i, seed in enumerate(value))
    for i, seed in enumerate(seeds):
        require(seed < MAX_SEED, f"{key}[{i}]", seed, f"a seed must be below 2**32 = {MAX_SEED}")
    require(len(set(seeds)) == len(seeds), key, value, "the seeds must be distinct")
    return seeds


register_section_check("trainer", lambda params: TrainerConfig.from_section(params["trainer"]))
