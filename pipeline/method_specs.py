"""Method specs: the one place that turns params.yaml ``methods`` entries into runnable methods.

``methods.<id>`` in params.yaml names a registered method, the file under ``pipeline/methods`` that
registers it (DVC's per-method dependency), its constructor params (``model``) and, for trainable
methods only, its training budget (``train``). :func:`method_spec` validates such an entry,
:func:`build_method` constructs it on a physics object (Phi, Q_init, sensor) and device, and
:func:`build_for_evaluation` adds the trained weights and, for ``physfit_<network>`` ids, the
proposal network.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from pipeline.config import ConfigError, check_integer, check_number, register_section_check, require
from pipeline.methods import PhysicsOperator, UnmixingMethod, available_models, get_model, method_class
from pipeline.methods.registry import constructor_parameters, method_module
from pipeline.priors import ScenePriors
from pipeline.settings import TrainBudget
from pipeline.stage_io import load_state, load_weights_file

SHA256 = re.compile(r"[0-9a-f]{64}")
PROPOSAL_PREFIX = "physfit_"  # physfit_<network>: PhysFit seeded by a trained network's HR maps
PROPOSAL_METHOD = "physfit"


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One validated ``methods.<id>`` entry: registered ``name``, ``module`` (path under
    pipeline/methods), constructor ``model`` params and, when trainable, its ``train`` budget and
    optionally ``weights``, a zoo file (``zoo/<run>-<sha8>.pt``) that train@<id> installs
    instead of training."""

    id: str
    name: str
    module: str
    model: dict
    train: TrainBudget | None
    weights: str | None = None

    @property
    def trainable(self) -> bool:
        return self.train is not None


_ENTRY_KEYS = {"module", "model", "train", "method", "weights"}


def _check_model_params(cls: type, model: Mapping, key: str) -> None:
    """Check ``methods.<id>.model`` against the constructor of ``cls`` before anything is built:
    an unknown parameter, or a value of another kind than the parameter's default (a list for a
    tuple default, true/false for a bool, an integer for an int, a number for a float), is a
    ConfigError naming ``methods.<id>.model.<param>``."""
    known = constructor_parameters(cls)
    known = None if known is None else [*known, *cls.weight_files.values()]
    unknown = sorted(set(model) - set(known or model))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]} is not a parameter of {cls.__name__}; known: {', '.join(known)}")
    for name, sha_key in cls.weight_files.items():
        path, sha256 = model.get(name), model.get(sha_key)
        require(path is None or (isinstance(path, str) and path != ""), f"{key}.{name}", path,
                "null, or the path of a torch state_dict file")
        require(path is None or (isinstance(sha256, str) and SHA256.fullmatch(sha256) is not None),
                f"{key}.{sha_key}", sha256, f"the sha256 (64 hex digits) of {key}.{name} is required with it "
                f"(`sha256sum {path}`): it is the file's declared identity for DVC")
    parameters = inspect.signature(cls).parameters
    for name, value in model.items():
        default = parameters[name].default if name in parameters else inspect.Parameter.empty
        if isinstance(default, bool):
            require(isinstance(value, bool), f"{key}.{name}", value, "true or false is required")
        elif isinstance(default, int):
            check_integer(f"{key}.{name}", value)
        elif isinstance(default, float):
            check_number(f"{key}.{name}", value)
        elif isinstance(default, (tuple, list)):
            require(isinstance(value, (list, tuple)), f"{key}.{name}", value,
                    f"a list is required (default {list(default)})")


def method_spec(methods: Mapping, method_id: str) -> MethodSpec:
    """Validate ``methods.<method_id>`` against the registry; a ConfigError names the bad key."""
    key = f"methods.{method_id}"
    if method_id not in methods:
        raise ConfigError(f"method {method_id!r} is not a key of params.yaml methods "
                          f"(known: {', '.join(methods)})")
    entry = methods[method_id]
    require(isinstance(entry, Mapping), key, entry, "a mapping with module, model and (if trainable) train")
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]} is not a known key; allowed keys are {sorted(_ENTRY_KEYS)}")
    name = entry.get("method", method_id)
    require(name in available_models(), f"{key}.method" if "method" in entry else key, name,
            f"not a registered method; registered: {', '.join(available_models())}")
    cls = method_class(name)
    module = entry.get("module")
    expected = method_module(name)
    require(module in (f"{expected}.py", expected), f"{key}.module", module,
            f"{name} is registered in pipeline/methods/{expected}.py: write '{expected}.py'"
            if not (Path(__file__).parent / "methods" / expected).is_dir() else
            f"{name} is registered in the package pipeline/methods/{expected}: write '{expected}'")
    model = entry.get("model") or {}
    require(isinstance(model, Mapping), f"{key}.model", model, "a mapping of constructor parameters is required")
    _check_model_params(cls, model, f"{key}.model")
    train = entry.get("train")
    if cls.trainable:
        require(isinstance(train, Mapping), f"{key}.train", train,
                f"{name} is trainable: a mapping with {[f.name for f in dataclasses.fields(TrainBudget)]} is required")
        budget = TrainBudget.from_section(train, f"{key}.train")
    else:
        require(train is None, f"{key}.train", train, f"{name} has nothing to train: remove the key")
        budget = None
    weights = entry.get("weights")
    require(weights is None or (cls.trainable and isinstance(weights, str) and weights.endswith(".pt")),
            f"{key}.weights", weights,
            "null, or a zoo file of a trainable method (zoo/<run>-<sha8>.pt, listed in zoo/metafile.yml)")
    return MethodSpec(method_id, name, module, dict(model), budget, weights)


