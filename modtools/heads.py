"""Module heads: the small layers on top of a (masked or extracted) network, rebuilt from a spec.

A head is described by a JSON-able spec so module files need no pickle:

* ``{"type": "select", "classes": [c, ...]}``: keep the logits of those classes (in that order).
* ``{"type": "linear", "in": n, "out": k, "relu": False}``: a new linear layer (e.g. a fine-tuned
  sub-task head); with ``"relu": True`` a ReLU comes first (MwT's ``ReLU → Linear`` head).
* ``{"type": "detector", "in": n, "hidden": h}``: GradSplitter's ``sigmoid(Linear(ReLU(Linear(ReLU(logits)))))``,
  one score in (0, 1) per sample.
* ``{"type": "logistic", "in": n}``: ``sigmoid(Linear(n, 1)(x))``, a logistic-regression detector.
* ``{"type": "identity"}``: the network's outputs unchanged.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .errors import UnknownNameError

HEAD_TYPES = ("select", "linear", "detector", "logistic", "identity")


class SelectHead(nn.Module):
    """Keep the outputs at ``classes`` (a fixed index, stored as a buffer)."""

    def __init__(self, classes):
        super().__init__()
        self.register_buffer("classes", torch.as_tensor(list(classes), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(-1, self.classes.to(x.device))


class DetectorHead(nn.Module):
    """``sigmoid(fc2(relu(fc1(relu(logits)))))`` → one score per sample, shape ``(B, 1)``."""

    def __init__(self, n_in: int, hidden: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(torch.relu(x)))))


class LogisticHead(nn.Module):
    """``sigmoid(Linear(n, 1)(x))`` → one score per sample, shape ``(B, 1)``."""

    def __init__(self, n_in: int):
        super().__init__()
        self.fc = nn.Linear(n_in, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(x))


def build_head(spec: dict) -> nn.Module:
    """Build a head from its spec (see the module docstring)."""
    kind = spec.get("type")
    if kind == "select":
        return SelectHead(spec["classes"])
    if kind == "linear":
        linear = nn.Linear(int(spec["in"]), int(spec["out"]))
        return nn.Sequential(nn.ReLU(), linear) if spec.get("relu") else linear
    if kind == "detector":
        return DetectorHead(int(spec["in"]), int(spec.get("hidden", 10)))
    if kind == "logistic":
        return LogisticHead(int(spec["in"]))
    if kind == "identity":
        return nn.Identity()
    raise UnknownNameError(f"unknown head type {kind!r}; available: {', '.join(HEAD_TYPES)}")
