"""Patching a weak model's weak class with a module of a strong model (CNNSplitter, spec §7).

The weak model's own probability of the target class (TC) is discarded and replaced by the
module's TC score, min–max normalised on the TC's validation samples; the prediction is the argmax
of the weak model's other probabilities and that score. There is no threshold. Any module whose
task names the TC works: CNNSplitter's own-class logit, GradSplitter's detector score, an MwT or
SeaM module's output for that class.

Weak models are described by a :class:`modtools.train.ModelSpec` on a task that contains the TC
(:func:`weak_specs` makes the three kinds the paper uses: too simple, overfitting, underfitting).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn as nn

from . import data as D
from .errors import EmptyClassError, InvalidClassError, ModuleMismatchError, check_classes
from .module import Module
from .train import FitConfig, ModelSpec, resolve_device

WEAK_KINDS = ("simple", "overfit", "underfit")


@dataclass
class Calibration:
    """The min and max of the module's TC score on the TC's validation samples."""

    low: float
    high: float
    samples: int

    def normalise(self, scores: torch.Tensor) -> torch.Tensor:
        """``(s − low) / (high − low)``; when all calibration scores are equal, ``1 + s − low`` (they map to 1)."""
        span = self.high - self.low
        return (scores - self.low) / span if span > 0 else 1.0 + (scores - self.low)


def module_column(module: Module, target_class: int) -> int:
    """The output column of ``module`` that scores ``target_class`` (a class id of its source data)."""
    classes = list(module.task.get("classes", []))
    if target_class not in classes:
        raise InvalidClassError(f"target class {target_class} is not a class of module {module.name!r}; "
                                f"its task has classes {classes}")
    return classes.index(target_class)


@torch.no_grad()
def module_scores(module: Module, ds: D.ImageDataset, target_class: int, device: str = "auto",
                  batch_size: int = 256) -> torch.Tensor:
    """The module's raw TC score for every sample of ``ds``."""
    col = module_column(module, target_class)
    dev = resolve_device(device)
    module.to(dev)
    out = [module(x.to(dev))[:, col].float().cpu() for x, _ in D.TensorLoader(ds, batch_size)]
    return torch.cat(out) if out else torch.zeros(0)


def calibrate(module: Module, val: D.ImageDataset, target_class: int, device: str = "auto") -> Calibration:
    """Min–max range of the module's TC score on the samples of ``val`` labelled ``target_class``."""
    (target_class,) = check_classes([target_class], val.num_classes, val.name, what="target class")
    idx = torch.nonzero(val.labels == target_class).squeeze(1)
    if len(idx) == 0:
        raise EmptyClassError(f"the calibration split of {val.name} has no sample of target class {target_class} "
                              f"({val.class_names[target_class]!r}); the module score cannot be normalised")
    s = module_scores(module, val.take(idx), target_class, device)
    return Calibration(float(s.min()), float(s.max()), len(idx))


def patched_predictions(weak_probs: torch.Tensor, scores: torch.Tensor, column: int,
                        calibration: Calibration) -> torch.Tensor:
    """Argmax after replacing column ``column`` of the weak model's softmax by the normalised score."""
    p = weak_probs.clone()
    p[:, column] = calibration.normalise(scores)
    return p.argmax(1)