def check_profile_requirements(spec: MethodSpec, profile: str) -> None:
    """In the paper profile, every constructor param the method declares in ``paper_requires``
    must be set: a ConfigError names ``methods.<id>.model.<param>`` otherwise."""
    if profile != "paper":
        return
    for name, what in method_class(spec.name).paper_requires.items():
        if spec.model.get(name) is None:
            raise ConfigError(f"methods.{spec.id}.model.{name} is required in the paper profile (the published "
                              f"numbers depend on it): {what}; declared with `-S methods.{spec.id}.model.{name}=<path>`"
                              + "".join(f" -S methods.{spec.id}.model.{sha}=<its sha256>"
                                        for param, sha in method_class(spec.name).weight_files.items() if param == name))


def proposal_of(method_id: str, methods: Mapping) -> str | None:
    """The network id of a ``physfit_<network>`` id (None for a plain ``methods`` entry)."""
    if method_id in methods or not method_id.startswith(PROPOSAL_PREFIX):
        return None
    return method_id[len(PROPOSAL_PREFIX):]


def build_method(spec: MethodSpec, physics: PhysicsOperator, device: torch.device | str = "cpu",
                 weight_files: bool = True, **objects: Any) -> UnmixingMethod:
    """The method of ``spec`` on ``physics`` and ``device``; ``objects`` are pipeline-made
    constructor arguments (e.g. a proposal network). The method's weight files (its
    ``weight_files``: path and sha256 in ``methods.<id>.model``) are read here and passed as
    tensors, or, with ``weight_files`` False (evaluation: a frozen pretrained network belongs to
    the training loss and is not saved with the model), left out. A TypeError or ValueError
    raised by the constructor (a bad parameter value) becomes a ConfigError naming
    ``methods.<id>.model``."""
    model_params = dict(spec.model)
    for name, sha_key in method_class(spec.name).weight_files.items():
        path, sha256 = model_params.get(name), model_params.pop(sha_key, None)
        model_params[name] = (load_weights_file(path, sha256, f"methods.{spec.id}.model.{name}")
                              if path is not None and weight_files else None)
    try:
        model = get_model(spec.name, physics, **model_params, **objects)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"methods.{spec.id}.model = {spec.model!r} is invalid: {type(exc).__name__}: {exc}") from exc
    return model.to(device)


def _prior_objects(spec: MethodSpec, priors: ScenePriors | None) -> dict:
    """The ``priors`` constructor argument of a method that uses the scene priors."""
    if not method_class(spec.name).uses_scene_priors:
        return {}
    if priors is None:
        raise ConfigError(f"method {spec.id} needs the scene priors of the training split (stage priors, --priors)")
    return {"priors": priors}


def build_for_evaluation(method_id: str, methods: Mapping, physics: PhysicsOperator, models: str | Path,
                         device: torch.device | str = "cpu", seed: int | None = None,
                         priors: ScenePriors | None = None) -> UnmixingMethod:
    """A method ready to score: a ``methods`` entry with its trained weights from
    ``models``/<id>.pt (those of training ``seed``, default the first), or ``physfit_<network>``
    (``methods.physfit`` seeded by that network). ``priors``: the scene priors (stage priors),
    given to the methods that use them."""
    network = proposal_of(method_id, methods)
    if network is not None:
        proposal = build_for_evaluation(network, methods, physics, models, device, seed, priors)
        spec = method_spec(methods, PROPOSAL_METHOD)
        return build_method(spec, physics, device, proposal=proposal, **_prior_objects(spec, priors))
    spec = method_spec(methods, method_id)
    model = build_method(spec, physics, device, weight_files=False, **_prior_objects(spec, priors))
    if spec.trainable:
        load_state(model, spec.id, model_path(models, spec.id), seed)
    return model


def model_path(models: str | Path, method_id: str) -> Path:
    """Where train@<id> writes the trained weights of ``method_id``."""
    return Path(models) / f"{method_id}.pt"


def trained_network(method_id: str, methods: Mapping) -> str | None:
    """The id whose trained weights ``method_id`` is scored with: itself when trainable, the
    proposal network of ``physfit_<network>``, None for a method with nothing to train."""
    network = proposal_of(method_id, methods)
    target = network if network is not None else method_id
    return target if method_spec(methods, target).trainable else None


def evaluated_ids(methods: Mapping, proposals: list | None) -> list[str]:
    """Every id the pipeline scores: the ``methods`` entries, then ``physfit_<network>``."""
    return list(methods) + [PROPOSAL_PREFIX + network for network in proposals or []]


def method_label(method_id: str, methods: Mapping) -> tuple[str, str]:
    """(family, display label) of an evaluated id, for tables and figures."""
    network = proposal_of(method_id, methods)
    if network is not None:
        cls = method_class(PROPOSAL_METHOD)
        return cls.family, f"{cls.label} ← {method_label(network, methods)[1]} proposals"
    cls = method_class(methods[method_id].get("method", method_id))
    return cls.family, cls.label or method_id


def check_proposals(proposals: Any, methods: Mapping) -> list[str]:
    """``physfit_proposals``: a list of trainable ``methods`` ids (ConfigError otherwise)."""
    proposals = [] if proposals is None else proposals
    require(isinstance(proposals, list), "physfit_proposals", proposals, "a list of method ids")
    for i, network in enumerate(proposals):
        require(network in methods and method_spec(methods, network).trainable, f"physfit_proposals[{i}]",
                network, f"a trainable method of params.yaml methods ({', '.join(methods)})")
    return proposals


register_section_check("methods", lambda params: [method_spec(params["methods"], key) for key in params["methods"]])
