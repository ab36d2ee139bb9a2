"""Parameter sweeps: run a notebook over a grid of parameter values, in parallel, with dask.distributed.

``python -m modtools sweep NOTEBOOK -p NAME V1,V2,… [-p …] [--jobs N] [--scheduler ADDRESS]``

* The grid is the product of every ``-p`` list. Every point is checked as ``run`` checks one
  (names, types, ranges) before anything starts.
* Each run goes into ``runs/<notebook>/sweep-<id>/run-<k>/`` (executed notebook, ``results.json``,
  its own ``figures/``); ``<id>`` is a hash of the notebook, profile and grid, so the same sweep
  writes into the same folder. ``sweep.csv`` gathers every run's parameters and scalar metrics,
  rewritten (atomically) as runs finish; a failed run is a row with its status and the failing
  cell, and the other runs go on.
* Shared cached models are trained once: the sweep's folder links to the model cache
  (``runs/models``), and the first point runs alone before the others run in parallel, so models
  that all points share exist before the parallel runs start.
* Runs execute on a ``dask.distributed`` ``LocalCluster`` (``--jobs`` workers, one thread each,
  and the CPU threads divided between them), or on the cluster whose scheduler is at
  ``--scheduler`` (for Slurm or PBS, start one with dask-jobqueue; its workers need this
  repository and ``runs/`` on a shared file system).
"""
from __future__ import annotations

import csv
import io
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import ParameterError
from .io import atomic_write_bytes, atomic_write_json, config_hash, read_json
from .runner import NotebookFailed, parse_value, repo_root, resolve_parameters, run_notebook

RESERVED = ("run", "status", "seconds", "error")


def split_values(text: str) -> list[Any]:
    """``"0.5,0.9"`` → ``[0.5, 0.9]``; commas inside brackets or quotes do not split (``"[1,2],[3]"``)."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    values = [parse_value(p.strip()) for p in parts if p.strip()]
    if not values:
        raise ParameterError(f"no values in {text!r}; give them comma-separated, e.g. 0.5,0.9")
    return values


def grid(values: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the values, in the order given (the last name varies fastest)."""
    names = list(values)
    return [dict(zip(names, combo)) for combo in itertools.product(*(values[n] for n in names))]


def _scalars(results: Mapping[str, Any]) -> dict[str, Any]:
    skip = {"notebook", "profile", "parameters", "seed", "device", "versions", "metrics"}
    return {k: v for k, v in results.items() if k not in skip and isinstance(v, (int, float, bool))}


def run_point(notebook: str, profile: str, overrides: dict, run_dir: str, threads: int | None = None,
              timeout: int | None = None) -> dict:
    """Run one grid point (in a dask worker or here); never raises for a failing notebook."""
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)   # the notebook's kernel inherits these
    t0 = time.perf_counter()
    try:
        result = run_notebook(notebook, profile, overrides, run_dir=run_dir, figures_dir=Path(run_dir) / "figures",
                              timeout=timeout)
    except NotebookFailed as exc:
        return {"status": "failed", "seconds": time.perf_counter() - t0, "error": str(exc), "metrics": {}}
    except Exception as exc:  # noqa: BLE001 - a run's failure is recorded, the sweep goes on
        return {"status": "failed", "seconds": time.perf_counter() - t0, "error": f"{type(exc).__name__}: {exc}",
                "metrics": {}}
    return {"status": "done", "seconds": result.seconds, "error": "", "metrics": _scalars(result.results)}


@dataclass
class SweepResult:
    folder: Path
    csv: Path
    rows: list[dict]

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] != "done"]


def _write_csv(path: Path, names: list[str], rows: list[dict]) -> None:
    metrics = sorted({k for r in rows for k in r.get("metrics", {})} - set(names) - set(RESERVED))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["run", "status", "seconds", *names, *metrics, "error"])
    w.writeheader()
    for r in sorted(rows, key=lambda r: r["run"]):
        w.writerow({"run": r["run"], "status": r["status"], "seconds": round(r["seconds"], 2),
                    **{n: r["parameters"][n] for n in names}, **{m: r["metrics"].get(m, "") for m in metrics},
                    "error": r["error"]})
    atomic_write_bytes(path, buf.getvalue().encode())


