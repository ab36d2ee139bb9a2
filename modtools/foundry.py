"""The Module Foundry's API: one function per action of the dashboard.

Search, inspect, decompose (a background job), evaluate, download, compose and patch. The dashboard
(:mod:`modtools.dashboard`) only calls these; so can a notebook or a script::

    from modtools import foundry
    store = foundry.open_store("runs/store")
    job = foundry.decompose(store, "seam", ["Trouser"], model_key="simcnn-…", params={"epochs": 3})
    foundry.wait(store, job)
    foundry.search(store, "trouser")

Errors are typed (``modtools.errors``): unknown classes (:class:`InvalidClassError`), a missing source
model (:class:`SourceModelMissingError`), an empty search (:class:`NoMatchError`), a corrupt card
(:class:`CorruptCardError`), an unwritable store (:class:`StoreNotWritableError`), two jobs writing
one module name (:class:`NameConflictError`).
"""
from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from . import data as D
from .approaches import Request, approach_params, check_task, get_approach, list_approaches, make_config
from .compose import ComposedClassifier, check_composable
from .errors import (CheckpointError, CorruptCardError, InvalidClassError, ModuleMismatchError, NameConflictError,
                     SourceModelMissingError)
from .io import atomic_write_json, load_tensors, read_json, save_tensors
from .jobs import (Reporter, cancel_job, job_kind, job_log, job_status, list_jobs, start_job, wait_job)
from .metrics import classification_report, count_macs, measure_latency
from .module import Module
from .store import Entry, ModuleStore, check_name, read_card, reproduce_code, retention_by_layer, slug
from .train import ModelSpec, SpecData, default_cache, predict, resolve_device, spec_data, train_cached

__all__ = ["open_store", "list_models", "resolve_classes", "decompose", "train_model", "jobs", "job", "cancel",
           "wait", "log", "search", "card", "inspect", "evaluate", "download", "compose", "patch",
           "list_approaches", "approach_params"]

KNOWN_CLASS_NAMES = {"fashion-mnist": D.FASHION_MNIST_CLASSES, "cifar10": D.CIFAR10_CLASSES,
                     "mnist": D.DIGIT_CLASSES, "svhn": D.DIGIT_CLASSES, "digits": D.DIGIT_CLASSES,
                     "synthetic": [f"class{i}" for i in range(4)]}


def open_store(root: str | os.PathLike | None = None) -> ModuleStore:
    """The store at ``root`` (default ``$MODTOOLS_STORE``, else ``runs/store``), created if needed."""
    return ModuleStore(root or os.environ.get("MODTOOLS_STORE") or Path(os.environ.get("MODTOOLS_RUNS", "runs")) / "store")


# --------------------------------------------------------------------------------------------
# Models and classes
# --------------------------------------------------------------------------------------------

def list_models(cache: str | os.PathLike | None = None) -> list[dict]:
    """The trained standard models in the cache: key, architecture, data set, classes, test accuracy."""
    root = Path(cache or default_cache())
    out = []
    for folder in sorted(root.glob("*/record.json")):
        try:
            rec = read_json(folder)
        except (OSError, ValueError, CheckpointError):
            continue
        spec = rec.get("spec", {})
        if spec.get("variant") or not (folder.parent / "weights.safetensors").is_file():
            continue   # models an approach trained its own way (MwT's gated models) are not decomposed here
        out.append({"key": rec.get("key", folder.parent.name), "arch": spec.get("arch"), "dataset": spec.get("dataset"),
                    "class_names": rec.get("class_names", []), "test_accuracy": rec.get("test_accuracy"),
                    "per_class": spec.get("per_class"), "width": spec.get("width")})
    return out


def model_spec(key: str, cache: str | os.PathLike | None = None) -> tuple[ModelSpec, dict]:
    """The spec and training record of cached model ``key`` (:class:`SourceModelMissingError` if absent)."""
    root = Path(cache or default_cache())
    path = root / check_name(key, "model key") / "record.json"
    if not path.is_file():
        have = [m["key"] for m in list_models(root)]
        raise SourceModelMissingError(f"no trained model {key!r} in the cache {str(root)!r}; it holds "
                                      f"{', '.join(have) if have else 'no models'} (train one first)")
    rec = read_json(path)
    return ModelSpec.from_dict(rec["spec"]), rec


