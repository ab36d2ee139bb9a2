"""Compose modules into classifiers.

A :class:`ComposedClassifier` takes one *detector* module per class (a module whose head outputs a
score in (0, 1) for "this is my class", as GradSplitter produces) and predicts the class whose
module scores highest. The modules may come from different models, architectures or data sets, as
long as they read the same input shape. Scores can optionally be calibrated on a validation split
(per module ``sigmoid(a · logit(s) + b)`` fitted by binary cross-entropy); this is off by default,
as in the GradSplitter paper.
"""
from __future__ import annotations

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
        self.nets = nn.ModuleList([m.as_model() for m in modules])
        self.class_names = list(class_names or [m.task["class_names"][0] for m in modules])
        self.register_buffer("scale", torch.ones(len(modules)))
        self.register_buffer("shift", torch.zeros(len(modules)))
        self.calibrated = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, N)`` in (0, 1)."""
        s = torch.cat([net(x) for net in self.nets], dim=1)
        if self.calibrated:
            s = torch.sigmoid(self.scale * torch.logit(s, eps=1e-6) + self.shift)
        return s

    @torch.no_grad()
    def calibrate(self, val: D.ImageDataset, steps: int = 200, lr: float = 0.05) -> None:
        """Fit each module's ``(a, b)`` on ``val`` (module i's positives are class i's samples)."""
        self.calibrated = False  # fit on the raw scores, also when calibrating again
        scores = predict(self, val, device="cpu")
        logits = torch.logit(scores, eps=1e-6)
        target = F.one_hot(val.labels, len(self.nets)).float()
        a = torch.ones(len(self.nets), requires_grad=True)
        b = torch.zeros(len(self.nets), requires_grad=True)
        opt = torch.optim.Adam([a, b], lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                loss = F.binary_cross_entropy_with_logits(a * logits + b, target)
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.scale.copy_(a.detach())
        self.shift.copy_(b.detach())
        self.calibrated = True


def evaluate_composed(model: ComposedClassifier, test: D.ImageDataset, device: str = "auto") -> dict:
    """Accuracy and per-class metrics of a composed classifier on ``test`` (labels = module order)."""
    scores = predict(model, test, device=device)
    return classification_report(scores.argmax(1), test.labels, test.num_classes, test.class_names)
