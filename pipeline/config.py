"""Typed, validated views of params.yaml.

Every stage reads only its own section through one of the ``*Config.from_section`` constructors
below. They check every value before any work starts and raise :class:`ConfigError` naming the
key, the offending value and what is allowed, so a bad ``dvc exp run -S`` fails in a second
instead of after an hour of compute.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from pipeline.errors import ConfigError  # noqa: F401  (its home is pipeline.errors)

PARAMS_FILE = Path("params.yaml")
PROFILES = ("laptop", "paper")  # scale profiles: a mapping with exactly these keys is a per-profile value

CURVE_TYPES = ("line", "quadratic", "circle")
BACKGROUNDS = ("none", "clutter", "images")  # what the targets are pasted on (paper Table IV)
LAYOUTS = ("arms", "disc")  # targets on distinct compass arms of the reference point, or anywhere in a disc
BIT_DEPTHS = (0, 8, 16)
DATA_SOURCES = ("simulate", "official")
QINIT_MEASUREMENTS = ("frames", "phi_gt")
SPLIT_NAMES = ("train", "val", "test")
MAX_TARGETS = 8  # four cardinal plus four diagonal directions


def read_params(path: str | Path = PARAMS_FILE) -> dict:
    """params.yaml as written, parsed the way DVC parses it (YAML 1.2: ``1e-3`` is a number)."""
    path = Path(path)
    try:
        with path.open() as handle:
            params = YAML(typ="safe", pure=True).load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: parameter file not found") from exc
    except YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return params


def resolve_profile(params: Mapping) -> dict:
    """Params with every per-profile value ``{laptop: a, paper: b}`` replaced by the one of the
    top-level ``profile`` (the scale switch: ``dvc exp run -S profile=paper``)."""
    profile = params.get("profile", PROFILES[0])
    require(profile in PROFILES, "profile", profile, f"allowed values are {list(PROFILES)}")

    def pick(value: Any) -> Any:
        if isinstance(value, Mapping):
            if value and set(value) == set(PROFILES):
                return pick(value[profile])
            return {key: pick(item) for key, item in value.items()}
        if isinstance(value, list):
            return [pick(item) for item in value]
        return value

    return {key: pick(value) for key, value in params.items()}


SECTION_CHECKS: dict[str, Callable[[Mapping], Any]] = {}


def register_section_check(name: str, check: Callable[[Mapping], Any]) -> None:
    """Declare how section ``name`` is validated (``check(resolved params)`` raises ConfigError):
    :func:`load_params` then checks it under every profile, not only the active one."""
    SECTION_CHECKS[name] = check


def check_inactive_profiles(raw: Mapping) -> None:
    """Validate every registered section under each profile that is not active, so that a bad
    ``{laptop: 8, paper: -1}`` stops now rather than when someone switches profile, hours later."""
    active = raw.get("profile", PROFILES[0])
    for profile in PROFILES:
        if profile == active:
            continue  # the stage checks its own sections of the active profile, with plain messages
        resolved = resolve_profile({**raw, "profile": profile})
        for name, check in SECTION_CHECKS.items():
            if name in resolved:
                try:
                    check(resolved)
                except ConfigError as exc:
                    raise ConfigError(f"under profile {profile} (not the active one): {exc}") from exc


def load_params(path: str | Path = PARAMS_FILE) -> dict:
    """params.yaml with the active profile resolved, every registered section also checked under
    the other profile; a missing or unparsable file names the file. ``trainer.device: cuda`` on a
    machine without a usable GPU stops every stage at once."""
    raw = read_params(path)
    params = resolve_profile(raw)
    check_inactive_profiles(raw)
    trainer = params.get("trainer")
    if isinstance(trainer, Mapping) and trainer.get("device") == "cuda":
        from pipeline.device import resolve_device  # imports torch: only when CUDA is asked for

        resolve_device("cuda")
    return params


def section(params: Mapping, name: str) -> Mapping:
    """One top-level section of params, or a ConfigError naming the missing section."""
    if name not in params or not isinstance(params[name], Mapping):
        raise ConfigError(f"params.yaml has no section '{name}' (a mapping is required)")
    return params[name]


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is invalid: {allowed}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_number(key: str, value: Any, lower: float | None = None, *, strict: bool = False,
            upper: float | None = None) -> float:
    require(_is_number(value), key, value, "a finite number is required")
    if lower is not None:
        ok = value > lower if strict else value >= lower
        require(ok, key, value, f"must be {'>' if strict else '>='} {lower}")
    if upper is not None:
        require(value <= upper, key, value, f"must be <= {upper}")
    return float(value)


def check_integer(key: str, value: Any, lower: int | None = None) -> int:
    require(_is_int(value), key, value, "an integer is required")
    if lower is not None:
        require(value >= lower, key, value, f"must be an integer >= {lower}")
    return int(value)


def check_list(key: str, value: Any, what: str) -> Sequence:
    """A non-empty list (not a string); ``what`` describes its items for the message."""
    require(isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0,
            key, value, f"a non-empty list of {what} is required")
    return value


def check_number_list(key: str, value: Any, lower: float, *, strict: bool = False) -> tuple[float, ...]:
    """A non-empty list of finite numbers above ``lower``."""
    check_list(key, value, f"numbers {'>' if strict else '>='} {lower}")
    return tuple(check_number(f"{key}[{i}]", v, lower, strict=strict) for i, v in enumerate(value))


def check_bool(key: str, value: Any) -> bool:
    require(isinstance(value, bool), key, value, "true or false is required")
    return value


def check_choice(key: str, value: Any, allowed: Sequence) -> Any:
    require(value in allowed, key, value, f"allowed values are {list(allowed)}")
    return value


def check_interval(key: str, value: Any, lower: float | None = None, *, strict: bool = False) -> tuple[float, float]:
    require(isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2,
             key, value, "a list [low, high] is required")
    low = check_number(f"{key}[0]", value[0], lower, strict=strict)
    high = check_number(f"{key}[1]", value[1], lower, strict=strict)
    require(low <= high, key, value, "low must not exceed high")
    return low, high


def _check_keys(name: str, given: Mapping, cls: type) -> None:
    """Unknown keys and missing required keys (fields without a default) are ConfigErrors."""
    fields = dataclasses.fields(cls)
    known = {f.name for f in fields}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]} is not a known key; allowed keys are {sorted(known)}")
    required = {f.name for f in fields if f.default is dataclasses.MISSING}
    missing = sorted(required - set(given))
    if missing:
        raise ConfigError(f"{name}.{missing[0]} is missing (required keys: {sorted(known)})")


def build_config(cls: type, name: str, given: Mapping, checks: Mapping[str, Callable[[str, Any], Any]]):
    """Check the keys of a section, convert each given value with its check, build the dataclass
    (an optional key left out takes the field's default)."""
    if not isinstance(given, Mapping):
        raise ConfigError(f"section '{name}' must be a mapping, got {given!r}")
    _check_keys(name, given, cls)
    return cls(**{key: check(f"{name}.{key}", given[key]) for key, check in checks.items() if key in given})


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