def resolve_classes(classes: Sequence[int | str], class_names: Sequence[str], dataset: str = "") -> list[int]:
    """Class ids from names (case-insensitive) or ids, checked against ``class_names``.

    Raises:
        InvalidClassError: an unknown name (the message says when it is a class of another data set,
            and lists the valid names), an id out of range, a duplicate or an empty list.
    """
    lower = [n.lower() for n in class_names]
    out: list[int] = []
    if isinstance(classes, (str, int)):
        classes = [classes]
    for c in classes:
        text = c.strip().lower() if isinstance(c, str) else None
        if text is not None and (text in lower or not text.lstrip("-").isdigit()):
            if text not in lower:
                elsewhere = [d for d, names in KNOWN_CLASS_NAMES.items() if d != dataset
                             and text in (n.lower() for n in names)]
                hint = f" ({c!r} is a class of {', '.join(elsewhere)})" if elsewhere else ""
                raise InvalidClassError(f"unknown class {c!r} for data set {dataset or 'of the model'!r}{hint}; "
                                        f"its classes are: {', '.join(class_names)}")
            idx = lower.index(text)
        else:
            idx = int(c)
            if not 0 <= idx < len(class_names):
                raise InvalidClassError(f"class id {idx} is out of range for {dataset or 'the model'}: valid ids are "
                                        f"0..{len(class_names) - 1} ({', '.join(class_names)})")
        if idx in out:
            raise InvalidClassError(f"class {class_names[idx]!r} is named twice; name each class once")
        out.append(idx)
    if not out:
        raise InvalidClassError(f"no target class given; choose from: {', '.join(class_names)}")
    return out


def _class_names_for(spec: ModelSpec, record: dict | None) -> list[str]:
    if record and record.get("class_names"):
        return list(record["class_names"])
    names = KNOWN_CLASS_NAMES.get(spec.dataset)
    if names is None:
        names = D.load_dataset(spec.dataset, "test").class_names
    return [names[c] for c in spec.classes] if spec.classes is not None else list(names)


# --------------------------------------------------------------------------------------------
# Jobs: decompose, train
# --------------------------------------------------------------------------------------------

def output_names(approach: str, classes: Sequence[int], class_names: Sequence[str], arch: str,
                 name: str | None = None) -> list[str]:
    """The module names a decomposition writes: one per class for per-class approaches."""
    per_class = get_approach(approach).per_class
    base = check_name(name) if name else slug(f"{approach}-{arch}-" + "+".join(class_names[c] for c in classes))
    if per_class and len(classes) > 1:
        return [check_name(slug(f"{base}-{class_names[c]}")) for c in classes]
    return [base]


def decompose(store: ModuleStore, approach: str, classes: Sequence[int | str], model_key: str | None = None,
              spec: ModelSpec | Mapping | None = None, params: Mapping[str, Any] | None = None,
              name: str | None = None, cache: str | os.PathLike | None = None, device: str = "auto") -> str:
    """Start a background job that decomposes a model for ``classes`` with ``approach``; returns its id.

    The model is a cached one (``model_key``, see :func:`list_models`) or a ``spec`` that is trained
    first when not cached. Parameters, classes and output names are checked before the job starts.
    """
    if (model_key is None) == (spec is None):
        raise ValueError("give exactly one of model_key (a cached model) and spec (a model to train)")
    make_config(approach, params)   # checked here; the job builds the config again from the same parameters
    if model_key is not None:
        model_spec_, record = model_spec(model_key, cache)
    else:
        model_spec_ = spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(dict(spec))
        record = None
    names = _class_names_for(model_spec_, record)
    ids = resolve_classes(classes, names, model_spec_.dataset)
    check_task(approach, ids)
    outputs = output_names(approach, ids, names, model_spec_.arch, name)
    request = {"approach": approach, "classes": ids, "class_names": [names[c] for c in ids],
               "spec": model_spec_.to_dict(), "params": dict(params or {}), "cache": str(Path(cache or default_cache()).absolute()),
               "device": device, "outputs": outputs}
    title = f"{get_approach(approach).title}: {', '.join(names[c] for c in ids)} of {model_spec_.arch}"
    return start_job(store, "decompose", request, outputs, title)


