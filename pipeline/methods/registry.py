"""Name -> method class registry (torchvision style): one decorator line registers a method."""
from __future__ import annotations

import inspect
import re
from typing import Callable

from pipeline.methods.base import PhysicsOperator, UnmixingMethod

_NAME_PATTERN = re.compile(r"[a-z0-9_]+")
_REGISTRY: dict[str, type[UnmixingMethod]] = {}


def register_model(name: str) -> Callable[[type[UnmixingMethod]], type[UnmixingMethod]]:
    """Class decorator registering an :class:`UnmixingMethod` under ``name``.

    Raises ValueError for a name that is not lower-case letters, digits and underscores, or one
    that is already taken; TypeError when the decorated class is not an UnmixingMethod.
    """
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        raise ValueError(f"method name must match ^[a-z0-9_]+$, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"method name {name!r} is already registered "
                         f"(by {_REGISTRY[name].__qualname__})")

    def decorator(cls: type[UnmixingMethod]) -> type[UnmixingMethod]:
        if not (inspect.isclass(cls) and issubclass(cls, UnmixingMethod)):
            raise TypeError(f"{cls!r} registered as {name!r} is not an UnmixingMethod subclass")
        if name in _REGISTRY:
            raise ValueError(f"method name {name!r} is already registered")
        _REGISTRY[name] = cls
        return cls

    return decorator


def _lookup(name: str) -> type[UnmixingMethod]:
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(available_models())}")
    return _REGISTRY[name]


def constructor_parameters(cls: type[UnmixingMethod]) -> list[str] | None:
    """The keyword parameters of ``cls``'s constructor after ``physics``, in order; None when it
    takes any keyword (``**settings``)."""
    parameters = list(inspect.signature(cls).parameters.values())[1:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                     inspect.Parameter.KEYWORD_ONLY)]


def get_model(name: str, physics: PhysicsOperator, **params) -> UnmixingMethod:
    """Build the method ``name`` on ``physics`` with constructor keyword ``params``.

    Raises KeyError (listing the registered names) for an unknown name and TypeError naming the
    method and the offending keys for parameters its constructor does not take.
    """
    cls = _lookup(name)
    accepted = constructor_parameters(cls)
    if accepted is not None:
        unexpected = sorted(set(params) - set(accepted))
        if unexpected:
            raise TypeError(f"method {name!r} got unexpected parameter(s) {', '.join(unexpected)}; "
                            f"it accepts: {', '.join(accepted) or 'none'}")
    return cls(physics, **params)


def available_models(trainable: bool | None = None) -> list[str]:
    """Sorted registered names; ``trainable`` True/False keeps only methods with that flag."""
    return sorted(name for name, cls in _REGISTRY.items()
                  if trainable is None or cls.trainable == trainable)


def method_class(name: str) -> type[UnmixingMethod]:
    """The class registered under ``name`` (KeyError listing the names if unknown)."""
    return _lookup(name)


def method_info(name: str) -> tuple[str, str]:
    """(family, display label) of a registered method, for tables and figures."""
    cls = _lookup(name)
    return cls.family, cls.label or name


def method_module(name: str) -> str:
    """The module (file stem or package) under pipeline/methods that registers ``name`` (DVC deps)."""
    return _lookup(name).__module__.split(".")[2]
