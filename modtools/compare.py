"""One comparison of every approach on the same trained model, data and sub-tasks.

For each (architecture, sub-task, approach), :func:`compare_row` obtains the module with the
approach's registered ``run`` (:mod:`modtools.approaches`), timing it, and measures on the same test
split: the module's accuracy on the sub-task, the standard model's accuracy on the same sub-task,
KRR (WRR for SeaM), MACs and parameters of the extracted module against the model, and their
latency ratio (timed alternately, batch 64). A sub-task of one class is "the class against a
balanced sample of the rest"; a group is the classification among its classes.

Approaches that give one module per class (GradSplitter, CNNSplitter) serve a group with their
modules of the group's classes side by side (the argmax of their scores), so their MACs and
latency are the sum of those modules'. ``seconds_to_module`` is the wall time of the approach's
run on the trained model, and, for MwT, training its own modular model too (same architecture,
data and epochs); work found in a cache (that model, or a GradSplitter search another notebook
ran the same way) is counted at its original cost. MwT reuses modules for groups of two or more
classes; its one-class rows say so.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn as nn

from . import data as D
from .approaches import Request, get_approach, list_approaches, make_config
from .foundry import _source_on_task, _task, task_metrics
from .metrics import classification_report, count_macs, latency_ratio
from .module import Module
from .precision import check_precision, resolved
from .train import SpecData, predict, resolve_device


#: Keys of ``approach_params`` that cap one approach's search data instead of setting its config.
DATA_CAPS = ("search_per_class", "val_per_class")


@dataclass
class CompareConfig:
    """What the comparison runs; approach parameters are the registry's quick settings unless given."""

    approaches: list = field(default_factory=lambda: ["baseline", "gradsplitter", "cnnsplitter", "seam", "mwt"])
    approach_params: dict = field(default_factory=dict)  # approach → overrides of its base settings
    arch_params: dict = field(default_factory=dict)      # architecture → approach → overrides of those, for it only
    quick_settings: bool = True     # base settings: the registry's quick CPU ones (False: the config defaults)
    search_per_class: int | None = 300               # training images per class the searches see (None: all)
    val_per_class: int | None = 20                   # validation images per class that score the searches (None: all)
    latency_repeats: int = 20
    approach_precision: str | None = None   # fp32 | bf16 | auto for every approach's loops (None: as the model was trained)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.approach_precision is not None:
            check_precision(self.approach_precision)
        for a in self.approaches:
            get_approach(a)   # unknown names fail here
        unknown = sorted(set(self.approach_params) - set(list_approaches()))
        if unknown:
            raise ValueError(f"approach_params for unknown approaches {unknown}; allowed: {', '.join(list_approaches())}")
        self._check_overrides(self.approach_params, "approach_params", {})
        for arch, per_approach in self.arch_params.items():
            if not isinstance(per_approach, dict):
                raise ValueError(f"arch_params[{arch!r}]={per_approach!r}; allowed: a dict of approach to overrides")
            unknown = sorted(set(per_approach) - set(list_approaches()))
            if unknown:
                raise ValueError(f"arch_params[{arch!r}] names unknown approaches {unknown}; "
                                 f"allowed: {', '.join(list_approaches())}")
            self._check_overrides(per_approach, f"arch_params[{arch!r}]", self.approach_params)

    def _check_overrides(self, overrides: dict, where: str, under: dict) -> None:
        for name, values in overrides.items():
            base = {**(get_approach(name).quick if self.quick_settings else {}), **under.get(name, {})}
            for cap in DATA_CAPS:
                v = values.get(cap)
                if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                    raise ValueError(f"{where}[{name!r}][{cap!r}]={v!r}; allowed: an integer >= 1 or None")
            merged = {**base, **values}
            make_config(name, {k: v for k, v in merged.items() if k not in DATA_CAPS})  # fails early

    def check_archs(self, archs: Sequence[str]) -> None:
        """Raise if ``arch_params`` names an architecture that is neither run here (``archs``) nor in the
        zoo (a typo); overrides for a zoo architecture left out of ``archs`` are simply unused."""
        from .models import list_models
        allowed = sorted(set(archs) | set(list_models()))
        unknown = sorted(set(self.arch_params) - set(allowed))
        if unknown:
            raise ValueError(f"arch_params for unknown architectures {unknown}; allowed: {', '.join(allowed)}")


class SideBySide(nn.Module):
    """One-score modules side by side: scores ``(B, k)``, the prediction is their argmax."""

    def __init__(self, modules: Sequence[Module]):
        super().__init__()
        self.parts = nn.ModuleList([m.as_model() for m in modules])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x)[:, :1] for p in self.parts], dim=1)


def search_data(data: SpecData, per_class: int | None, val_per_class: int | None, seed: int = 0) -> SpecData:
    """The data the searches see: train and validation capped per class (test unchanged)."""
    return SpecData(D.limit_per_class(data.train, per_class, seed), D.limit_per_class(data.val, val_per_class, seed),
                    data.test)


def _retention(modules: Sequence[Module]) -> tuple[float, str]:
    wrr = [m.metrics.get("wrr") for m in modules]
    if all(w is not None for w in wrr):
        return sum(wrr) / len(wrr), "WRR"
    return sum(m.card()["kernel_retention"] for m in modules) / len(modules), "KRR"


