"""CNNSplitter's figures: kernel importance, layer sensitivity, the search, the modules, and patching.

Like :mod:`modtools.plots`, these read results dicts and never train.
"""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np

from .plots import PALETTE

#: The paper's summary of patching (CNNSplitter abstract, averaged over 2 CNNs × 3 data sets) and the
#: GradSplitter paper's F1 gain; the repository holds no per-table numbers (spec §7).
PUBLISHED_PATCHING = [
    ("CNNSplitter", "TC precision", 12.54), ("CNNSplitter", "TC recall", 2.14),
    ("CNNSplitter", "non-TC accuracy", 1.18), ("GradSplitter", "TC F1", 11.47),
]


def importance_figure(results: Mapping) -> plt.Figure:
    """Classes × kernels heat map of each layer's importance, normalised per layer (one panel per layer)."""
    imp = results["importance"]
    names = list(imp)
    fig, axes = plt.subplots(1, len(names), figsize=(min(2 + 1.2 * len(names), 16), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        a = np.asarray(imp[name], dtype=float)
        a = a / max(a.max(), 1e-12)
        ax.imshow(a, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks(range(len(a)) if ax is axes[0][0] else [])
        if ax is axes[0][0]:
            ax.set_yticklabels(results.get("class_names", range(len(a))), fontsize=6)
    fig.suptitle("kernel importance per class (mean activation on confident samples; per layer, 1 = its largest)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def sensitivity_figure(results: Mapping) -> plt.Figure:
    """Composed validation accuracy with only one segment pruned, per ratio; the chosen smallest ratio marked."""
    sens = results["sensitivity"]
    fig, ax = plt.subplots(figsize=(7.5, 4))
    if not sens:
        ax.text(0.5, 0.5, "ratios given by hand: no sensitivity pass", ha="center", va="center")
        ax.set_axis_off()
        return fig
    cmap = plt.get_cmap("viridis")
    names = list(sens["curves"])
    for i, name in enumerate(names):
        color = cmap(i / max(1, len(names) - 1))
        ax.plot(sens["grid"], sens["curves"][name], "o-", ms=3, color=color, label=name)
        r0 = min(results["ratios"][name])
        ax.plot([r0], [sens["curves"][name][sens["grid"].index(r0)] if r0 in sens["grid"] else sens["unpruned"]],
                "*", ms=11, color=color, mec="black", mew=0.5)
    ax.axhline(sens["unpruned"], color=PALETTE["model"], lw=1, label="no segment pruned")
    ax.axhline(sens["unpruned"] - results["config"]["sensitivity_tolerance"], color=PALETTE["muted"], ls=":", lw=1,
               label="tolerance")
    ax.set(xlabel="share of the segment's kernels kept (most important first)", ylabel="composed validation accuracy",
           title="layer sensitivity (★: smallest initial ratio chosen by the rule)")
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    fig.tight_layout()
    return fig


def search_figure(results: Mapping) -> plt.Figure:
    """Per generation: the best fitness, the best ensemble's accuracy on the search images (and on the
    held-out selection images, when the search had them) and its kept-kernel rate."""
    hist = results["history"]
    g = [h["generation"] for h in hist]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(g, results["best_fitness"], "o-", color=PALETTE["accent"], ms=3, label="best fitness (co-operative)")
    ax.plot(g, [h["ensemble_accuracy"] for h in hist], "s-", color=PALETTE["module"], ms=3,
            label="best ensemble, accuracy on the search images")
    if all("selection_accuracy" in h for h in hist):
        ax.plot(g, [h["selection_accuracy"] for h in hist], "D-", color=PALETTE["model"], ms=3,
                label="best ensemble, accuracy on the held-out selection images")
    ax.plot(g, [h["krr"] for h in hist], "^-", color=PALETTE["muted"], ms=3, label="best ensemble, kept-kernel rate")
    ax.axvline(results["best_generation"], color=PALETTE["model"], ls=":", label=f"selected generation {results['best_generation']}")
    ax.set(xlabel="generation", ylabel="value", ylim=(0, 1.05), title="genetic search")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def modules_figure(results: Mapping) -> plt.Figure:
    """Per module: its kept-kernel rate and MACs ratio; the title compares the composed modules with the model."""
    names = results["class_names"]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.bar(x - 0.2, results["krr_per_module"], 0.4, color=PALETTE["module"], label="kept-kernel rate")
    ax.bar(x + 0.2, results["macs_ratio_per_module"], 0.4, color=PALETTE["muted"], label="MACs, module / model")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.05), title=f"modules: model test accuracy {results['accuracy_model']:.1%}, "
                                 f"composed modules {results['accuracy_composed_modules']:.1%}")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def patching_figure(results: Mapping) -> plt.Figure:
    """Grouped bars: target-class precision, recall and F1 before and after patching, per weak kind,
    target class and module approach; the other classes' accuracy change below."""
    rows = results["patches"]
    labels = [f"{r['weak_kind']}\n{r['target_name']}\n{r['module_approach']}" for r in rows]
    x = np.arange(len(rows))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(7, 0.9 * len(rows) + 2), 6.2), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1.2]})
    colors = {"precision": PALETTE["model"], "recall": PALETTE["module"], "f1": PALETTE["accent"]}
    for i, key in enumerate(("precision", "recall", "f1")):
        off = (i - 1) * 0.27
        top.bar(x + off, [r[f"{key}_before"] for r in rows], 0.27, color=colors[key], alpha=0.35)
        top.bar(x + off, [r[f"{key}_after"] for r in rows], 0.12, color=colors[key], label=f"{key} (thin: after)")
    top.set(ylim=(0, 1.22), ylabel="target class", title="patching weak models: before (wide, pale) and after (thin)")
    top.legend(fontsize=7, loc="upper center", ncol=3)
    delta = [100 * (r["other_accuracy_after"] - r["other_accuracy_before"]) for r in rows]
    bottom.bar(x, delta, 0.5, color=[PALETTE["module"] if d >= 0 else PALETTE["accent"] for d in delta])
    bottom.axhline(0, color="black", lw=0.8)
    bottom.set(ylabel="other classes\nΔ accuracy (pt)")
    bottom.set_xticks(x, labels, fontsize=7)
    fig.tight_layout()
    return fig


def published_patching_figure(results: Mapping) -> plt.Figure:
    """The published average gains next to this run's averages, per module approach."""
    rows = results["patches"]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    items = [(f"paper: {a}\n{m}", v, PALETTE["muted"]) for a, m, v in PUBLISHED_PATCHING]
    for approach in sorted({r["module_approach"] for r in rows}):
        mine = [r for r in rows if r["module_approach"] == approach]
        for metric, key in (("TC precision", "precision"), ("TC recall", "recall"), ("TC F1", "f1")):
            v = 100 * float(np.mean([r[f"{key}_after"] - r[f"{key}_before"] for r in mine]))
            items.append((f"here: {approach}\n{metric}", v, PALETTE["module"]))
        v = 100 * float(np.mean([r["other_accuracy_after"] - r["other_accuracy_before"] for r in mine]))
        items.append((f"here: {approach}\nnon-TC accuracy", v, PALETTE["module"]))
    ax.bar(range(len(items)), [v for _, v, _ in items], color=[c for _, _, c in items])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(items)), [n for n, _, _ in items], fontsize=6, rotation=45, ha="right")
    ax.set(ylabel="mean gain (pt)", title="patching: published averages (grey) and this run (blue)")
    fig.tight_layout()
    return fig