def sweep(notebook: str, values: Mapping[str, Sequence[Any]], profile: str = "quick", jobs: int | None = None,
          scheduler: str | None = None, runs_root: str | os.PathLike | None = None, warmup: bool = True,
          timeout: int | None = None, progress: bool = True) -> SweepResult:
    """Run ``notebook`` over the grid of ``values``; see the module docstring.

    Raises (before anything starts):
        UnknownNameError: an unknown notebook, profile or parameter name.
        ParameterError: a value of the wrong type or out of range, at any grid point.
    """
    stem = Path(notebook).stem
    if not values:
        raise ParameterError("a sweep needs at least one parameter: -p NAME V1,V2")
    points = grid(values)
    for p in points:
        resolve_parameters(stem, profile, p)
    names = list(values)
    sweep_id = config_hash({"notebook": stem, "profile": profile, "grid": points}, 10)
    root = Path(runs_root) if runs_root else repo_root() / "runs"
    folder = root / stem / f"sweep-{sweep_id}"
    folder.mkdir(parents=True, exist_ok=True)
    cache = root / "models"
    cache.mkdir(parents=True, exist_ok=True)
    link = folder / "models"           # the notebooks cache models in run_dir/../models: share the main cache
    if not link.exists():
        link.symlink_to(os.path.relpath(cache, folder))
    atomic_write_json(folder / "sweep.json", {"notebook": stem, "profile": profile, "values": dict(values),
                                              "points": points, "scheduler": scheduler or "LocalCluster"})
    csv_path = folder / "sweep.csv"
    rows: list[dict] = []

    def record(k: int, out: dict) -> None:
        rows.append({"run": f"run-{k:03d}", "parameters": points[k], **out})
        _write_csv(csv_path, names, rows)
        if progress:
            print(f"{stem} run-{k:03d} {points[k]}: {out['status']} in {out['seconds']:.0f} s"
                  + (f" ({out['error'][:200]})" if out["error"] else ""), flush=True)

    todo = list(range(len(points)))
    if warmup and len(points) > 1:
        k = todo.pop(0)
        record(k, run_point(stem, profile, points[k], str(folder / f"run-{k:03d}"), timeout=timeout))
    if todo:
        _run_parallel(stem, profile, points, todo, folder, jobs, scheduler, timeout, record)
    return SweepResult(folder, csv_path, sorted(rows, key=lambda r: r["run"]))


def _run_parallel(stem, profile, points, todo, folder, jobs, scheduler, timeout, record) -> None:
    from dask.distributed import Client, LocalCluster, as_completed

    cores = os.cpu_count() or 1
    if scheduler:
        client, cluster, threads = Client(scheduler), None, None
    else:
        n = max(1, min(jobs or cores, len(todo)))
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=40)
        client, threads = Client(cluster), max(1, cores // n)
    try:
        futures = {client.submit(run_point, stem, profile, points[k], str(folder / f"run-{k:03d}"), threads, timeout,
                                 pure=False, key=f"{folder.name}-run-{k:03d}-{time.time_ns()}"): k for k in todo}
        for fut in as_completed(futures):
            k = futures[fut]
            try:
                out = fut.result()
            except Exception as exc:  # noqa: BLE001 - a lost worker fails its run only
                out = {"status": "failed", "seconds": 0.0, "error": f"{type(exc).__name__}: {exc}", "metrics": {}}
            record(k, out)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def read_sweep(folder: str | os.PathLike) -> list[dict]:
    """The rows of a sweep's ``sweep.csv``."""
    with open(Path(folder) / "sweep.csv", newline="") as f:
        return list(csv.DictReader(f))


def sweep_plan(folder: str | os.PathLike) -> dict:
    return read_json(Path(folder) / "sweep.json")
