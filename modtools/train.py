"""Seeded training and evaluation loops, devices, and a cache of trained models keyed by config hash.

* :func:`fit` trains any classifier on an :class:`~modtools.data.ImageDataset` with SGD/Adam and a
  cosine/step/constant schedule, keeps a per-epoch history, optionally selects the epoch with the
  best validation accuracy and writes a checkpoint after each epoch. ``extra_loss`` lets an
  approach add terms (MwT's cohesion and coupling).
* :func:`predict` / :func:`evaluate` run a model over a data set in batches.
* :class:`ModelSpec` + :func:`train_cached` describe a model by data set, architecture and recipe,
  and train it once: the weights live under ``<cache>/<arch>-<hash>/`` and every later call with
  the same spec (from any notebook) loads them.
"""
from __future__ import annotations

import copy
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import data as D
from .errors import check_range
from .io import atomic_write_json, config_hash, load_tensors, read_json, save_tensors
from .masks import channels_last_on_cpu
from .precision import autocast, check_precision, resolved, strip_default
from .models import build_model

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "constant")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU. An unavailable device raises ``ValueError``."""
    if isinstance(device, torch.device):
        return device
    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available; available: {available} or 'auto'")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; available: {available} or 'auto'") from None


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


@dataclass
class FitConfig:
    """How a model is trained (defaults: a short CPU-friendly recipe)."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    augment: bool = False
    select_best: bool = True
    seed: int = 0
    precision: str = "fp32"   # fp32 | bf16 | auto (modtools.precision)

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} is not supported; use one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is not supported; use one of {SCHEDULES}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        check_range("lr", self.lr, self.lr > 0, "a number > 0")
        check_range("batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1")
        check_range("weight_decay", self.weight_decay, self.weight_decay >= 0, "a number >= 0")
        check_range("momentum", self.momentum, 0 <= self.momentum < 1, "0 <= momentum < 1")
        self.milestones = tuple(self.milestones)


