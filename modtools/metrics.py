"""Metrics shared by every approach: classification quality, retention rates, cost and latency.

Units: accuracies and rates are fractions in [0, 1]; times are seconds; compute is counted in
**MACs** (multiply-accumulates), which is ``torch.utils.flop_counter``'s FLOP total divided by 2.
"""
from __future__ import annotations

import statistics
import time
from typing import Mapping, Sequence

import torch
import torch.nn as nn

MAC_UNIT = "MACs (multiply-accumulates) = FLOPs / 2, counted by torch.utils.flop_counter.FlopCounterMode"


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``C[i, j]`` = number of samples of true class ``i`` predicted as ``j``."""
    pred, labels = torch.as_tensor(pred).long().cpu(), torch.as_tensor(labels).long().cpu()
    idx = labels * num_classes + pred
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    pred, labels = torch.as_tensor(pred).cpu(), torch.as_tensor(labels).cpu()
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set is undefined (0 samples)")
    return float((pred == labels).float().mean())


def precision_recall_f1(conf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class precision, recall and F1 from a confusion matrix (0 where undefined)."""
    conf = conf.double()
    tp = conf.diag()
    predicted, actual = conf.sum(0), conf.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    return precision, recall, f1


def classification_report(pred: torch.Tensor, labels: torch.Tensor, num_classes: int,
                          class_names: Sequence[str] | None = None) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix, as plain Python."""
    conf = confusion_matrix(pred, labels, num_classes)
    p, r, f = precision_recall_f1(conf)
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    per_class = [{"class": i, "name": names[i], "precision": float(p[i]), "recall": float(r[i]),
                  "f1": float(f[i]), "support": int(conf[i].sum())} for i in range(num_classes)]
    return {"accuracy": float(conf.diag().sum()) / max(1, int(conf.sum())), "per_class": per_class,
            "confusion": conf.tolist()}


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive``: the chance that a positive
    scores above a negative (ties count ½), from average ranks (Mann–Whitney), with no threshold."""
    s = torch.as_tensor(scores).detach().double().flatten().cpu()
    y = torch.as_tensor(positive).bool().flatten().cpu()
    if len(s) != len(y):
        raise ValueError(f"roc_auc needs one label per score: {len(s)} scores, {len(y)} labels")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"roc_auc needs positives and negatives: {n_pos} positive, {n_neg} negative samples")
    _, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    average_rank = counts.cumsum(0).double() - (counts.double() - 1) / 2   # 1-based, ties share their mean
    rank_sum = float(average_rank[inverse][y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def kernel_retention(masks: Mapping[str, torch.Tensor], widths: Mapping[str, int] | None = None) -> dict:
    """Kernel retention rate: kept kernels / all kernels, over the masked layers (and per layer).

    ``widths`` adds unmasked layers (all kept) to the denominator.
    """
    kept = {k: int((torch.as_tensor(v) != 0).sum()) for k, v in masks.items()}
    total = {k: int(torch.as_tensor(v).numel()) for k, v in masks.items()}
    for k, w in (widths or {}).items():
        if k not in total:
            kept[k], total[k] = w, w
    all_total = sum(total.values())
    return {"rate": sum(kept.values()) / all_total if all_total else 1.0, "kept": sum(kept.values()),
            "total": all_total, "per_layer": {k: kept[k] / total[k] for k in total}}


def weight_retention(masks: Mapping[str, torch.Tensor]) -> dict:
    """Weight retention rate: kept weights / all masked weights (element-wise masks)."""
    kept = sum(int((torch.as_tensor(v) != 0).sum()) for v in masks.values())
    total = sum(int(torch.as_tensor(v).numel()) for v in masks.values())
    return {"rate": kept / total if total else 1.0, "kept": kept, "total": total}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: Sequence[int]) -> dict:
    """MACs of one forward pass on a single input of shape ``input_shape`` (C, H, W), and parameters."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    p = next(model.parameters())
    x = torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    model.train(was)
    flops = counter.get_total_flops()
    return {"macs": flops // 2, "flops": flops, "params": count_parameters(model), "unit": MAC_UNIT}


@torch.no_grad()
def measure_latency(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1, repeats: int = 20,
                    warmup: int = 5, threads: int | None = None) -> dict:
    """Median wall time (seconds) of a forward pass, after warm-up, with the thread count stated."""
    was = model.training
    model.eval()
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        p = next(model.parameters())
        x = torch.rand(batch_size, *input_shape, device=p.device, dtype=p.dtype)
        sync = torch.cuda.synchronize if p.device.type == "cuda" else (lambda: None)
        for _ in range(warmup):
            model(x)
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - t0)
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(old_threads)
        model.train(was)
    return {"seconds": statistics.median(times), "batch_size": batch_size, "repeats": repeats,
            "warmup": warmup, "threads": used, "device": str(p.device)}


@torch.no_grad()
def latency_ratio(model: nn.Module, reference: nn.Module, input_shape: Sequence[int], batch_size: int = 64,
                  repeats: int = 20, warmup: int = 5) -> dict:
    """Median of ``model``'s forward time over ``reference``'s, the two timed alternately on the same
    input, so that drifts of a shared machine hit both alike; with both medians."""
    was = model.training, reference.training
    model.eval()
    reference.eval()
    p = next(model.parameters())
    x = torch.rand(batch_size, *input_shape, device=p.device, dtype=p.dtype)
    sync = torch.cuda.synchronize if p.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        model(x)
        reference(x)
    sync()
    ratios, t_model, t_ref = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        sync()
        t1 = time.perf_counter()
        reference(x)
        sync()
        t2 = time.perf_counter()
        t_model.append(t1 - t0)
        t_ref.append(t2 - t1)
        ratios.append((t1 - t0) / (t2 - t1))
    model.train(was[0])
    reference.train(was[1])
    return {"ratio": statistics.median(ratios), "seconds": statistics.median(t_model),
            "reference_seconds": statistics.median(t_ref), "batch_size": batch_size, "repeats": repeats,
            "threads": torch.get_num_threads(), "device": str(p.device)}