def train_model(store: ModuleStore, spec: ModelSpec | Mapping, cache: str | os.PathLike | None = None,
                device: str = "auto") -> str:
    """Start a background job that trains (or finds cached) the model ``spec`` describes; returns its id."""
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(dict(spec))
    D.num_classes(spec.dataset)   # an unknown data set fails here, before the job starts
    request = {"spec": spec.to_dict(), "cache": str(Path(cache or default_cache()).absolute()), "device": device}
    return start_job(store, "train", request, [], f"train {spec.arch} on {spec.dataset}")


@job_kind("train")
def _train_job(store: ModuleStore, request: dict, reporter: Reporter) -> dict:
    spec = ModelSpec.from_dict(request["spec"])
    reporter.stage(0.0, 1.0, f"training {spec.key()}")
    _, record = train_cached(spec, request["cache"], device=request["device"], progress=True)
    return {"model_key": record["key"], "test_accuracy": record["test_accuracy"], "cached": record["cached"]}


@job_kind("decompose")
def _decompose_job(store: ModuleStore, request: dict, reporter: Reporter) -> dict:
    spec = ModelSpec.from_dict(request["spec"])
    approach = get_approach(request["approach"])
    cfg = make_config(approach.name, request["params"])
    reporter.stage(0.0, 0.15, f"loading (or training) the model {spec.key()}")
    data = spec_data(spec)
    model, record = train_cached(spec, request["cache"], device=request["device"], progress=True, data=data)
    reporter.stage(0.15, 0.9, f"{approach.title} on classes {', '.join(request['class_names'])}")
    req = Request(model, data, list(request["classes"]), spec, request["cache"], request["device"], progress=True)
    modules = approach.run(req, cfg)
    reporter.stage(0.9, 1.0, "evaluating and saving the modules")
    saved = []
    for module, name in zip(modules, request["outputs"]):
        module.metrics = {**module.metrics, **task_metrics(module, data, request["device"])}
        module.lineage = [*module.lineage, {"step": "foundry job", "model": spec.key(), "approach": approach.name,
                                            "classes": module.task.get("classes")}]
        reporter(1.0, f"saving {name}", force=True)   # a cancelled job stops here, before it writes
        saved.append(store.add(module.to("cpu"), name, source_key=spec.key()).name)
    return {"modules": saved, "model_key": spec.key()}


def jobs(store: ModuleStore) -> list[dict]:
    """Every job, newest first."""
    return list_jobs(store)


def job(store: ModuleStore, job_id: str) -> dict:
    return job_status(store, job_id)


def cancel(store: ModuleStore, job_id: str) -> dict:
    return cancel_job(store, job_id)


def wait(store: ModuleStore, job_id: str, timeout: float = 600.0) -> dict:
    return wait_job(store, job_id, timeout)


def log(store: ModuleStore, job_id: str, tail: int = 200) -> str:
    return job_log(store, job_id, tail)


# --------------------------------------------------------------------------------------------
# Search and inspect
# --------------------------------------------------------------------------------------------

def search(store: ModuleStore, text: str = "", **filters) -> list[Entry]:
    """See :meth:`ModuleStore.search`."""
    return store.search(text, **filters)


def card(store: ModuleStore, name: str) -> dict:
    return store.card(name)


def inspect(store: ModuleStore, name: str) -> dict:
    """A module's card, its per-layer kernel retention and the code that reproduces it."""
    c = store.card(name)
    return {"card": c, "retention_by_layer": retention_by_layer(c) if c.get("kernels") else {},
            "code": reproduce_code(c, store.root)}


def download(store: ModuleStore, name: str) -> Path:
    """The module as ``<store>/downloads/<name>.zip`` (``card.json`` + ``weights.safetensors``)."""
    return store.export_zip(name)


# --------------------------------------------------------------------------------------------
# Evaluate
# --------------------------------------------------------------------------------------------

def _task(module_task: dict, data_split: D.ImageDataset, binary: bool, seed: int = 0) -> D.ImageDataset:
    """The module's task on a split: its class against a balanced sample of the rest, or its classes."""
    classes = list(module_task.get("classes", []))
    return D.binary_task(data_split, classes[0], seed=seed) if binary else D.subset_task(data_split, classes)