def make_optimizer(params, cfg: FitConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam (default betas, no weight decay) over ``params`` (tensors or groups), using PyTorch's fused
    kernel where every tensor is a float32 leaf on CPU or CUDA: one pass over all the tensors instead of
    several per tensor, the same update up to rounding."""
    groups = list(params)
    tensors = [t for g in groups for t in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(t.dtype == torch.float32 and t.device.type in ("cpu", "cuda") for t in tensors)
    return torch.optim.Adam(groups, lr=lr, fused=fused or None)


def make_scheduler(opt: torch.optim.Optimizer, cfg: FitConfig):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)


def _progress(iterable, enabled: bool, **kw):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, **kw)


@torch.no_grad()
def predict(model: nn.Module, ds: D.ImageDataset, batch_size: int = 256, device: str | torch.device = "auto",
            keep_mode: bool = False) -> torch.Tensor:
    """Outputs of ``model`` (eval mode unless ``keep_mode``) for every sample of ``ds``, on CPU."""
    dev = resolve_device(device)
    was = model.training
    if not keep_mode:
        model.eval()
    model.to(dev)
    with channels_last_on_cpu(model, dev):      # faster CPU convolutions and pooling, same outputs
        outs = [model(x.to(dev)).float().cpu() for x, _ in D.TensorLoader(ds, batch_size)]
    model.train(was)
    return torch.cat(outs)


def evaluate(model: nn.Module, ds: D.ImageDataset, batch_size: int = 256,
             device: str | torch.device = "auto") -> dict:
    """Accuracy and per-class metrics of ``model`` on ``ds`` (see :func:`modtools.metrics.classification_report`)."""
    from .metrics import classification_report
    logits = predict(model, ds, batch_size, device)
    return classification_report(logits.argmax(1), ds.labels, ds.num_classes, ds.class_names)


def fit(model: nn.Module, train: D.ImageDataset, val: D.ImageDataset | None = None,
        cfg: FitConfig | None = None, device: str | torch.device = "auto", progress: bool = True,
        extra_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]] | None = None,
        params=None, checkpoint: str | os.PathLike | None = None) -> list[dict]:
    """Train ``model`` in place; return the per-epoch history.

    Args:
        cfg: the recipe (:class:`FitConfig`).
        extra_loss: ``f(model, x, y, logits) -> (loss term, {name: float})`` added to cross-entropy.
        params: parameters to optimise (default: all that require grad).
        checkpoint: a ``.safetensors`` path written (atomically) after every epoch with the weights
            selected so far.

    Each history row holds ``epoch``, ``lr``, ``train_loss``, ``train_accuracy``, ``val_accuracy``
    (when ``val`` is given), ``seconds`` and the extra loss terms' means.
    """
    cfg = cfg or FitConfig()
    dev = resolve_device(device)
    seed_everything(cfg.seed)
    model.to(dev)
    opt = make_optimizer(params if params is not None else [p for p in model.parameters() if p.requires_grad], cfg)
    sched = make_scheduler(opt, cfg)
    loader = D.TensorLoader(train, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=cfg.augment)
    history: list[dict] = []
    best_acc, best_state = -1.0, None
    for epoch in _progress(range(cfg.epochs), progress, desc="epochs", leave=False):
        t0 = time.perf_counter()
        model.train()
        sums: dict[str, float] = {"train_loss": 0.0}
        correct, seen = 0, 0
        for x, y in loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with autocast(cfg.precision, dev):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                if extra_loss is not None:
                    term, parts = extra_loss(model, x, y, logits)
                    loss = loss + term
            if extra_loss is not None:
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * len(y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums["train_loss"] += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"]}
        row.update({k: v / seen for k, v in sums.items()})
        row["train_accuracy"] = correct / seen
        sched.step()
        if val is not None:
            row["val_accuracy"] = float((predict(model, val, device=dev).argmax(1) == val.labels).float().mean())
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        score = row.get("val_accuracy", row["train_accuracy"])
        if cfg.select_best and val is not None and score >= best_acc:
            best_acc, best_state = score, copy.deepcopy(model.state_dict())
        if checkpoint is not None:
            save_tensors(checkpoint, best_state if best_state is not None else model.state_dict(),
                         {"epoch": epoch + 1})
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


# --------------------------------------------------------------------------------------------
# Trained models by spec, cached by config hash
# --------------------------------------------------------------------------------------------

@dataclass
class ModelSpec:
    """A trained model described by its data, architecture and recipe.

    ``classes`` restricts the data set to a subset (relabelled 0..k-1); ``per_class`` caps the
    training samples per class; ``dirichlet_alpha`` then draws a class-imbalanced subset of those
    (GradSplitter) seeded by ``data_seed``.
    """

    arch: str = "simcnn"
    width: float = 0.25
    dataset: str = "fashion-mnist"
    classes: list[int] | None = None
    per_class: int | None = None
    test_per_class: int | None = None
    dirichlet_alpha: float | None = None
    data_seed: int = 0
    val_fraction: float = 0.1
    arch_kwargs: dict = field(default_factory=dict)
    fit: FitConfig = field(default_factory=FitConfig)
    variant: dict = field(default_factory=dict)  # how an approach changes training (part of the cache key)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        d["fit"] = FitConfig(**d.get("fit", {}))
        return cls(**d)

    def key(self) -> str:
        d = self.to_dict()
        d["fit"] = strip_default(d["fit"])   # keys from before the precision field stay valid
        if self.dirichlet_alpha is not None:
            d["dirichlet_of"] = "capped"         # the draw is of the capped set (an earlier version drew, then capped)
        return f"{self.arch}-{config_hash(d)}"


@dataclass
class SpecData:
    train: D.ImageDataset
    val: D.ImageDataset
    test: D.ImageDataset


def spec_data(spec: ModelSpec, root=None) -> SpecData:
    """The train/validation/test data a spec trains and evaluates on (seeded)."""
    train = D.load_dataset(spec.dataset, "train", root=root)
    test = D.load_dataset(spec.dataset, "test", root=root)
    if spec.classes is not None:
        train, test = D.subset_task(train, spec.classes, "train"), D.subset_task(test, spec.classes, "test")
    train = D.limit_per_class(train, spec.per_class, seed=spec.data_seed)
    if spec.dirichlet_alpha is not None:   # of the capped set: GradSplitter's draw on its whole training set
        train, _ = D.dirichlet_subset(train, spec.dirichlet_alpha, seed=spec.data_seed)
    test = D.limit_per_class(test, spec.test_per_class, seed=spec.data_seed)
    tr, va = D.train_val_split(train, spec.val_fraction, seed=spec.data_seed)
    return SpecData(tr, va, test)


def build_for(spec: ModelSpec, ds: D.ImageDataset) -> nn.Module:
    """The spec's architecture for ``ds``'s input shape and classes, initialised from ``spec.fit.seed``."""
    seed_everything(spec.fit.seed)
    return build_model(spec.arch, in_channels=ds.shape[0], num_classes=ds.num_classes, width=spec.width,
                       **spec.arch_kwargs)


def default_cache() -> Path:
    return Path(os.environ.get("MODTOOLS_CACHE") or Path(os.environ.get("MODTOOLS_RUNS", "runs")) / "models")


def train_cached(spec: ModelSpec, cache: str | os.PathLike | None = None, device: str = "auto",
                 progress: bool = True, data: SpecData | None = None, root=None,
                 build: Callable[[ModelSpec, D.ImageDataset], nn.Module] | None = None,
                 extra_loss=None) -> tuple[nn.Module, dict]:
    """Train the model a spec describes, or load it when the same spec was trained before.

    Args:
        build: builds the model to train from the spec (default :func:`build_for`); an approach
            that trains differently (MwT's gated models) passes its own, together with
            ``extra_loss`` (see :func:`fit`) and a ``spec.variant`` that names its settings.

    Returns ``(model in eval mode, record)``; the record holds the spec, its key, the history,
    validation/test accuracy, training seconds and whether it came from the cache.
    """
    folder = Path(cache or default_cache()) / spec.key()
    data = data or spec_data(spec, root)
    model = (build or build_for)(spec, data.train)
    rec_path, w_path = folder / "record.json", folder / "weights.safetensors"
    if rec_path.is_file() and w_path.is_file():
        record = read_json(rec_path)
        model.load_state_dict(load_tensors(w_path, record.get("weights_sha256")))
        record["cached"] = True
        return model.eval().to(resolve_device(device)), record
    t0 = time.perf_counter()
    history = fit(model, data.train, data.val, spec.fit, device=device, progress=progress, extra_loss=extra_loss)
    seconds = time.perf_counter() - t0
    test_acc = float((predict(model, data.test, device=device).argmax(1) == data.test.labels).float().mean())
    sha = save_tensors(w_path, model.state_dict(), {"spec": spec.key()})
    record = {"key": spec.key(), "spec": spec.to_dict(), "history": history, "train_seconds": seconds,
              "val_accuracy": max(h["val_accuracy"] for h in history), "test_accuracy": test_acc,
              "weights_sha256": sha, "class_names": data.train.class_names, "cached": False,
              "precision": resolved(spec.fit.precision, resolve_device(device))}
    atomic_write_json(rec_path, record)
    return model.eval(), record