def approach_settings(approach: str, cfg: CompareConfig, spec=None, arch: str | None = None) -> tuple[dict, dict]:
    """``(config values, data caps)`` that ``approach`` runs with: its base settings, the overrides of
    ``cfg.approach_params``, then those of ``cfg.arch_params`` for ``arch`` (default ``spec.arch``), then, unless those set
    them, ``cfg.approach_precision`` (or the model's training precision) and, for an approach that trains
    its own model, the model's epochs."""
    a = get_approach(approach)
    arch = arch if arch is not None else getattr(spec, "arch", None)
    given = {**cfg.approach_params.get(approach, {}), **cfg.arch_params.get(arch, {}).get(approach, {})}
    params = {**(a.quick if cfg.quick_settings else {}), **given}
    caps = {k: params.pop(k) for k in DATA_CAPS if k in params}
    if "precision" not in given and "precision" in {f.name for f in dataclasses.fields(a.config)}:
        if cfg.approach_precision is not None:
            params["precision"] = cfg.approach_precision
        elif spec is not None:
            params["precision"] = spec.fit.precision   # every approach computes as its model was trained
    if a.own_model and spec is not None and "epochs" not in given:
        params["epochs"] = spec.fit.epochs          # the same training budget as the standard model
    return params, caps


def compare_row(approach: str, arch: str, model: nn.Module, data: SpecData, classes: Sequence[int], spec=None,
                cache=None, cfg: CompareConfig | None = None, device: str = "auto", memo: dict | None = None) -> dict:
    """One row of the comparison (see the module docstring). With ``memo`` (a dict kept across calls),
    a per-class approach searches once per model and serves every sub-task from that search (its
    seconds are the one search's)."""
    cfg = cfg or CompareConfig()
    a = get_approach(approach)
    classes = list(classes)
    names = [data.train.class_names[c] for c in classes]
    row: dict[str, Any] = {"approach": approach, "arch": arch, "classes": classes, "class_names": names,
                           "task": "binary" if len(classes) == 1 else "group"}
    if len(classes) < a.min_classes:
        return {**row, "accuracy": None, "accuracy_loss": None, "retention": None, "retention_kind": a.retention,
                "macs_ratio": None, "params_ratio": None, "latency_ratio": None, "seconds_to_module": None,
                "note": f"{a.title} reuses modules for groups of {a.min_classes} or more classes"}
    params, caps = approach_settings(approach, cfg, spec, arch)
    conf = make_config(approach, params)
    model = model.eval()
    key = (approach, arch)
    if a.per_class and memo is not None and key in memo:
        every, seconds = memo[key]
    else:
        t0 = time.perf_counter()
        sdata = search_data(data, caps.get("search_per_class", cfg.search_per_class),
                            caps.get("val_per_class", cfg.val_per_class), cfg.seed)
        wanted = list(range(data.train.num_classes)) if a.per_class else classes
        every = a.run(Request(model, sdata, wanted, spec, cache, device, progress=False), conf)
        seconds = time.perf_counter() - t0
        # work found in a cache (MwT's own model, a GradSplitter search) is counted at its original cost
        seconds += float(every[0].metrics.get("cached_seconds") or 0.0)
        if a.per_class and memo is not None:
            memo[key] = (every, seconds)
    modules = [every[c] for c in classes] if a.per_class else every
    model = model.cpu().eval()
    shape = tuple(data.test.shape)
    full = count_macs(model, shape)
    if len(modules) == 1:
        net = modules[0].as_model().cpu()
        metrics = task_metrics(modules[0], data, device)
        kind = metrics["task"]
        test = _task(modules[0].task, data.test, kind == "binary")
        accuracy = metrics["accuracy"]
    else:   # one module per class, side by side
        net = SideBySide(modules).cpu()
        test, kind = D.subset_task(data.test, classes, "test"), "multiclass"
        pred = predict(net, test, device=device).argmax(1)
        accuracy = classification_report(pred, test.labels, test.num_classes)["accuracy"]
    reference = _source_on_task(model, {"classes": classes}, test, kind, device)
    cost = count_macs(net, shape)
    retention, kind_r = _retention(modules)
    lat = latency_ratio(net, model, shape, 64, repeats=cfg.latency_repeats)
    return {**row, "accuracy": accuracy, "accuracy_standard": reference, "accuracy_loss": reference - accuracy,
            "retention": retention, "retention_kind": kind_r, "macs_ratio": cost["macs"] / full["macs"],
            "params_ratio": cost["params"] / full["params"], "latency_ratio": lat["ratio"],
            "seconds_to_module": seconds, "modules": len(modules), "test_samples": len(test),
            "compute_precision": modules[0].metrics.get("compute_precision")
            or resolved(params.get("precision", "fp32"), resolve_device(device)),
            "config": dataclasses.asdict(conf)}


def best_by(rows: Sequence[dict], key: str, lower: bool = True) -> dict[tuple, str]:
    """Per (architecture, sub-task), the approach with the best ``key`` among rows that have it."""
    out: dict[tuple, str] = {}
    for arch, cls in {(r["arch"], tuple(r["classes"])) for r in rows}:
        cand = [r for r in rows if r["arch"] == arch and tuple(r["classes"]) == cls and r.get(key) is not None]
        if cand:
            pick = min(cand, key=lambda r: r[key]) if lower else max(cand, key=lambda r: r[key])
            out[(arch, cls)] = pick["approach"]
    return out
