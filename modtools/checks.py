"""Checking a notebook's parameter values before a kernel starts.

papermill injects whatever it is given, so a class id of 42 or a ``keep_fraction`` of ``"lots"``
would otherwise fail only after the notebook has trained its model. The runner calls
:func:`check_values` on the final parameters (profile values and overrides) first:

* **types** against the ``parameters`` cell's defaults: an ``int`` default takes an integer, a
  ``float`` default a number, a ``str`` a string, a ``list`` a list, a ``bool`` ``True``/``False``;
  ``None`` is allowed where the default is ``None`` or the parameter's comment mentions ``None``;
* **names**: data sets, architectures and devices must exist;
* **counts** (``*epochs``, ``*per_class``, ``batch_size``, ``*repeats``, ``n_models``, ``seed``) are
  non-negative integers (batch sizes and repeats positive);
* **class ids** named in :data:`modtools.profiles.CLASS_PARAMETERS` lie in the data set's range;
* **configs**: the approach configs the notebook builds (:data:`modtools.profiles.NOTEBOOK_CONFIGS`)
  are built from the parameters, so their own range checks run too.

Every problem is reported at once, in a :class:`~modtools.errors.ParameterError` that names the
parameter, its value and what is allowed.
"""
from __future__ import annotations

import importlib
from dataclasses import fields
from typing import Any, Mapping

from .errors import InvalidClassError, ParameterError, check_classes

SET_BY_RUNNER = ("profile", "run_dir", "figures_dir")
DEVICES = ("auto", "cpu", "cuda")
_POSITIVE = ("batch_size", "repeats", "n_models")
_COUNTS = ("epochs", "per_class", "seed", "steps", "generations", "population") + _POSITIVE


def _kind(default: Any) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    for t, name in ((str, "str"), (list, "list"), (dict, "dict")):
        if isinstance(default, t):
            return name
    return "any"


_ALLOWED = {"bool": "True or False", "int": "an integer", "float": "a number", "str": "a string",
            "list": "a list", "dict": "a dict"}


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, (list, tuple))
    if kind == "dict":
        return isinstance(value, dict)
    return True


def type_problems(params: Mapping[str, Any], declared: Mapping[str, dict]) -> list[str]:
    """Parameters whose value does not have the type of the cell's default."""
    out = []
    for name, value in params.items():
        if name in SET_BY_RUNNER or name not in declared:
            continue
        default, helptext = declared[name]["default"], declared[name].get("help", "") or ""
        kind = _kind(default)
        if value is None and (default is None or "None" in helptext):
            continue
        if not _type_ok(kind, value):
            also = " or None" if "None" in helptext else ""
            out.append(f"{name}={value!r} has type {type(value).__name__}; allowed: {_ALLOWED.get(kind, kind)}{also} "
                       f"(the default is {default!r})")
    return out


def _count_problems(params: Mapping[str, Any]) -> list[str]:
    out = []
    for name, value in params.items():
        if not name.endswith(_COUNTS):
            continue
        if value is None or isinstance(value, bool) or not isinstance(value, int):
            continue
        low = 1 if any(name.endswith(k) for k in _POSITIVE) else 0
        if value < low:
            out.append(f"{name}={value!r} is out of range; allowed: an integer >= {low}")
    return out


