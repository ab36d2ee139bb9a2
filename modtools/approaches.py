"""The registry of modularization approaches: one entry per approach, one calling convention.

Each :class:`Approach` names its config dataclass (whose fields, defaults and bounds the Module
Foundry shows), and a ``run`` function that turns a trained model, its data and target classes into
modules. The dashboard and the job runner list approaches from this registry, never by name, so a
new approach appears in them by calling :func:`register_approach`.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch.nn as nn

from .errors import ParameterError, UnknownNameError
from .module import Module
from .train import SpecData


@dataclass
class Request:
    """What an approach is given: a trained model, its data (over the model's classes) and target classes."""

    model: nn.Module
    data: SpecData
    classes: list[int]
    spec: Any = None                # the model's ModelSpec, when it came from the cache
    cache: Any = None               # the model cache (approaches that train their own model use it)
    device: str = "auto"
    progress: bool = False


@dataclass(frozen=True)
class Param:
    """One config field as the dashboard shows it."""

    name: str
    kind: str                       # int | float | bool | str | choice
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    optional: bool = False          # None is allowed

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Approach:
    """A registered approach."""

    name: str
    title: str
    config: type
    run: Callable[[Request, Any], list[Module]]
    retention: str = "KRR"                      # KRR | WRR
    summary: str = ""
    params: tuple[str, ...] = ()                # fields shown (default: every simple field)
    bounds: Mapping[str, tuple] = field(default_factory=dict)
    choices: Mapping[str, tuple] = field(default_factory=dict)
    quick: Mapping[str, Any] = field(default_factory=dict)   # settings for a run of about a minute on a CPU
    min_classes: int = 1
    per_class: bool = False                     # one module per target class (else one for the class set)
    own_model: bool = False                     # trains its own model with the chosen model's recipe (MwT)


_REGISTRY: dict[str, Approach] = {}


def register_approach(approach: Approach) -> Approach:
    """Add (or replace) an approach in the registry."""
    _REGISTRY[approach.name] = approach
    return approach


def list_approaches() -> list[str]:
    return list(_REGISTRY)


def get_approach(name: str) -> Approach:
    if name not in _REGISTRY:
        raise UnknownNameError(f"unknown approach {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def _field_kind(f: dataclasses.Field, hints: dict) -> tuple[str, bool] | None:
    hint = hints.get(f.name, f.type)
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    for t, kind in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str")):
        if base is t:
            return kind, optional
    return None


def approach_params(name: str) -> list[Param]:
    """The config fields of approach ``name`` that can be set: type, default, bounds, choices."""
    a = get_approach(name)
    hints = typing.get_type_hints(a.config)
    out = []
    for f in dataclasses.fields(a.config):
        if a.params and f.name not in a.params or f.default is dataclasses.MISSING:
            continue
        kind = _field_kind(f, hints)
        if kind is None:
            continue
        k, optional = kind
        low, high = a.bounds.get(f.name, (None, None))
        choices = tuple(a.choices.get(f.name, ()))
        out.append(Param(f.name, "choice" if choices else k, f.default, low, high, choices, optional))
    if a.params:
        out.sort(key=lambda p: a.params.index(p.name))
    return out


def make_config(name: str, params: Mapping[str, Any] | None = None):
    """The config of approach ``name`` with ``params`` set, checked against types, bounds and choices.

    Raises:
        ParameterError: an unknown field, a value of the wrong type, out of bounds, or one the
            config itself rejects; the message names the field, the value and what is allowed.
    """
    a = get_approach(name)
    spec = {p.name: p for p in approach_params(name)}
    values = {}
    hidden = {f.name: f for f in dataclasses.fields(a.config) if f.name not in spec}
    for key, value in (params or {}).items():
        if key in hidden:   # a field the dashboard does not show (lists, dicts): its type must match the default's
            f = hidden[key]
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if default is not None and value is not None and not isinstance(value, type(default)):
                raise ParameterError(f"{key}={value!r} must be a {type(default).__name__}, like its default {default!r}")
            values[key] = value
            continue
        if key not in spec:
            raise ParameterError(f"{a.title} has no parameter {key!r}; parameters: {', '.join(spec)}")
        p = spec[key]
        if value is None and p.optional:
            values[key] = None
            continue
        if p.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        want = {"int": int, "float": float, "bool": bool, "str": str, "choice": type(p.default)}[p.kind]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ParameterError(f"{key}={value!r} must be {p.kind}" + (" or None" if p.optional else ""))
        if p.choices and value not in p.choices:
            raise ParameterError(f"{key}={value!r} is not allowed; choose one of {', '.join(map(repr, p.choices))}")
        if p.low is not None and value < p.low or p.high is not None and value > p.high:
            raise ParameterError(f"{key}={value!r} is out of range; allowed: {p.low} to {p.high}")
        values[key] = value
    try:
        return a.config(**values)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"{a.title}: {exc}") from None


def check_task(name: str, classes: Sequence[int]) -> None:
    a = get_approach(name)
    if len(classes) < a.min_classes:
        raise ParameterError(f"{a.title} needs at least {a.min_classes} target classes, got {len(classes)}")


# --------------------------------------------------------------------------------------------
# The approaches of modtools
# --------------------------------------------------------------------------------------------

def _run_baseline(req: Request, cfg) -> list[Module]:
    from .baseline import baseline_module

    return [baseline_module(req.model, req.data.train, req.classes, cfg, device=req.device)]


def _run_gradsplitter(req: Request, cfg) -> list[Module]:
    from . import gradsplitter as G
    from .precision import resolved
    from .train import resolve_device

    result = G.decompose(req.model, req.data.train, req.data.val, cfg, device=req.device, progress=req.progress,
                         cache=req.cache)
    # a search found in the cache still cost its seconds once: the modules say so (cached_seconds)
    cached = {"search_seconds": result.seconds, "cached_seconds": result.seconds if result.from_cache else 0.0,
              "compute_precision": resolved(result.config.get("precision", "fp32"), resolve_device(req.device))}
    return [G.to_module(req.model.cpu(), result, c, req.data.train, metrics=cached) for c in req.classes]


def _run_cnnsplitter(req: Request, cfg) -> list[Module]:
    from . import cnnsplitter as C

    result = C.search(req.model, req.data.train, req.data.val, cfg, device=req.device, progress=req.progress)
    return [C.to_module(req.model.cpu(), result, c, req.data.train) for c in req.classes]


def _run_seam(req: Request, cfg) -> list[Module]:
    from . import seam as S

    ds = req.data.train
    problem = S.target_problem(req.classes[0] if len(req.classes) == 1 else list(req.classes), ds.class_names, ds.name)
    train, val = problem.data(req.data.train, "train", cfg.seed), problem.data(req.data.val, "validation", cfg.seed)
    result = S.reengineer(req.model, problem, train, val, cfg, device=req.device, progress=req.progress)
    return [S.to_module(req.model.cpu(), result, train)]


def _run_mwt(req: Request, cfg) -> list[Module]:
    """MwT trains its own modular model: the chosen model's architecture and data, ``cfg``'s recipe."""
    from . import mwt as W

    if req.spec is None:
        raise ParameterError("MwT trains its own modular model from the chosen model's spec; choose a model "
                             "from the cache (one with a training record)")
    s = req.spec
    cfg = dataclasses.replace(cfg, arch=s.arch, width=s.width, dataset=s.dataset, per_class=s.per_class,
                              test_per_class=s.test_per_class, val_fraction=s.val_fraction)
    gated, record = W.train_mwt(cfg, cache=req.cache, device=req.device, progress=req.progress)
    from .train import spec_data

    data = spec_data(cfg.spec(modular=True))
    stats = W.collect_gates(gated, data.train, device=req.device)
    u, decisions = W.module_masks(stats, cfg.threshold, cfg.on_empty)
    module, _ = W.subtask_module(gated, stats, u, req.classes, data, cfg, decisions, device=req.device,
                                 progress=req.progress)
    # what obtaining the module cost includes training the modular model, also when it came from the cache
    module.metrics.update({"training_seconds": record["train_seconds"],
                           "cached_seconds": record["train_seconds"] if record.get("cached") else 0.0})
    return [module]


def _register_builtin() -> None:
    from .baseline import CONFIDENCE_FALLBACKS, HEADS, BaselineConfig
    from .cnnsplitter import CNNSplitterConfig
    from .gradsplitter import GradSplitterConfig
    from .mwt import ON_EMPTY, MwTConfig
    from .precision import PRECISIONS
    from .seam import SeaMConfig

    register_approach(Approach(
        "baseline", "Importance baseline", BaselineConfig, _run_baseline,
        summary="No search: keep the kernels most active on the target classes.",
        params=("keep_fraction", "head", "seed"), bounds={"keep_fraction": (0.01, 1.0)},
        choices={"head": tuple(HEADS)}, quick={"keep_fraction": 0.5}))
    register_approach(Approach(
        "gradsplitter", "GradSplitter", GradSplitterConfig, _run_gradsplitter, per_class=True,
        summary="Gradient-based kernel masks, one module per class; a module detects its class.",
        params=("first_head_epochs", "cycle_epochs", "cycle_mask", "cycle_head", "alpha", "lr_mask", "lr_head",
                "batch_size", "select", "precision", "seed"),
        bounds={"first_head_epochs": (0, 1000), "cycle_epochs": (0, 10000), "cycle_mask": (0, 100),
                "cycle_head": (0, 100), "alpha": (0.0, 10.0), "lr_mask": (1e-6, 1.0), "lr_head": (1e-6, 1.0),
                "batch_size": (1, 4096)},
        choices={"select": ("composed", "per_module"), "precision": PRECISIONS},
        quick={"first_head_epochs": 1, "cycle_epochs": 3, "cycle_mask": 2, "cycle_head": 1, "precision": "auto"}))
    register_approach(Approach(
        "cnnsplitter", "CNNSplitter", CNNSplitterConfig, _run_cnnsplitter, per_class=True,
        summary="Genetic search for each class's kernels; modules patch weak models.",
        params=("population", "generations", "parents_mating", "keep_parents", "mutation_percent", "alpha",
                "confidence", "confidence_fallback", "sensitivity_tolerance", "precision", "seed"),
        bounds={"population": (2, 10000), "generations": (0, 10000), "parents_mating": (1, 10000),
                "keep_parents": (0, 9999), "mutation_percent": (0.0, 100.0), "alpha": (0.0, 1.0),
                "confidence": (0.0, 1.0), "sensitivity_tolerance": (0.0, 1.0)},
        choices={"confidence_fallback": tuple(CONFIDENCE_FALLBACKS), "precision": PRECISIONS},
        quick={"precision": "auto", "population": 8, "generations": 2, "parents_mating": 4, "keep_parents": 2,
               "confidence": 0.6, "confidence_fallback": "all", "sensitivity_tolerance": 0.03,
               "sensitivity_grid": [0.25, 0.5, 0.75]}))
    register_approach(Approach(
        "seam", "SeaM", SeaMConfig, _run_seam, retention="WRR",
        summary="Weight masks for a binary or multi-class target problem, with a new head.",
        params=("epochs", "lr_mask", "lr_head", "alpha", "batch_size", "steps_per_epoch", "kernel_level", "precision",
                "seed"),
        bounds={"epochs": (1, 10000), "lr_mask": (1e-6, 10.0), "lr_head": (1e-6, 10.0), "alpha": (0.0, 100.0),
                "batch_size": (1, 4096), "steps_per_epoch": (1, 100000)},
        choices={"precision": PRECISIONS}, quick={"epochs": 3, "steps_per_epoch": 20, "precision": "auto"}))
    register_approach(Approach(
        "mwt", "MwT (modular training)", MwTConfig, _run_mwt,
        summary="Trains its own gated model (same architecture and data), then cuts the module at a threshold.",
        params=("epochs", "alpha", "beta", "lr", "batch_size", "threshold", "on_empty", "finetune_epochs", "augment",
                "precision", "seed"),
        bounds={"epochs": (1, 10000), "alpha": (0.0, 100.0), "beta": (0.0, 100.0), "lr": (1e-6, 10.0),
                "batch_size": (1, 4096), "threshold": (0.01, 1.0), "finetune_epochs": (0, 1000)},
        choices={"on_empty": tuple(ON_EMPTY), "precision": PRECISIONS},
        quick={"epochs": 2, "finetune_epochs": 1, "precision": "auto"}, min_classes=2,
        own_model=True))


_register_builtin()
