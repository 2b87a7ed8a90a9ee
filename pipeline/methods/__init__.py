"""Unmixing methods: LR windows in, HR maps out, looked up by name.

    physics = PhysicsOperator(phi, qinit)
    model = get_model("ista_net", physics, phases=9)
    output = model(lr)  # lr (B, W, m, m) raw intensities -> output.hr (B, c m, c m)

Adding a method: one module with a ``@register_model("name")`` class, imported below.
"""
from pipeline.methods import ista, istanet, physfit, srcnn  # noqa: F401  (imported to register)
from pipeline.methods.base import MethodOutput, PhysicsOperator, UnmixingMethod
from pipeline.methods.registry import available_models, get_model, method_info, register_model

__all__ = [
    "MethodOutput",
    "PhysicsOperator",
    "UnmixingMethod",
    "available_models",
    "get_model",
    "method_info",
    "register_model",
]