def _threshold_problems(params: Mapping[str, Any]) -> list[str]:
    out = []
    for name in ("threshold", "thresholds"):
        value = params.get(name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not 0 < v <= 1:
                out.append(f"{name} value {v!r} is out of range; allowed: 0 < threshold <= 1")
    return out


PRETRAINED_SOURCE = "imagenet"


def _name_problems(params: Mapping[str, Any]) -> list[str]:
    from .data import DATASET_NAMES, FOLDER_PREFIX, is_dataset_name
    from .models import list_models

    out = []
    for key in ("dataset", "source_a", "source_b", "source", "target", "target_dataset"):
        value = params.get(key)
        if key == "source" and value == PRETRAINED_SOURCE:
            continue    # 52: torchvision's ImageNet weights
        if isinstance(value, str) and not is_dataset_name(value):
            extra = f" or '{PRETRAINED_SOURCE}' (torchvision's pretrained weights)" if key == "source" else ""
            out.append(f"{key}={value!r} is not a data set; allowed: {', '.join(DATASET_NAMES)}, "
                       f"'{FOLDER_PREFIX}PATH'{extra}")
    archs = [("arch", params["arch"])] if isinstance(params.get("arch"), str) else []
    archs += [(f"archs[{i}]", a) for i, a in enumerate(params.get("archs") or []) if isinstance(a, str)]
    for key, value in archs:
        if value not in list_models() and not value.startswith("tv:"):
            out.append(f"{key}={value!r} is not an architecture; allowed: {', '.join(list_models())} or "
                       "'tv:<torchvision model name>'")
    device = params.get("device")
    if isinstance(device, str) and device not in DEVICES and not device.startswith("cuda:"):
        out.append(f"device={device!r} is not a device; allowed: {', '.join(DEVICES)} or 'cuda:<index>'")
    return out


def _class_problems(params: Mapping[str, Any], spec: Mapping[str, Any]) -> list[str]:
    """``spec``: parameter name → the data set parameter its class ids belong to; a tuple of two
    data set parameters for ``[[classes of a], [classes of b]]`` pairs (mixed tasks)."""
    from .data import num_classes

    out = []

    def check(name, value, dataset_param):
        dataset = params.get(dataset_param)
        if not isinstance(dataset, str):
            return
        try:
            n = num_classes(dataset, bool(params.get("superclasses")))
            check_classes(value if isinstance(value, (list, tuple)) else [value], n, dataset, what=name)
        except InvalidClassError as exc:
            out.append(f"{name}={value!r}: {exc}")
        except ValueError:
            pass   # an unknown data set is reported by _name_problems

    for name, where in spec.items():
        value = params.get(name)
        if value is None:
            continue
        if isinstance(where, tuple):   # mixed tasks: [[classes of a], [classes of b]] per task
            for i, task in enumerate(value if isinstance(value, (list, tuple)) else [value]):
                if not (isinstance(task, (list, tuple)) and len(task) == len(where)
                        and all(isinstance(part, (list, tuple)) for part in task)):
                    out.append(f"{name}[{i}]={task!r} must be a list of {len(where)} class lists, one per "
                               f"source ({', '.join(where)})")
                    continue
                for part, dataset_param in zip(task, where):
                    check(f"{name}[{i}]", part, dataset_param)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
            for i, part in enumerate(value):
                check(f"{name}[{i}]", part, where)
        else:
            check(name, value, where)
    return out


def config_class(path: str):
    """``"modtools.train:FitConfig"`` → the class."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _config_problems(params: Mapping[str, Any], configs: list[str]) -> list[str]:
    out = []
    for path in configs:
        cls = config_class(path)
        names = {f.name for f in fields(cls)}
        try:
            cls(**{k: v for k, v in params.items() if k in names})
        except (ValueError, TypeError) as exc:
            out.append(f"{cls.__name__}: {exc}")
    return out


def check_values(notebook: str, params: Mapping[str, Any], declared: Mapping[str, dict]) -> None:
    """Raise :class:`ParameterError` listing every parameter value ``notebook`` cannot run with.

    ``params`` are the values to inject; ``declared`` is the notebook's parameters cell
    (:func:`modtools.runner.notebook_parameters`), whose defaults fill the values not given.
    """
    from .profiles import CLASS_PARAMETERS, NOTEBOOK_CONFIGS

    problems = type_problems(params, declared)
    if not problems:
        merged = {k: v["default"] for k, v in declared.items()}
        merged.update(params)
        problems = (_name_problems(merged) + _count_problems(merged) + _threshold_problems(merged)
                    + _class_problems(merged, CLASS_PARAMETERS.get(notebook, {})))
        if not problems:
            problems = _config_problems(merged, NOTEBOOK_CONFIGS.get(notebook, []))
    if problems:
        raise ParameterError(f"notebook {notebook} cannot run with these parameter values: " + "; ".join(problems))
