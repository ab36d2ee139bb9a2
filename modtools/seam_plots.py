"""SeaM's figures: per-class binary re-engineering, class groups with costs, defect inheritance.

Like :mod:`modtools.plots`, these read results dicts and never train.
"""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt

from .plots import PALETTE


def binary_figure(results: Mapping) -> plt.Figure:
    """Per target class: accuracy of the original and of the re-engineered model, and the WRR."""
    rows = results["classes"]
    x = range(len(rows))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [3, 2]})
    ax.bar([i - 0.2 for i in x], [r["accuracy_original"] for r in rows], 0.4, color=PALETTE["model"],
           label="original model")
    ax.bar([i + 0.2 for i in x], [r["accuracy_reengineered"] for r in rows], 0.4, color=PALETTE["module"],
           label="re-engineered")
    low = min(min(r["accuracy_original"], r["accuracy_reengineered"]) for r in rows)
    ax.set(ylim=(max(0.0, low - 0.05), 1.0), ylabel="test accuracy (class vs rest)",
           title=f"binary target problems ({results['arch']}, {results['dataset']})")
    ax.set_xticks(list(x), [r["name"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.legend(fontsize=8, loc="lower right")
    bx.bar(list(x), [r["wrr"] for r in rows], color=PALETTE["muted"])
    mean = sum(r["wrr"] for r in rows) / len(rows)
    bx.axhline(mean, color=PALETTE["accent"], ls=":", label=f"mean WRR {mean:.1%}")
    bx.axhline(0.1011, color="#999999", ls="--", lw=0.8, label="published mean 10.11 %")
    bx.set(ylim=(0, 1), ylabel="weight retention rate", title="weights kept")
    bx.set_xticks(list(x), [r["name"] for r in rows], rotation=45, ha="right", fontsize=8)
    bx.legend(fontsize=8)
    fig.tight_layout()
    return fig


def groups_figure(results: Mapping) -> plt.Figure:
    """Per class group: accuracy (original vs re-engineered), and WRR, MACs and latency ratios."""
    rows = results["groups"]
    x = range(len(rows))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4))
    ax.bar([i - 0.2 for i in x], [r["accuracy_original"] for r in rows], 0.4, color=PALETTE["model"],
           label="original (argmax over the group's logits)")
    ax.bar([i + 0.2 for i in x], [r["accuracy_reengineered"] for r in rows], 0.4, color=PALETTE["module"],
           label="re-engineered")
    ax.set(ylim=(0, 1.05), ylabel="test accuracy", title="multi-class target problems")
    ax.set_xticks(list(x), [r["name"] for r in rows])
    ax.legend(fontsize=8, loc="lower right")
    keys = [("wrr", "WRR (weights kept)"), ("macs_ratio_nonzero", "non-zero MACs / original"),
            ("macs_ratio_structured", "MACs, dead kernels removed / original"),
            ("latency_ratio_dense", "latency, zeroed dense / original"),
            ("latency_ratio", "latency, extracted / original")]
    w = 0.8 / len(keys)
    for j, (key, label) in enumerate(keys):
        bx.bar([i - 0.4 + w * (j + 0.5) for i in x], [r.get(key, float("nan")) for r in rows], w, label=label)
    bx.axhline(1.0, color="#999999", lw=0.8)
    bx.set(ylabel="ratio to the original model (batch %d, CPU)" % results.get("batch_size", 64),
           title="what the zeros buy in PyTorch")
    bx.set_xticks(list(x), [r["name"] for r in rows])
    bx.legend(fontsize=7)
    fig.tight_layout()
    return fig


def defect_figure(results: Mapping) -> plt.Figure:
    """Accuracy and DIR of standard vs SeaM fine-tuning across pruning thresholds (the paper's figure)."""
    t = results["thresholds"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    ax.plot(t, results["accuracy_standard"], "o--", color=PALETTE["model"], label="standard fine-tuning")
    ax.plot(t, results["accuracy_seam"], "o-", color=PALETTE["module"], label="SeaM, then fine-tuning")
    ax.set(xlabel="pruning threshold (share of weights removed)", ylabel="target test accuracy", ylim=(0, 1.02),
           title=f"reuse accuracy ({results['source']} → {results['target']})")
    ax.legend(fontsize=8)
    bx.plot(t, results["dir_standard"], "o--", color=PALETTE["model"], label="standard fine-tuning")
    bx.plot(t, results["dir_seam"], "o-", color=PALETTE["module"], label="SeaM, then fine-tuning")
    bx.set(xlabel="pruning threshold", ylabel="defect inheritance rate (DIR)", ylim=(0, 1.0),
           title=f"inherited adversarial defects (PGD, ε = {results['eps']:.3g})")
    bx.legend(fontsize=8)
    fig.tight_layout()
    return fig