def class_metrics(pred: torch.Tensor, labels: torch.Tensor, positive: int) -> dict:
    """Binary precision, recall and F1 of class ``positive`` (0 where undefined, never a division by zero)."""
    tp = int(((pred == positive) & (labels == positive)).sum())
    fp = int(((pred == positive) & (labels != positive)).sum())
    fn = int(((pred != positive) & (labels == positive)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def _other_accuracy(pred: torch.Tensor, labels: torch.Tensor, column: int) -> float:
    keep = labels != column
    return float((pred[keep] == labels[keep]).float().mean()) if keep.any() else float("nan")


@torch.no_grad()
def patch(weak_model: nn.Module, weak_classes: Sequence[int], module: Module, calibration_data: D.ImageDataset,
          test: D.ImageDataset, target_class: int, device: str = "auto") -> dict:
    """Patch ``weak_model`` on ``target_class`` with ``module`` and measure before and after.

    Args:
        weak_model: outputs one logit per entry of ``weak_classes``.
        weak_classes: the class ids (of the module's source data set) that the weak model's outputs
            stand for, in output order; it must contain ``target_class``.
        calibration_data: labelled with source class ids; its TC samples set the min–max range.
        test: the weak model's test task, labelled 0..k-1 in ``weak_classes`` order.

    Returns the TC's precision, recall and F1 and the other classes' accuracy, before and after.
    """
    weak_classes = [int(c) for c in weak_classes]
    if target_class not in weak_classes:
        raise ModuleMismatchError(f"target class {target_class} is not among the weak model's classes {weak_classes}; "
                                  "the patch needs the weak model's output for that class")
    if test.num_classes != len(weak_classes):
        raise ModuleMismatchError(f"the test task has {test.num_classes} classes but weak_classes lists "
                                  f"{len(weak_classes)}: {weak_classes}")
    column = weak_classes.index(target_class)
    dev = resolve_device(device)
    weak_model = weak_model.eval().to(dev)
    outputs = int(weak_model(test.float_images()[:1].to(dev)).shape[1])
    if outputs != len(weak_classes):
        raise ModuleMismatchError(f"the weak model has {outputs} outputs but weak_classes lists {len(weak_classes)} "
                                  f"classes ({weak_classes}); they must match one to one")
    cal = calibrate(module, calibration_data, target_class, device)
    probs = torch.cat([torch.softmax(weak_model(x.to(dev)), 1).cpu() for x, _ in D.TensorLoader(test, 256)])
    scores = module_scores(module, test, target_class, device)
    before = probs.argmax(1)
    after = patched_predictions(probs, scores, column, cal)
    mb, ma = class_metrics(before, test.labels, column), class_metrics(after, test.labels, column)
    return {"target_class": int(target_class), "target_name": test.class_names[column], "column": column,
            "module_approach": module.approach, "module_name": module.name,
            "calibration": {"low": cal.low, "high": cal.high, "samples": cal.samples},
            **{f"{k}_before": mb[k] for k in ("precision", "recall", "f1")},
            **{f"{k}_after": ma[k] for k in ("precision", "recall", "f1")},
            "other_accuracy_before": _other_accuracy(before, test.labels, column),
            "other_accuracy_after": _other_accuracy(after, test.labels, column),
            "test_samples": len(test), "target_samples": int((test.labels == column).sum())}


def weak_specs(strong: ModelSpec, classes: Sequence[int], per_class: int | None = None, *,
               simple_arch: str = "simcnn", simple_width: float = 0.0625, simple_epochs: int = 10,
               simple_lr: float = 0.01, overfit_epochs: int = 40, underfit_epochs: int = 3, lr: float = 0.05,
               batch_size: int = 32, seed: int = 0) -> dict[str, ModelSpec]:
    """The three kinds of weak model on the task ``classes`` (TC last, as in the paper):

    * ``simple``: a much narrower network (SGD with momentum 0.9, constant lr, as the paper's weak models);
    * ``overfit``: the strong architecture without augmentation, plain SGD (no momentum, no weight
      decay) with a constant lr for ``overfit_epochs`` on few samples: the late checkpoint;
    * ``underfit``: the same recipe stopped after ``underfit_epochs``: an early checkpoint of that run
      (same seed and a constant lr, so its first epochs are the overfit run's first epochs).

    The last epoch is kept (no selection on validation), as the paper picks its checkpoints.
    """
    base = replace(strong, classes=list(classes), per_class=per_class, dirichlet_alpha=None, variant={})
    poor = FitConfig(epochs=overfit_epochs, batch_size=batch_size, lr=lr, momentum=0.0, weight_decay=0.0,
                     schedule="constant", augment=False, select_best=False, seed=seed)
    return {
        "simple": replace(base, arch=simple_arch, width=simple_width, arch_kwargs={},
                          fit=replace(poor, epochs=simple_epochs, lr=simple_lr, momentum=0.9, weight_decay=1e-4)),
        "overfit": replace(base, fit=poor),
        "underfit": replace(base, fit=replace(poor, epochs=underfit_epochs)),
    }