def _binary_threshold(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The score threshold with the best accuracy on a labelled split."""
    cand = torch.unique(scores)
    if len(cand) > 512:
        cand = torch.quantile(scores, torch.linspace(0, 1, 513))
    acc = torch.stack([((scores >= t).long() == labels).float().mean() for t in cand])
    return float(cand[int(acc.argmax())])


@torch.no_grad()
def _predict_task(net: nn.Module, n_out: int, test: D.ImageDataset, val: D.ImageDataset, device: str) -> torch.Tensor:
    out = predict(net, test, device=device)
    if n_out == 1:
        t = _binary_threshold(predict(net, val, device=device)[:, 0], val.labels)
        return (out[:, 0] >= t).long()
    return out.argmax(1)


def task_metrics(module: Module, data: SpecData, device: str = "auto") -> dict:
    """The module's accuracy and per-class F1 on its own task, from the test split of its source data.

    A one-score module (a detector or a single logit) is thresholded at the score that is most
    accurate on the validation split; its task is "class vs a balanced sample of the rest"."""
    net = module.as_model()
    n_out = int(net(data.test.float_images()[:1]).shape[1])
    binary = module.task.get("kind") == "binary" or n_out == 1
    test, val = _task(module.task, data.test, binary), _task(module.task, data.val, binary)
    pred = _predict_task(net, n_out, test, val, device)
    rep = classification_report(pred, test.labels, test.num_classes, test.class_names)
    return {"accuracy": rep["accuracy"], "f1": {p["name"]: p["f1"] for p in rep["per_class"]},
            "task": "binary" if binary else "multiclass", "test_samples": len(test)}


def _source_on_task(model: nn.Module, module_task: dict, test: D.ImageDataset, kind: str, device: str) -> float:
    logits = predict(model, test, device=device)
    classes = list(module_task["classes"])
    if kind == "binary":
        pred = (logits.argmax(1) == classes[0]).long()
    else:
        pred = logits[:, classes].argmax(1)
    return float((pred == test.labels).float().mean())


def evaluate(store: ModuleStore, name: str, cache: str | os.PathLike | None = None, device: str = "auto",
             latency: bool = True, batch_size: int = 64) -> dict:
    """Evaluate module ``name`` on its task and compare it with its source model.

    Returns accuracy and per-class F1 of the module, the source model's accuracy on the same task,
    MACs, parameters and latency (batch ``batch_size``) of both; the card's metrics are updated.

    Raises:
        SourceModelMissingError: the source model is not in the cache.
    """
    c = store.card(name)
    if c.get("kind") == "composition":
        return evaluate_composition(store, name, device=device)
    source = store.source_model(name, cache)
    spec, _ = model_spec(c["base_model"]["cache_key"], cache)
    data = spec_data(spec)
    module = store.load(name, model=source)
    metrics = task_metrics(module, data, device)
    test = _task(module.task, data.test, metrics["task"] == "binary")
    shape = tuple(c["base_model"]["input_shape"])
    m_cost, s_cost = count_macs(module.as_model(), shape), count_macs(source, shape)
    out = {"name": name, **metrics, "source_accuracy": _source_on_task(source, module.task, test, metrics["task"], device),
           "macs": int(m_cost["macs"]), "source_macs": int(s_cost["macs"]), "params": int(m_cost["params"]),
           "source_params": int(s_cost["params"]), "macs_ratio": m_cost["macs"] / max(s_cost["macs"], 1)}
    if latency:
        dev = resolve_device(device)
        lm = measure_latency(module.as_model().to(dev), shape, batch_size=batch_size, repeats=10, warmup=3)
        ls = measure_latency(source.to(dev), shape, batch_size=batch_size, repeats=10, warmup=3)
        out.update(latency_s=lm["seconds"], source_latency_s=ls["seconds"],
                   latency_ratio=lm["seconds"] / max(ls["seconds"], 1e-12), latency_batch=batch_size)
    out["accuracy_loss"] = out["source_accuracy"] - out["accuracy"]
    store.update_metrics(name, {k: v for k, v in out.items() if k != "name"})
    return out


# --------------------------------------------------------------------------------------------
# Reuse: compose and patch, saved as new store entries with their lineage
# --------------------------------------------------------------------------------------------

def _write_entry(store: ModuleStore, name: str, card: dict, tensors: dict[str, torch.Tensor]) -> Entry:
    folder = store.folder(name)
    if folder.exists():
        raise NameConflictError(f"the store already has a module named {name!r}; choose another name")
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder.parent))
    try:
        sha = save_tensors(tmp / "weights.safetensors", tensors, {"format": f"modtools-{card['kind']}"})
        card["weights"] = {"file": "weights.safetensors", "sha256": sha}
        atomic_write_json(tmp / "card.json", card)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    entry = Entry.from_card(read_card(folder), folder)
    store._update(name, entry)
    return entry


def _parts_card(kind: str, name: str, modules: Sequence[Module], task: dict, metrics: dict, lineage: list,
                extra: dict | None = None) -> dict:
    cards = [m.card() for m in modules]
    kernels = {f"part{i}/{k}": v for i, c in enumerate(cards) for k, v in c["kernels"].items()}
    kept = sum(v["kept"] for v in kernels.values())
    total = sum(v["total"] for v in kernels.values())
    return {"card_version": 1, "library_name": "modtools", "name": name, "kind": kind, "approach": kind,
            "tags": ["modtools", kind], "datasets": [task.get("dataset", "")], "base_model": cards[0]["base_model"],
            "task": task, "head": {"type": kind}, "kernels": kernels, "kernel_retention": kept / max(total, 1),
            "parts": cards, "metrics": metrics, "lineage": lineage, **(extra or {}),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def compose(store: ModuleStore, names: Sequence[str], new_name: str | None = None, device: str = "auto") -> dict:
    """Compose detector modules (one class each, one data set) into a classifier for their classes,
    evaluate it on the data set's test split, and save it in the store with its lineage."""
    if len(names) < 2:
        raise ModuleMismatchError(f"a composition needs at least two modules, got {list(names)}")
    modules = [store.load(n) for n in names]
    check_composable(modules)
    datasets = {m.task.get("dataset") for m in modules}
    if len(datasets) != 1:
        raise ModuleMismatchError(f"the modules come from different data sets {sorted(datasets)}; compose modules "
                                  "of one data set (or refit the heads with modtools.compose)")
    dataset = datasets.pop()
    full = D.load_dataset(dataset, "test")
    class_names = [m.task["class_names"][0] for m in modules]
    ids = resolve_classes(class_names, full.class_names, dataset)
    test = D.subset_task(full, ids, "test")
    model = ComposedClassifier(modules, class_names)
    scores = predict(model, test, device=device)
    rep = classification_report(scores.argmax(1), test.labels, test.num_classes, test.class_names)
    name = check_name(new_name or slug("composed-" + "+".join(class_names)))
    macs = sum(count_macs(m.as_model(), tuple(m.source["input_shape"]))["macs"] for m in modules)
    metrics = {"accuracy": rep["accuracy"], "f1": {p["name"]: p["f1"] for p in rep["per_class"]}, "macs": int(macs),
               "params": sum(p.numel() for p in model.parameters())}
    lineage = [{"step": "compose", "parts": [{"name": n, "sha256": store.card(n)["weights"]["sha256"]} for n in names]}]
    task = {"dataset": dataset, "classes": ids, "class_names": class_names, "kind": "classifier"}
    card_ = _parts_card("composition", name, modules, task, metrics, lineage)
    tensors = {f"part{i}.{k}": v for i, m in enumerate(modules) for k, v in m.tensors().items()}
    entry = _write_entry(store, name, card_, tensors)
    return {"name": entry.name, **metrics, "report": rep}


def load_composition(store: ModuleStore, name: str) -> ComposedClassifier:
    """A composition saved by :func:`compose`, rebuilt from its own file (its parts may be gone)."""
    c = store.card(name)
    if c.get("kind") != "composition":
        raise CorruptCardError(f"module {name!r} is not a composition (kind {c.get('kind')!r})")
    folder = store.folder(name)
    tensors = load_tensors(folder / c["weights"]["file"], c["weights"]["sha256"])
    parts = []
    for i, pc in enumerate(c["parts"]):
        pre = f"part{i}."
        parts.append(Module.from_card(pc, {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)},
                                      where=f"{name} part {i}"))
    return ComposedClassifier(parts, c["task"]["class_names"])


