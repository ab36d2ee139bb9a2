"""A baseline modularizer with no search: keep each layer's most active kernels for the target classes.

Kernel importance (shared with CNNSplitter's initialisation): for every maskable layer and every
class, the mean post-activation (ReLU of the gated output, averaged over space) of each kernel
over the class's samples, computed for *all classes in one pass* over the data.

A module for target classes ``T`` keeps, per layer, the top ``keep_fraction`` of kernels ranked by
their importance averaged over ``T``. The head either selects ``T``'s logits (``head="select"``,
no training) or is a small detector trained on cached features (``head="logistic"``, for a
single class against the rest).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import data as D
from .errors import EmptyClassError, check_classes
from .heads import build_head
from .masks import ChannelGating, MaskableLayer, find_maskable_layers
from .module import Module
from .train import predict, resolve_device, seed_everything

HEADS = ("select", "logistic")


@dataclass
class BaselineConfig:
    """Settings of the baseline modularizer."""

    keep_fraction: float = 0.8
    head: str = "select"
    head_epochs: int = 30
    head_lr: float = 0.01
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], got {self.keep_fraction}")
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r} is not supported; use one of {HEADS}")


CONFIDENCE_FALLBACKS = ("raise", "all")


@torch.no_grad()
def kernel_importance(model: nn.Module, ds: D.ImageDataset, layers: list[MaskableLayer] | None = None,
                      batch_size: int = 256, device: str = "auto", confidence: float | None = None,
                      fallback: str = "raise") -> dict[str, torch.Tensor]:
    """Mean post-activation of every kernel per class: ``{layer: (num_classes, C)}``, one data pass.

    With ``confidence``, a sample counts only when the model gives its own class at least that
    probability (CNNSplitter's rule). A class with no such sample raises
    :class:`~modtools.errors.EmptyClassError` naming it and the threshold, unless ``fallback="all"``,
    which then uses all of that class's samples.
    """
    if fallback not in CONFIDENCE_FALLBACKS:
        raise ValueError(f"fallback={fallback!r} is not allowed; use one of {CONFIDENCE_FALLBACKS}")
    if confidence is not None and not 0.0 <= confidence <= 1.0:
        raise ValueError(f"confidence={confidence} is out of range; allowed: 0 <= confidence <= 1")
    dev = resolve_device(device)
    model.eval().to(dev)
    layers = layers or find_maskable_layers(model)
    counts = torch.bincount(ds.labels, minlength=ds.num_classes).double()
    if (counts == 0).any():
        c = int(torch.nonzero(counts == 0)[0])
        raise EmptyClassError(f"class {c} ({ds.class_names[c]!r}) has 0 samples in {ds.name}; "
                              "kernel importance needs every class")
    sums = {layer.name: torch.zeros(ds.num_classes, layer.out_channels, dtype=torch.float64, device=dev)
            for layer in layers}
    all_sums = {k: v.clone() for k, v in sums.items()} if confidence is not None else None
    kept = torch.zeros(ds.num_classes, dtype=torch.float64, device=dev)
    current: dict[str, torch.Tensor] = {}

    def gate(layer, out, x_in):
        act = F.relu(out)
        current[layer.name] = act.mean(dim=tuple(range(2, act.ndim))) if act.ndim > 2 else act
        return out

    with ChannelGating(model, layers, gate):
        for x, y in D.TensorLoader(ds, batch_size):
            out = model(x.to(dev))
            y = y.to(dev)
            if confidence is None:
                for name, act in current.items():
                    sums[name].index_add_(0, y, act.double())
                continue
            keep = torch.softmax(out.float(), 1).gather(1, y[:, None]).squeeze(1) >= confidence
            kept.index_add_(0, y[keep], torch.ones(int(keep.sum()), dtype=torch.float64, device=dev))
            for name, act in current.items():
                sums[name].index_add_(0, y[keep], act[keep].double())
                all_sums[name].index_add_(0, y, act.double())
    if confidence is None:
        return {k: (v / counts.to(dev)[:, None]).float().cpu() for k, v in sums.items()}
    empty = torch.nonzero(kept == 0).flatten().tolist()
    if empty and fallback == "raise":
        names = ", ".join(f"{c} ({ds.class_names[c]!r})" for c in empty)
        raise EmptyClassError(f"no sample of class {names} is predicted with probability >= {confidence}; "
                              f"lower the confidence threshold or pass fallback='all' (options: {CONFIDENCE_FALLBACKS})")
    out = {}
    for name in sums:
        use_all = (kept == 0)[:, None]
        num = torch.where(use_all, all_sums[name], sums[name])
        den = torch.where(use_all, counts.to(dev)[:, None], kept[:, None])
        out[name] = (num / den).float().cpu()
    return out


def top_fraction_masks(importance: dict[str, torch.Tensor], classes: Sequence[int],
                       keep_fraction: float) -> dict[str, torch.Tensor]:
    """Per layer, keep the ``ceil(keep_fraction * C)`` kernels most active on ``classes`` on average."""
    masks = {}
    for name, imp in importance.items():
        score = imp[list(classes)].mean(0)
        k = max(1, math.ceil(keep_fraction * score.numel()))
        m = torch.zeros_like(score)
        m[torch.topk(score, k).indices] = 1
        masks[name] = m
    return masks


def fit_detector_head(head: nn.Module, features: torch.Tensor, targets: torch.Tensor, epochs: int = 30,
                      lr: float = 0.01, batch_size: int = 256, seed: int = 0) -> list[float]:
    """Train a detector head (scores in (0, 1)) on fixed features with binary cross-entropy."""
    seed_everything(seed)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    head.train()
    for _ in range(epochs):
        order = torch.randperm(len(targets), generator=g)
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            loss = F.binary_cross_entropy(head(features[idx]).squeeze(1), targets[idx].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(targets))
    head.eval()
    return losses


def baseline_module(model: nn.Module, train: D.ImageDataset, classes: Sequence[int],
                    cfg: BaselineConfig | None = None, importance: dict[str, torch.Tensor] | None = None,
                    device: str = "auto") -> Module:
    """A module of ``model`` for ``classes`` (ids of ``train``'s classes), by kernel importance.

    With ``cfg.head == "logistic"``, ``classes`` must be a single class; the head is trained on
    a balanced "class vs rest" task drawn from ``train``.
    """
    cfg = cfg or BaselineConfig()
    classes = check_classes(classes, train.num_classes, train.name)
    if cfg.head == "logistic" and len(classes) != 1:
        raise ValueError(f"head='logistic' builds a one-class module; got classes {classes}")
    importance = importance if importance is not None else kernel_importance(model, train, device=device,
                                                                              batch_size=cfg.batch_size)
    masks = top_fraction_masks(importance, classes, cfg.keep_fraction)
    names = [train.class_names[c] for c in classes]
    task = {"dataset": train.name, "classes": classes, "class_names": names}
    first_head = {"type": "select", "classes": classes} if cfg.head == "select" else {"type": "identity"}
    module = Module.create(model.cpu(), masks, task, first_head, approach="baseline", config=asdict(cfg),
                           input_shape=train.shape, dataset=train.name)
    if cfg.head == "select":
        return module
    binary = D.binary_task(train, classes[0], seed=cfg.seed)
    feats = predict(module.network, binary, cfg.batch_size, device="cpu")
    head_spec = {"type": "logistic", "in": feats.shape[1]}
    head = build_head(head_spec)
    fit_detector_head(head, feats, binary.labels, cfg.head_epochs, cfg.head_lr, seed=cfg.seed)
    module.head_spec, module.head = head_spec, head
    module.task = {**task, "kind": "detector", "class_names": [names[0]]}
    return module
