"""Typed, validated views of params.yaml.

Every stage reads only its own section through one of the ``*Config.from_section`` constructors
below. They check every value before any work starts and raise :class:`ConfigError` naming the
key, the offending value and what is allowed, so a bad ``dvc exp run -S`` fails in a second
instead of after an hour of compute.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from pipeline.errors import ConfigError  # noqa: F401  (its home is pipeline.errors)

PARAMS_FILE = Path("params.yaml")
PROFILES = ("laptop", "paper")  # scale profiles: a mapping with exactly these keys is a per-profile value



def read_yaml(path: str | Path, what: str = "file") -> Any:
    """A YAML file of the project (params.yaml, experiments.yaml, dvc.yaml) parsed the way DVC
    parses it (YAML 1.2: ``1e-3`` is a number); a missing or unparsable file names the file."""
    path = Path(path)
    try:
        with path.open() as handle:
            return YAML(typ="safe", pure=True).load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: {what} not found") from exc
    except YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc


def read_params(path: str | Path = PARAMS_FILE) -> dict:
    """params.yaml as written (:func:`read_yaml`), a mapping of sections."""
    params = read_yaml(path, "parameter file")
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
    required = {f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
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


def with_overrides(params: Mapping, overrides: Mapping[str, Any]) -> dict:
    """A copy of ``params`` with dotted keys set (what ``dvc exp run -S`` does to params.yaml)."""
    result = copy.deepcopy(dict(params))
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = result
        for part in parents:
            node = node[part]
        node[last] = value
    return result
