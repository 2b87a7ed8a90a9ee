"""Unmixing methods: LR windows in, HR maps out, looked up by name.

    physics = PhysicsOperator(phi, qinit, sensor)
    model = get_model("ista_net", physics, phases=9)
    output = model(lr)  # lr (B, W, m, m) raw intensities -> output.hr (B, c m, c m)

Adding a method: one module in this folder with a ``@register_model("name")`` class (family,
label, trainable and window declared on the class). Every module here is imported below, so the
registry, the tests and the tables see it without further edits.
"""
import importlib
import pkgutil

from pipeline.methods.base import MethodOutput, PhysicsOperator, UnmixingMethod
from pipeline.methods.registry import available_models, get_model, method_class, method_info, register_model

_INFRASTRUCTURE = {"base", "registry", "blocks"}
for _module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
    if _module not in _INFRASTRUCTURE and not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "MethodOutput",
    "PhysicsOperator",
    "UnmixingMethod",
    "available_models",
    "get_model",
    "method_class",
    "method_info",
    "register_model",
]
