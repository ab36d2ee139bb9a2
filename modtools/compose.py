"""Compose modules into classifiers.

A :class:`ComposedClassifier` takes one *detector* module per class (a module whose head outputs a
score in (0, 1) for "this is my class", as GradSplitter produces) and predicts the class whose
module scores highest. The modules may come from different models, architectures or data sets, as
long as they read the same input shape. The composition owns copies of the modules' heads, so
adapting it never changes the modules. Two optional adaptations, both off by default as in the
GradSplitter paper (which compares raw scores):

* :meth:`ComposedClassifier.calibrate`: per module ``sigmoid(a · logit(s) + b)`` fitted on a
  labelled split by binary cross-entropy (two numbers per module);
* :meth:`ComposedClassifier.refit_heads`: the heads themselves re-trained jointly on a labelled
  split, with cross-entropy over the composed scores, on cached features of the frozen module
  networks. This is what modules from different models or data sets need when their scores were
  never trained against each other (a module of one data set never saw the other's images).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import data as D
from .errors import ModuleMismatchError
from .metrics import classification_report
from .module import Module
from .train import predict


def check_composable(modules: Sequence[Module]) -> tuple[int, ...]:
    """Raise :class:`ModuleMismatchError` unless every module is a detector reading one input shape."""
    if not modules:
        raise ModuleMismatchError("a composition needs at least one module; got none")
    shape = tuple(modules[0].source["input_shape"])
    for i, m in enumerate(modules):
        if m.task.get("kind") != "detector":
            raise ModuleMismatchError(f"module {i} ({m.name}) is not a detector (task kind "
                                      f"{m.task.get('kind')!r}); a composition needs one score per module")
        other = tuple(m.source["input_shape"])
        if other != shape:
            raise ModuleMismatchError(f"module {i} ({m.name}) reads inputs of shape {other}, module 0 "
                                      f"({modules[0].name}) reads {shape}; all modules must read the same shape")
    return shape


class ComposedClassifier(nn.Module):
    """Class i is scored by module i; the prediction is the argmax of the (optionally calibrated) scores."""

    def __init__(self, modules: Sequence[Module], class_names: Sequence[str] | None = None):
        super().__init__()
        self.input_shape = check_composable(modules)
        self.networks = nn.ModuleList([m.network for m in modules])
        self.heads = nn.ModuleList([copy.deepcopy(m.head) for m in modules])
        self.class_names = list(class_names or [m.task["class_names"][0] for m in modules])
        self.register_buffer("scale", torch.ones(len(modules)))
        self.register_buffer("shift", torch.zeros(len(modules)))
        self.calibrated = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, N)`` in (0, 1)."""
        return self._scores([net(x) for net in self.networks])

    def _scores(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        s = torch.cat([head(f) for head, f in zip(self.heads, features)], dim=1)
        if self.calibrated:
            s = torch.sigmoid(self.scale * torch.logit(s, eps=1e-6) + self.shift)
        return s

    @torch.no_grad()
    def features(self, ds: D.ImageDataset, device: str = "auto") -> list[torch.Tensor]:
        """Each module network's outputs on ``ds`` (the heads' inputs), computed once."""
        return [predict(net, ds, device=device) for net in self.networks]

    def refit_heads(self, ds: D.ImageDataset, epochs: int = 30, lr: float = 0.01, batch_size: int = 128,
                    seed: int = 0, device: str = "auto") -> list[float]:
        """Re-train the heads jointly on ``ds`` (labels = module order) with cross-entropy over the
        composed scores; the module networks stay frozen and their features are computed once.
        Returns the mean loss of every epoch."""
        if epochs < 0 or lr <= 0:
            raise ValueError(f"refit_heads needs epochs >= 0 and lr > 0, got epochs={epochs}, lr={lr}")
        feats = self.features(ds, device="cpu")
        self.calibrated = False
        self.heads.cpu().train()
        opt = torch.optim.Adam(self.heads.parameters(), lr=lr)
        g = torch.Generator().manual_seed(seed)
        losses = []
        with torch.enable_grad():
            for _ in range(epochs):
                order = torch.randperm(len(ds), generator=g)
                total = 0.0
                for a in range(0, len(order), batch_size):
                    idx = order[a:a + batch_size]
                    loss = F.cross_entropy(self._scores([f[idx] for f in feats]), ds.labels[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                losses.append(total / len(ds))
        self.heads.eval()
        return losses

    @torch.no_grad()
    def calibrate(self, val: D.ImageDataset, steps: int = 200, lr: float = 0.05) -> None:
        """Fit each module's ``(a, b)`` on ``val`` (module i's positives are class i's samples)."""
        self.calibrated = False  # fit on the raw scores, also when calibrating again
        scores = predict(self, val, device="cpu")
        a, b = fit_calibration(torch.logit(scores, eps=1e-6), F.one_hot(val.labels, len(self.heads)).float(),
                               steps, lr)
        self.scale.copy_(a)
        self.shift.copy_(b)
        self.calibrated = True


def fit_calibration(logits: torch.Tensor, target: torch.Tensor, steps: int = 200,
                    lr: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column of ``logits`` ``(V, N)``, the ``(a, b)`` that make ``sigmoid(a · logit + b)`` fit the 0/1
    ``target`` best (binary cross-entropy, Adam from ``a = 1, b = 0``)."""
    n = logits.shape[1]
    a = torch.ones(n, requires_grad=True)
    b = torch.zeros(n, requires_grad=True)
    opt = torch.optim.Adam([a, b], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.binary_cross_entropy_with_logits(a * logits + b, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return a.detach(), b.detach()


def evaluate_composed(model: ComposedClassifier, test: D.ImageDataset, device: str = "auto") -> dict:
    """Accuracy and per-class metrics of a composed classifier on ``test`` (labels = module order)."""
    scores = predict(model, test, device=device)
    return classification_report(scores.argmax(1), test.labels, test.num_classes, test.class_names)
