"""Figure functions. They read results (the dicts notebooks write to ``results.json``), never train.

Each returns a matplotlib ``Figure``; :func:`save_figure` writes it as
``<figures_dir>/<notebook>_<name>.png`` atomically.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt

from .io import atomic_write_bytes

PALETTE = {"model": "#4c72b0", "module": "#dd8452", "accent": "#55a868", "muted": "#8c8c8c"}


def save_figure(fig, figures_dir: str | os.PathLike, notebook: str, name: str, dpi: int = 120) -> Path:
    """Save ``fig`` as ``<figures_dir>/<notebook>_<name>.png`` (atomically) and return the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(Path(figures_dir) / f"{notebook}_{name}.png", buf.getvalue())


def per_class_bars(ax, per_class: Sequence[Mapping], title: str = "", key: str = "recall") -> None:
    names = [c["name"] for c in per_class]
    values = [c[key] for c in per_class]
    ax.bar(range(len(values)), values, color=PALETTE["model"])
    ax.set_xticks(range(len(values)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"per-class {'accuracy' if key == 'recall' else key}")
    ax.set_title(title, fontsize=10)


def quickstart_figure(results: Mapping) -> plt.Figure:
    """Full model per class; module accuracy and MACs against the kept fraction; module vs model."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1.2, 1, 1.1]})
    per_class_bars(axes[0], results["per_class_model"],
                   f"{results['arch']} on {results['dataset']}: test accuracy {results['accuracy_model']:.1%}")

    ax = axes[1]
    sweep = results["sweep"]
    keep = [row["keep_fraction"] for row in sweep]
    ax.plot(keep, [row["accuracy_module"] for row in sweep], "o-", color=PALETTE["module"], label="module accuracy")
    ax.plot(keep, [row["macs_ratio"] for row in sweep], "s--", color=PALETTE["muted"], label="module MACs / model MACs")
    ax.axhline(results["accuracy_model_on_task"], color=PALETTE["model"], lw=1, label="full model on the same task")
    ax.axvline(results["keep_fraction"], color=PALETTE["accent"], lw=1, ls=":", label="module kept below")
    ax.set_xlabel("kernels kept per layer (fraction)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"one-class module for '{results['target_name']}' (class vs rest)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")

    ax = axes[2]
    cmp = results["comparison"]
    rows = [("parameters", "params"), ("MACs", "macs"), ("latency, batch 64", "latency_b64"),
            ("latency, batch 1", "latency_b1"), ("task accuracy", "accuracy")]
    y = range(len(rows))
    ratios = [cmp["module"][k] / cmp["model"][k] if cmp["model"][k] else 0 for _, k in rows]
    ax.barh(list(y), [1] * len(rows), color=PALETTE["model"], alpha=0.25, label="full model = 100%")
    ax.barh(list(y), ratios, color=PALETTE["module"], label="module")
    for i, (label, k) in enumerate(rows):
        ax.text(min(ratios[i], 1.0) + 0.02, i, _fmt(k, cmp["module"][k], cmp["model"][k]), va="center", fontsize=8)
    ax.set_yticks(list(y), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.9)
    ax.set_xlabel("module relative to the full model")
    ax.set_title(f"saved, reloaded module (keep {results['keep_fraction']:.0%})", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    fig.tight_layout()
    return fig


def _fmt(key: str, a: float, b: float) -> str:
    if key == "accuracy":
        return f"{a:.1%} vs {b:.1%}"
    if key.startswith("latency"):
        return f"{a * 1e3:.2f} vs {b * 1e3:.2f} ms"
    if key == "macs":
        return f"{a / 1e6:.1f}M vs {b / 1e6:.1f}M"
    return f"{a / 1e3:.0f}k vs {b / 1e3:.0f}k"


def training_curves_figure(records: Mapping[str, Mapping]) -> plt.Figure:
    """Validation accuracy and training loss per epoch, one line per model."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rec in records.items():
        hist = rec["history"]
        epochs = [h["epoch"] for h in hist]
        a1.plot(epochs, [h["val_accuracy"] for h in hist], "o-", label=name)
        a2.plot(epochs, [h["train_loss"] for h in hist], "o-", label=name)
    a1.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
    a2.set(xlabel="epoch", ylabel="training loss", title="training loss")
    a1.legend(fontsize=8)
    fig.tight_layout()
    return fig


def layer_class_heatmap(per_layer: Mapping[str, Sequence[float]], class_names: Sequence[str], title: str,
                        label: str = "kernels kept") -> plt.Figure:
    """Layers × classes heat map of a fraction per layer and class (e.g. kernels kept by each module)."""
    import seaborn as sns

    layers = list(per_layer)
    fig, ax = plt.subplots(figsize=(1.5 + 0.7 * len(class_names), 1.0 + 0.32 * len(layers)))
    sns.heatmap([list(per_layer[name]) for name in layers], vmin=0, vmax=1, cmap="viridis", ax=ax,
                xticklabels=list(class_names), yticklabels=layers, cbar_kws={"label": label})
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.tight_layout()
    return fig


def per_class_heatmap(per_class: Mapping[str, Sequence[Mapping]], title: str = "per-class test accuracy") -> plt.Figure:
    """Models × classes heat map of per-class accuracy (recall)."""
    import seaborn as sns

    names = list(per_class)
    classes = [c["name"] for c in per_class[names[0]]]
    values = [[c["recall"] for c in per_class[n]] for n in names]
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(classes), 1.2 + 0.5 * len(names)))
    sns.heatmap(values, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", xticklabels=classes,
                yticklabels=names, ax=ax, cbar_kws={"label": "accuracy"})
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    plt.setp(ax.get_yticklabels(), rotation=0)
    fig.tight_layout()
    return fig


