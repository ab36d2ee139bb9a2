"""MwT's figures: training curves, the threshold sweep (both sides), retention heat map, sub-task reuse.

Like :mod:`modtools.plots`, these read results dicts and never train.
"""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt

from .plots import PALETTE, layer_class_heatmap


def training_figure(results: Mapping) -> plt.Figure:
    """Loss terms, validation accuracy and kernel rate per epoch: modular vs standard training.

    With ``results["init_from"] == "standard"`` the modular model's epochs are drawn after the
    standard model's, where its training starts, and a dotted line marks the hand-over.
    """
    mod, std = results["history_modular"], results["history_standard"]
    continued = results.get("init_from") == "standard"
    offset = len(std) if continued else 0
    ep_m, ep_s = [h["epoch"] + offset for h in mod], [h["epoch"] for h in std]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    ax.plot(ep_m, [h["train_loss"] for h in mod], "o-", color=PALETTE["module"], label="modular: total loss")
    ax.plot(ep_m, [h["cohesion_loss"] for h in mod], "s--", color=PALETTE["accent"], label="cohesion loss (1 − cos, same class)")
    ax.plot(ep_m, [h["coupling_loss"] for h in mod], "^--", color="#c44e52", label="coupling loss (cos, other classes)")
    ax.plot(ep_s, [h["train_loss"] for h in std], "o-", color=PALETTE["model"], label="standard: cross-entropy")
    ax.set(xlabel="epoch", ylabel="training loss (epoch mean)", title="loss terms")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(ep_m, [h["val_accuracy"] for h in mod], "o-", color=PALETTE["module"], label="modular (soft gates)")
    ax.plot(ep_s, [h["val_accuracy"] for h in std], "o-", color=PALETTE["model"], label="standard")
    ax.set(xlabel="epoch", ylabel="validation accuracy", title="accuracy", ylim=(0, 1))
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.plot(ep_m, [h["kernel_rate"] for h in mod], "o-", color=PALETTE["module"])
    ax.set(xlabel="epoch", ylabel="fraction of gates > 0 (per sample)", title="kernel rate during training",
           ylim=(0, 1.05))
    if continued:
        for ax in axes:
            ax.axvline(offset + 0.5, color=PALETTE["muted"], ls=":", lw=1)
        axes[1].annotate("modular training starts\nfrom the standard model", (offset + 0.6, 0.05), fontsize=8,
                         color=PALETTE["muted"])
    fig.suptitle(f"MwT on {results['arch']} / {results['dataset']}: modular test accuracy "
                 f"{results['accuracy_modular']:.1%}, standard {results['accuracy_standard']:.1%}", fontsize=11)
    fig.tight_layout()
    return fig


def threshold_modularization_figure(results: Mapping) -> plt.Figure:
    """KRR, cohesion and coupling of the per-class modules against θ (the published left figure)."""
    t = results["thresholds"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(t, results["krr"], "o-", label="KRR")
    ax.plot(t, results["cohesion"], "s-", label="cohesion")
    ax.plot(t, results["coupling"], "^-", label="coupling")
    ax.set(xlabel="threshold θ", ylabel="value", ylim=(0, 1.05), title="modularization side")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def threshold_reuse_figure(results: Mapping) -> plt.Figure:
    """Sub-task module KRR and accuracy against θ, with the standard model's accuracy (right figure)."""
    t = results["thresholds"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(t, results["reuse_krr"], "o-", color=PALETTE["muted"], label="module KRR")
    ax.plot(t, results["reuse_accuracy"], "s-", color=PALETTE["module"], label="module accuracy (fine-tuned)")
    ax.axhline(results["accuracy_standard_subtask"], color=PALETTE["model"], lw=1, label="standard model")
    names = ", ".join(results["subtask_names"])
    ax.set(xlabel="threshold θ", ylabel="value", ylim=(0, 1.05), title=f"reuse side: sub-task {names}")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def retention_heatmap(results: Mapping) -> plt.Figure:
    """Layers × classes: the fraction of each layer's kernels in each class's module."""
    return layer_class_heatmap(results["retention_by_layer"], results["class_names"],
                               f"per-layer kernel retention by class (θ = {results['threshold']})")


def subtask_figure(results: Mapping) -> plt.Figure:
    """Per sub-task: accuracy of module / standard / modular model, and module cost ratios."""
    tasks = results["subtasks"]
    labels = ["+".join(t["class_names"]) for t in tasks]
    x = range(len(tasks))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.2))
    w = 0.27
    a1.bar([i - w for i in x], [t["accuracy_module"] for t in tasks], w, color=PALETTE["module"], label="module (fine-tuned)")
    a1.bar(list(x), [t["accuracy_standard"] for t in tasks], w, color=PALETTE["model"], label="standard model")
    a1.bar([i + w for i in x], [t["accuracy_modular"] for t in tasks], w, color=PALETTE["accent"], label="modular model")
    a1.set_xticks(list(x), labels, rotation=20, ha="right", fontsize=8)
    a1.set(ylabel="sub-task test accuracy", ylim=(0, 1.05), title="accuracy")
    a1.legend(fontsize=8, loc="lower right")
    a2.bar([i - w for i in x], [t["krr"] for t in tasks], w, color=PALETTE["muted"], label="KRR")
    a2.bar(list(x), [t["macs_ratio"] for t in tasks], w, color=PALETTE["module"], label="MACs ratio")
    a2.bar([i + w for i in x], [t["latency_ratio"] for t in tasks], w, color="#c44e52", label="latency ratio (batch 64)")
    a2.set_xticks(list(x), labels, rotation=20, ha="right", fontsize=8)
    a2.set(ylabel="module / standard model", ylim=(0, 1.2), title="size and cost")
    a2.legend(fontsize=8)
    fig.tight_layout()
    return fig
