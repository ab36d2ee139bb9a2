"""GradSplitter's figures: the search history, kept kernels per layer and module, module quality.

Like :mod:`modtools.plots`, these read results dicts and never train.
"""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt

from .plots import PALETTE, layer_class_heatmap


def search_figure(results: Mapping) -> plt.Figure:
    """Per epoch: composed validation accuracy and mean kept-kernel rate, phases shaded, selection marked."""
    hist = results["history"]
    epochs = [h["epoch"] for h in hist]
    fig, ax = plt.subplots(figsize=(7, 4))
    for h in hist:
        if h["phase"] == "head":
            ax.axvspan(h["epoch"] - 0.5, h["epoch"] + 0.5, color="#eeeeee", lw=0)
    ax.plot(epochs, [h["val_accuracy"] for h in hist], "o-", color=PALETTE["module"], label="composed modules, validation accuracy")
    ax.plot(epochs, [h["krr"] for h in hist], "s-", color=PALETTE["muted"], label="mean kept-kernel rate")
    ax.axhline(results["model_val_accuracy"], color=PALETTE["model"], lw=1, label="model, validation accuracy")
    ax.axvline(results["selected_epoch"], color=PALETTE["accent"], ls=":",
               label=f"one epoch for all (published rule): {results['selected_epoch']}")
    chosen = results.get("selected_epochs") or []
    if len(set(chosen)) > 1:
        ax.plot(chosen, [1.02] * len(chosen), "v", color=PALETTE["accent"], ms=5, label="each module's own epoch")
        end = max(epochs) + 1
        ax.plot([end], [results["val_accuracy_composed"]], "*", color=PALETTE["module"], ms=12)
        ax.plot([end], [results["krr_mean"]], "*", color=PALETTE["muted"], ms=12,
                label="selected modules (accuracy, KRR)")
    ax.set(xlabel="epoch (grey: head-only phases)", ylabel="value", ylim=(0, 1.06), title="mask search")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def kept_kernels_figure(results: Mapping) -> plt.Figure:
    """Layers × modules heat map of the fraction of kernels each module keeps."""
    return layer_class_heatmap(results["kept_by_layer"], results["class_names"], "kept kernels per layer and module")


def module_quality_figure(results: Mapping) -> plt.Figure:
    """Per class: the module's F1 as a detector (validation) and its kept-kernel rate."""
    mods = results["per_module"]
    x = range(len(mods))
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.bar([i - 0.2 for i in x], [m["f1"] for m in mods], 0.4, color=PALETTE["module"], label="F1 (validation)")
    ax.bar([i + 0.2 for i in x], [m["krr"] for m in mods], 0.4, color=PALETTE["muted"], label="kept-kernel rate")
    ax.set_xticks(list(x), [m["name"] for m in mods], rotation=45, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.05), title=f"modules: model test accuracy {results['accuracy_model']:.1%}, "
                                 f"composed modules {results['accuracy_composed_modules']:.1%}")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def compose_figure(results: Mapping) -> plt.Figure:
    """Test accuracy of each single model, the best of them, and the composed model."""
    singles = results["accuracy_single_models"]
    labels = [f"model {k}" for k in range(len(singles))] + ["composed"]
    values = list(singles) + [results["accuracy_composed"]]
    colors = [PALETTE["model"]] * len(singles) + [PALETTE["module"]]
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(values), 3.8))
    ax.bar(range(len(values)), values, color=colors)
    for i, v in enumerate(values):
        ax.text(i, v + 0.01, f"{v:.1%}", ha="center", fontsize=8)
    ax.set_xticks(range(len(values)), labels)
    low = min(values)
    ax.set(ylim=(max(0.0, low - 0.15), 1.0), ylabel="test accuracy",
           title="single weak models vs modules composed" + (" (calibrated)" if results["calibrated"] else ""))
    fig.tight_layout()
    return fig


def f1_heatmap(results: Mapping) -> plt.Figure:
    """Models × classes heat map of module F1, the chosen module per class outlined."""
    import seaborn as sns
    from matplotlib.patches import Rectangle

    f1 = results["f1"]
    fig, ax = plt.subplots(figsize=(1.5 + 0.8 * len(f1[0]), 1.2 + 0.5 * len(f1)))
    sns.heatmap(f1, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", ax=ax,
                xticklabels=results["class_names"], yticklabels=[f"model {k}" for k in range(len(f1))],
                cbar_kws={"label": "module F1 (evaluation set)"})
    for c, k in enumerate(results["chosen_model_per_class"]):
        ax.add_patch(Rectangle((c, k), 1, 1, fill=False, edgecolor="red", lw=2))
    ax.set_title("module F1 per model and class (red: chosen)")
    ax.set_xticklabels(ax.get_xticklabels(), rotation=45, ha="right")
    ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
    fig.tight_layout()
    return fig


def new_task_figure(results: Mapping) -> plt.Figure:
    """Per new task: accuracy and wall time of the composed model against a model trained from scratch."""
    tasks = results["tasks"]
    labels = [f"task {i + 1}\n({len(t['class_names'])} classes)" for i, t in enumerate(tasks)]
    x = list(range(len(tasks)))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.bar([i - 0.2 for i in x], [t["accuracy_composed"] for t in tasks], 0.4, color=PALETTE["module"],
           label="composed from modules (no training)")
    a1.bar([i + 0.2 for i in x], [t["accuracy_scratch"] for t in tasks], 0.4, color=PALETTE["model"],
           label="trained from scratch")
    a1.set_xticks(x, labels)
    a1.set(ylim=(0, 1.05), ylabel="test accuracy", title=f"new tasks from {' + '.join(results['sources'])}")
    a1.legend(fontsize=8, loc="lower right")
    a2.bar([i - 0.2 for i in x], [t["seconds_composed"] for t in tasks], 0.4, color=PALETTE["module"],
           label="decomposing both sources (shared) + composing")
    a2.bar([i - 0.2 for i in x], [t["seconds_compose_only"] for t in tasks], 0.4, color="#8c4a1f",
           label="composing only")
    a2.bar([i + 0.2 for i in x], [t["seconds_scratch"] for t in tasks], 0.4, color=PALETTE["model"],
           label="training from scratch")
    a2.set_xticks(x, labels)
    a2.set(ylabel="wall seconds", title="time")
    a2.legend(fontsize=8)
    fig.tight_layout()
    return fig