def evaluate_composition(store: ModuleStore, name: str, device: str = "auto") -> dict:
    c = store.card(name)
    model = load_composition(store, name)
    full = D.load_dataset(c["task"]["dataset"], "test")
    test = D.subset_task(full, c["task"]["classes"], "test")
    rep = classification_report(predict(model, test, device=device).argmax(1), test.labels, test.num_classes,
                                test.class_names)
    return {"name": name, "accuracy": rep["accuracy"], "f1": {p["name"]: p["f1"] for p in rep["per_class"]},
            "task": "composition", "macs": c["metrics"].get("macs")}


def patch(store: ModuleStore, name: str, weak_key: str, new_name: str | None = None,
          cache: str | os.PathLike | None = None, device: str = "auto") -> dict:
    """Patch the cached weak model ``weak_key`` on module ``name``'s class (CNNSplitter's patching),
    evaluate before and after, and save the patched model (weak model + module + calibration)."""
    from .patch import patch as patch_model

    module = store.load(name)
    if len(module.task.get("classes", [])) != 1:
        raise ModuleMismatchError(f"module {name!r} covers classes {module.task.get('classes')}; a patch needs a "
                                  "one-class module")
    if not module.source.get("cache_key"):
        raise SourceModelMissingError(f"module {name!r} records no source model, so its calibration data is unknown")
    mspec, _ = model_spec(module.source["cache_key"], cache)
    if mspec.classes is not None:
        raise ModuleMismatchError(f"module {name!r} comes from a model of classes {mspec.classes} of "
                                  f"{mspec.dataset}; patching needs modules of a model of all its classes")
    wspec, wrec = model_spec(weak_key, cache)
    if wspec.dataset != mspec.dataset:
        raise ModuleMismatchError(f"the weak model is trained on {wspec.dataset}, the module on {mspec.dataset}")
    weak_classes = wspec.classes if wspec.classes is not None else list(range(D.num_classes(wspec.dataset)))
    target = module.task["classes"][0]
    weak, _ = train_cached(wspec, cache, device=device, progress=False)
    report = patch_model(weak, weak_classes, module, spec_data(mspec).val, spec_data(wspec).test, target, device)
    name_out = check_name(new_name or slug(f"patched-{weak_key}-{module.task['class_names'][0]}"))
    metrics = {"accuracy": None, **{k: v for k, v in report.items() if isinstance(v, (int, float))}}
    lineage = [{"step": "patch", "module": name, "module_sha256": store.card(name)["weights"]["sha256"],
                "weak_model": weak_key, "target_class": target}]
    task = {"dataset": wspec.dataset, "classes": list(weak_classes), "class_names": wrec.get("class_names", []),
            "kind": "patched classifier"}
    card_ = _parts_card("patched", name_out, [module], task, metrics, lineage,
                        {"weak_model": {"key": weak_key, "spec": wspec.to_dict()},
                         "calibration": report["calibration"], "target_class": target})
    tensors = {f"part0.{k}": v for k, v in module.tensors().items()}
    tensors.update({f"weak.{k}": v.detach().cpu() for k, v in weak.state_dict().items()})
    entry = _write_entry(store, name_out, card_, tensors)
    return {"name": entry.name, **report}


def save_to_store(module: Module, run_dir: str | os.PathLike, data: SpecData | None = None, source_key: str = "",
                  device: str = "auto", store: ModuleStore | str | None = None) -> Entry:
    """Also save a notebook's module into the store (default: ``run_dir/../store``), replacing a module of
    the same name; its task accuracy is measured on ``data`` first when the module has none."""
    store = store if isinstance(store, ModuleStore) else open_store(store or Path(run_dir).parent / "store")
    if data is not None and "accuracy" not in module.metrics:
        module.metrics = {**module.metrics, **task_metrics(module, data, device)}
    return store.add(module, slug(module.name), source_key=source_key, overwrite=True)