def store_figure(rows: Sequence[Mapping], title: str = "modules in the store") -> plt.Figure:
    """Accuracy against MACs of a store's modules (rows of :func:`modtools.store.entries_table` with
    ``accuracy`` and ``MACs``), one colour per approach; modules without an accuracy are left out."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    rows = [r for r in rows if r.get("accuracy") is not None and r.get("MACs")]
    for i, approach in enumerate(sorted({r["approach"] for r in rows})):
        pts = [r for r in rows if r["approach"] == approach]
        ax.scatter([r["MACs"] for r in pts], [r["accuracy"] for r in pts], label=f"{approach} ({len(pts)})",
                   color=plt.cm.tab10(i), alpha=0.8, edgecolor="k", linewidth=0.4)
    if rows:
        ax.set_xscale("log")
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no evaluated module in the store yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("MACs of the extracted module (one image)")
    ax.set_ylabel("accuracy on its task")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def comparison_figure(rows: Sequence[Mapping]) -> plt.Figure:
    """Accuracy on the sub-task against the MACs ratio, one marker per approach, its size the seconds to
    obtain the module; one panel per (architecture, sub-task). Rows without an accuracy are left out."""
    rows = [r for r in rows if r.get("accuracy") is not None]
    panels = sorted({(r["arch"], "+".join(r["class_names"])) for r in rows})
    approaches = sorted({r["approach"] for r in rows})
    markers = dict(zip(approaches, "osD^vP*X"))
    colors = {a: plt.cm.tab10(i) for i, a in enumerate(approaches)}
    ncol = min(len(panels), 2) or 1
    nrow = -(-len(panels) // ncol) or 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.6 * nrow), squeeze=False)
    longest = max((r["seconds_to_module"] or 0 for r in rows), default=1) or 1
    for ax, (arch, task) in zip(axes.flat, panels):
        for r in (r for r in rows if r["arch"] == arch and "+".join(r["class_names"]) == task):
            size = 30 + 400 * (r["seconds_to_module"] or 0) / longest
            ax.scatter(r["macs_ratio"], r["accuracy"], s=size, marker=markers[r["approach"]],
                       color=colors[r["approach"]], alpha=0.75, edgecolor="k", linewidth=0.5)
            ax.annotate(f"{r['seconds_to_module']:.0f} s", (r["macs_ratio"], r["accuracy"]), fontsize=6,
                        xytext=(4, -9), textcoords="offset points")
        std = [r["accuracy_standard"] for r in rows if r["arch"] == arch and "+".join(r["class_names"]) == task]
        if std:
            ax.axhline(std[0], color="grey", ls="--", lw=0.8)
            ax.scatter([1.0], [std[0]], marker="|", s=200, color="grey")
        ax.set_title(f"{arch}: {task}", fontsize=9)
        ax.set_xlabel("MACs, module / model")
        ax.set_ylabel("accuracy on the sub-task")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], marker=markers[a], color=colors[a], ls="", markeredgecolor="k") for a in approaches]
    fig.legend(handles + [plt.Line2D([], [], color="grey", ls="--")], approaches + ["standard model"],
               loc="upper center", ncol=len(approaches) + 1, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig
