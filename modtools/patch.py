"""Patching a weak model's weak class with a module of a strong model (CNNSplitter, spec §7).

The weak model's own probability of the target class (TC) is discarded and replaced by the
module's TC score, min–max normalised on the TC's validation samples; the prediction is the argmax
of the weak model's other probabilities and that score, with no threshold (published). As a toolkit
option, a Platt probability fitted on the TC's and the other classes' validation samples decides
"TC or not" at ½ instead. Any module whose task names the TC works: CNNSplitter's own-class logit,
GradSplitter's detector score, an MwT or SeaM module's output for that class.

Weak models are described by a :class:`modtools.train.ModelSpec` on a task that contains the TC
(:func:`weak_specs` makes the three kinds the paper uses: too simple, overfitting, underfitting).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn as nn

from . import data as D
from .errors import EmptyClassError, InvalidClassError, ModuleMismatchError, check_classes, check_range
from .module import Module
from .train import FitConfig, ModelSpec, resolve_device

WEAK_KINDS = ("simple", "overfit", "underfit")


CALIBRATIONS = ("minmax", "percentile", "outlier", "platt")
PERCENTILE_RANGE = (0.1, 0.9)   # the original's unused ``percentile`` range (its 10th and 90th percentiles)


@dataclass
class Calibration:
    """How a module's raw TC score becomes the number that replaces the weak model's TC probability.

    * ``minmax`` (published): ``(s − low) / (high − low)`` with the min and max of the score on the
      TC's validation samples; when they are all equal, ``1 + s − low`` (they map to 1).
    * ``percentile``: the same map with two percentiles of those scores instead of the min and max
      (by default the 10th and 90th, the original code's unused ``percentile`` range). One hard TC
      sample no longer stretches the range down, so fewer other-class images land in (0, 1); TC
      images above the upper percentile map above 1.
    * ``outlier``: the same map with Tukey's fences of those scores, ``Q1 − 1.5·IQR`` and
      ``Q3 + 1.5·IQR``, each clipped to the scores' range (the original's unused ``outlier`` range):
      the min and max unless they are outliers.
    * ``platt``: ``sigmoid(slope · s + intercept)``, a probability of the TC fitted (logistic
      regression) on the TC's samples against the weak task's other classes' samples of the
      calibration split. The patch then lets the module decide "TC or not" (TC when this probability
      is above ½) and the weak model pick among its other classes. The min–max range maps most
      other-class samples into (0, 1), where they beat an unsure (underfitted, too simple) weak
      model's probabilities and cost the other classes accuracy; a fitted probability with an even
      threshold does not depend on how sure the weak model is.
    """

    low: float
    high: float
    samples: int
    kind: str = "minmax"
    slope: float = 1.0
    intercept: float = 0.0
    negatives: int = 0

    def normalise(self, scores: torch.Tensor) -> torch.Tensor:
        if self.kind == "platt":
            return torch.sigmoid(self.slope * scores + self.intercept)
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


def fit_platt(scores: torch.Tensor, positive: torch.Tensor, ridge: float = 1e-3, steps: int = 50) -> tuple[float, float]:
    """``(slope, intercept)`` of the logistic regression of ``positive`` (bool) on ``scores`` (Newton's
    method on standardised scores, with a small ridge so that separable data stay finite)."""
    s = scores.double()
    mean, std = float(s.mean()), float(s.std()) or 1.0
    z = torch.stack([(s - mean) / std, torch.ones_like(s)], 1)
    y = positive.double()
    w = torch.zeros(2, dtype=torch.float64)
    for _ in range(steps):
        p = torch.sigmoid(z @ w)
        grad = z.T @ (p - y) / len(y) + ridge * w
        hess = (z * (p * (1 - p))[:, None]).T @ z / len(y) + ridge * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        w = w - step
        if float(step.abs().max()) < 1e-10:
            break
    slope = float(w[0]) / std
    return slope, float(w[1]) - slope * mean


def check_calibration(calibration: str) -> str:
    """``calibration`` itself, or a ValueError naming it and the allowed values."""
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration={calibration!r} is not allowed; use one of {CALIBRATIONS}")
    return calibration


def check_percentiles(percentiles: Sequence[float]) -> tuple[float, float]:
    """``(low, high)`` as fractions with ``0 <= low < high <= 1``, or a ValueError naming the value."""
    try:
        low, high = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise ValueError(f"percentiles={percentiles!r} is not allowed; give two fractions (low, high), "
                         "e.g. (0.1, 0.9)") from None
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"percentiles={percentiles!r} is not allowed; they need 0 <= low < high <= 1")
    return low, high


def calibrate(module: Module, val: D.ImageDataset, target_class: int, device: str = "auto", method: str = "minmax",
              negative_classes: Sequence[int] | None = None,
              percentiles: Sequence[float] = PERCENTILE_RANGE) -> Calibration:
    """Calibrate the module's TC score on ``val`` (labelled with source class ids): the min–max range of
    its TC samples (``minmax``, published), their ``percentiles`` range (``percentile``; by default
    10th–90th), Tukey's fences (``outlier``), or a logistic fit of TC samples against the samples of
    ``negative_classes`` (default: every other class) (``platt``)."""
    check_calibration(method)
    percentiles = check_percentiles(percentiles)
    (target_class,) = check_classes([target_class], val.num_classes, val.name, what="target class")
    idx = torch.nonzero(val.labels == target_class).squeeze(1)
    if len(idx) == 0:
        raise EmptyClassError(f"the calibration split of {val.name} has no sample of target class {target_class} "
                              f"({val.class_names[target_class]!r}); the module score cannot be normalised")
    s = module_scores(module, val.take(idx), target_class, device)
    cal = Calibration(float(s.min()), float(s.max()), len(idx))
    if method == "minmax":
        return cal
    if method == "percentile":
        low, high = torch.quantile(s.double(), torch.tensor(percentiles, dtype=torch.float64)).tolist()
        return Calibration(float(low), float(high), len(idx), "percentile")
    if method == "outlier":
        q1, q3 = torch.quantile(s.double(), torch.tensor((0.25, 0.75), dtype=torch.float64)).tolist()
        low, high = max(cal.low, q1 - 1.5 * (q3 - q1)), min(cal.high, q3 + 1.5 * (q3 - q1))
        return Calibration(float(low), float(high), len(idx), "outlier")
    others = [c for c in (negative_classes if negative_classes is not None else range(val.num_classes))
              if c != target_class]
    neg = torch.nonzero(torch.isin(val.labels, torch.tensor(others, dtype=val.labels.dtype))).squeeze(1)
    if len(neg) == 0:
        raise EmptyClassError(f"the calibration split of {val.name} has no sample of the other classes {others}; "
                              "a Platt calibration needs negatives (use calibration='minmax')")
    sn = module_scores(module, val.take(neg), target_class, device)
    slope, intercept = fit_platt(torch.cat([s, sn]), torch.cat([torch.ones(len(s)), torch.zeros(len(sn))]).bool())
    return Calibration(cal.low, cal.high, len(idx), "platt", slope, intercept, len(neg))


def patched_predictions(weak_probs: torch.Tensor, scores: torch.Tensor, column: int,
                        calibration: Calibration) -> torch.Tensor:
    """Argmax after replacing column ``column`` of the weak model's softmax by the normalised score
    (``minmax``); for ``platt``, the TC where its probability is above ½, else the weak model's
    most probable other class."""
    p = weak_probs.clone()
    if calibration.kind == "platt":
        p[:, column] = -1.0
        return torch.where(calibration.normalise(scores) > 0.5, torch.full_like(p[:, 0], column, dtype=torch.long),
                           p.argmax(1))
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
          test: D.ImageDataset, target_class: int, device: str = "auto", calibration: str = "minmax",
          percentiles: Sequence[float] = PERCENTILE_RANGE) -> dict:
    """Patch ``weak_model`` on ``target_class`` with ``module`` and measure before and after.

    Args:
        weak_model: outputs one logit per entry of ``weak_classes``.
        weak_classes: the class ids (of the module's source data set) that the weak model's outputs
            stand for, in output order; it must contain ``target_class``.
        calibration_data: labelled with source class ids; its TC samples set the min–max range
            (for ``platt``, its TC samples against those of the weak model's other classes).
        test: the weak model's test task, labelled 0..k-1 in ``weak_classes`` order.
        calibration: ``minmax`` (published), ``percentile``, ``outlier`` or ``platt`` (see :class:`Calibration`).
        percentiles: the ``(low, high)`` fractions of the ``percentile`` calibration.

    Returns the TC's precision, recall and F1 and the other classes' accuracy, before and after.
    """
    weak_classes = [int(c) for c in weak_classes]
    if target_class not in weak_classes:
        raise ModuleMismatchError(f"target class {target_class} is not among the weak model's classes {weak_classes}; "
                                  "the patch needs the weak model's output for that class")
    if test.num_classes != len(weak_classes):
        raise ModuleMismatchError(f"the test task has {test.num_classes} classes but weak_classes lists "
                                  f"{len(weak_classes)}: {weak_classes}")
    check_calibration(calibration)
    percentiles = check_percentiles(percentiles)
    column = weak_classes.index(target_class)
    dev = resolve_device(device)
    weak_model = weak_model.eval().to(dev)
    outputs = int(weak_model(test.float_images()[:1].to(dev)).shape[1])
    if outputs != len(weak_classes):
        raise ModuleMismatchError(f"the weak model has {outputs} outputs but weak_classes lists {len(weak_classes)} "
                                  f"classes ({weak_classes}); they must match one to one")
    cal = calibrate(module, calibration_data, target_class, device, calibration, negative_classes=weak_classes,
                    percentiles=percentiles)
    probs = torch.cat([torch.softmax(weak_model(x.to(dev)), 1).cpu() for x, _ in D.TensorLoader(test, 256)])
    scores = module_scores(module, test, target_class, device)
    before = probs.argmax(1)
    after = patched_predictions(probs, scores, column, cal)
    mb, ma = class_metrics(before, test.labels, column), class_metrics(after, test.labels, column)
    return {"target_class": int(target_class), "target_name": test.class_names[column], "column": column,
            "module_approach": module.approach, "module_name": module.name,
            "calibration": {"kind": cal.kind, "low": cal.low, "high": cal.high, "samples": cal.samples,
                            "slope": cal.slope, "intercept": cal.intercept, "negatives": cal.negatives},
            **{f"{k}_before": mb[k] for k in ("precision", "recall", "f1")},
            **{f"{k}_after": ma[k] for k in ("precision", "recall", "f1")},
            "other_accuracy_before": _other_accuracy(before, test.labels, column),
            "other_accuracy_after": _other_accuracy(after, test.labels, column),
            "test_samples": len(test), "target_samples": int((test.labels == column).sum())}


def weak_specs(strong: ModelSpec, classes: Sequence[int], per_class: int | None = None, *,
               simple_arch: str = "simcnn", simple_width: float = 0.0625, simple_epochs: int = 10,
               simple_lr: float = 0.01, overfit_epochs: int = 40, underfit_epochs: int = 6, lr: float = 0.05,
               batch_size: int = 32, seed: int = 0, poor_arch: str | None = None) -> dict[str, ModelSpec]:
    """The three kinds of weak model on the task ``classes`` (TC last, as in the paper):

    * ``simple``: a much narrower network (SGD with momentum 0.9, constant lr, as the paper's weak models);
    * ``overfit``: the strong architecture without augmentation, plain SGD (no momentum, no weight
      decay) with a constant lr for ``overfit_epochs`` on few samples: the late checkpoint;
    * ``underfit``: the same recipe stopped after ``underfit_epochs``: an early checkpoint of that run
      (same seed and a constant lr, so its first epochs are the overfit run's first epochs).

    The last epoch is kept (no selection on validation), as the paper picks its checkpoints. The
    overfit and underfit models have the strong model's architecture and width, as in the paper, or
    ``poor_arch`` at the same width. ``underfit_epochs`` must be below ``overfit_epochs``.
    """
    check_range("underfit_epochs", underfit_epochs, 1 <= underfit_epochs < overfit_epochs,
                f"1 to overfit_epochs - 1 ({overfit_epochs - 1}): the underfit model is an earlier checkpoint")
    base = replace(strong, classes=list(classes), per_class=per_class, dirichlet_alpha=None, variant={})
    poor_base = base if poor_arch is None or poor_arch == strong.arch else replace(base, arch=poor_arch, arch_kwargs={})
    poor = FitConfig(epochs=overfit_epochs, batch_size=batch_size, lr=lr, momentum=0.0, weight_decay=0.0,
                     schedule="constant", augment=False, select_best=False, seed=seed, precision=strong.fit.precision)
    return {
        "simple": replace(base, arch=simple_arch, width=simple_width, arch_kwargs={},
                          fit=replace(poor, epochs=simple_epochs, lr=simple_lr, momentum=0.9, weight_decay=1e-4)),
        "overfit": replace(poor_base, fit=poor),
        "underfit": replace(poor_base, fit=replace(poor, epochs=underfit_epochs)),
    }
