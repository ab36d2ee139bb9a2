"""The performance report: every benchmark's measured ratio beside the target its issue states.

:func:`build_summary` reads the per-approach files of ``runs/bench/`` (``extract.json``,
``mwt.json``, ``gradsplitter.json``, ``cnnsplitter.json``, ``seam.json``) and writes
``summary.json``: one row per target with the measured value, the target, whether it is met, and
the file it came from. A ratio that misses its target is flagged (``"meets": false``), and a
benchmark that has not run is listed as missing; nothing is left out. :func:`summary_figure`
draws each ratio against its target.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .io import atomic_write_json, read_json


@dataclass(frozen=True)
class Target:
    benchmark: str           # the file stem under runs/bench/
    measure: str
    value: Callable[[dict], float | None]
    op: str                  # "<=" | ">="
    target: float

    def meets(self, v: float) -> bool:
        return v <= self.target if self.op == "<=" else v >= self.target


def _worst(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return max(vals) if vals else None


TARGETS: tuple[Target, ...] = (
    Target("extract", "extracted-module latency / MAC ratio, batch 64 (worst module)",
           lambda r: _worst(r["rows"], "latency_over_macs_b64"), "<=", 1.25),
    Target("extract", "share of modules whose latency is within 1.25x of their MAC ratio",
           lambda r: r["share_meeting_target"], ">=", 1.0),
    Target("mwt", "MwT modular training step / standard step", lambda r: r["step_ratio"], "<=", 1.10),
    Target("gradsplitter", "GradSplitter cached head phases / the original's backprop ones (whole search)",
           lambda r: r.get("caching_time_ratio"), "<=", 0.75),
    Target("gradsplitter", "GradSplitter fast schedule steps / paper schedule steps",
           lambda r: (r.get("fast_vs_paper") or {}).get("steps_ratio"), "<=", 1 / 3),
    Target("cnnsplitter", "CNNSplitter candidates per second / the original's",
           lambda r: r["speedup_vs_original"], ">=", 3.0),
    Target("seam", "SeaM re-engineering step / plain training step (worst model)",
           lambda r: _worst(r["rows"], "step_ratio"), "<=", 1.0),
)


def build_summary(bench_dir: str | os.PathLike = "runs/bench", write: bool = True) -> dict:
    """The summary of the benchmark files in ``bench_dir`` (written as ``summary.json`` unless ``write`` is false)."""
    bench_dir = Path(bench_dir)
    rows: list[dict[str, Any]] = []
    for t in TARGETS:
        path = bench_dir / f"{t.benchmark}.json"
        row = {"benchmark": t.benchmark, "measure": t.measure, "op": t.op, "target": t.target,
               "file": str(path), "value": None, "meets": False, "status": "missing"}
        if path.is_file():
            try:
                results = read_json(path)
                value = t.value(results)
            except (KeyError, TypeError, ValueError) as exc:
                row.update(status=f"unreadable: {type(exc).__name__}: {exc}")
            else:
                if value is None:
                    row.update(status="not measured in this run")
                else:
                    meets = t.meets(float(value))
                    row.update(value=float(value), meets=meets, status="ok" if meets else "MISSES TARGET",
                               profile=results.get("profile", "full"))
        rows.append(row)
    summary = {"rows": rows, "met": sum(r["meets"] for r in rows), "targets": len(rows),
               "missing": [r["measure"] for r in rows if r["value"] is None],
               "flagged": [r["measure"] for r in rows if r["value"] is not None and not r["meets"]]}
    if write:
        atomic_write_json(bench_dir / "summary.json", summary)
    return summary


def summary_figure(summary: dict):
    """Each measured ratio against its target (log scale): green meets, red misses, grey not run."""
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    fig, ax = plt.subplots(figsize=(8.5, 0.55 * len(rows) + 1.2))
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        ax.plot([r["target"]], [y], marker="|", markersize=18, color="k")
        if r["value"] is None:
            ax.text(r["target"], y + 0.25, "not run", fontsize=7, color="grey", ha="center")
            continue
        color = "#2ca02c" if r["meets"] else "#d62728"
        ax.plot([r["value"]], [y], "o", color=color)
        ax.annotate("", xy=(r["value"], y), xytext=(r["target"], y),
                    arrowprops={"arrowstyle": "-", "color": color, "alpha": 0.5})
        ax.text(r["value"], y + 0.22, f"{r['value']:.2f}", fontsize=7, color=color, ha="center")
    ax.set_yticks(range(len(rows)), [f"{r['measure']} ({r['op']} {r['target']:.2f})" for r in reversed(rows)],
                  fontsize=7)
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator([0.1, 0.25, 0.5, 1, 2, 4, 8]))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("measured ratio (| = target)")
    ax.set_title(f"benchmarks: {summary['met']} of {summary['targets']} targets met")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig
