"""Run the notebooks headlessly with papermill, under a profile, and collect their results.

* Notebooks live in ``notebooks/NN_name.ipynb``; each has one cell tagged ``parameters``.
* A *profile* (``smoke`` for tests, ``quick`` for a CPU in minutes, ``paper`` for the published
  settings on a GPU) is a set of parameter values per notebook (:mod:`modtools.profiles`); the
  notebook's own defaults are its ``quick`` values. ``-p NAME VALUE`` overrides come last.
* Unknown parameter names are rejected *before* a kernel starts (papermill only warns).
* Each run writes ``runs/<notebook>/<notebook>.ipynb`` (executed) and ``runs/<notebook>/results.json``
  (notebook, profile, parameters, seed, device, wall seconds, package versions, and the
  notebook's metrics), and its figures as ``figures/<notebook>_*.png``.
"""
from __future__ import annotations

import ast
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .allocator import tuned_environment
from .errors import UnknownNameError
from .io import atomic_write_json, read_json

PROFILES = ("smoke", "quick", "paper")
RUN_KEYS = ("notebook", "profile", "parameters", "seed", "device", "compute_precision", "wall_seconds", "versions",
            "metrics")


def repo_root() -> Path:
    """The folder holding ``notebooks/`` (the repository root): ``$MODTOOLS_ROOT`` or the package's parent."""
    env = os.environ.get("MODTOOLS_ROOT")
    return Path(env) if env else Path(__file__).resolve().parent.parent


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def list_notebooks() -> list[str]:
    """Names of the runnable notebooks, in reading order."""
    return sorted(p.stem for p in notebooks_dir().glob("[0-9][0-9]_*.ipynb"))


def notebook_path(name: str) -> Path:
    stem = Path(name).stem
    path = notebooks_dir() / f"{stem}.ipynb"
    if not path.is_file():
        raise UnknownNameError(f"unknown notebook {name!r}; available: {', '.join(list_notebooks())}")
    return path


def notebook_parameters(name: str) -> dict[str, dict]:
    """The parameters cell of a notebook: ``{name: {"default": ..., "type": ..., "help": ...}}``."""
    import papermill

    params = papermill.inspect_notebook(str(notebook_path(name)))
    out = {}
    for key, info in params.items():
        try:
            default = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            default = info["default"]
        out[key] = {"default": default, "type": info.get("inferred_type_name", ""), "help": info.get("help", "")}
    return out


def parse_value(text: str) -> Any:
    """A ``-p`` value: a Python literal when it parses as one (``3``, ``0.5``, ``[1, 2]``, ``True``), else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def resolve_parameters(name: str, profile: str = "quick", overrides: Mapping[str, Any] | None = None,
                       run_dir: str | os.PathLike | None = None,
                       figures_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The parameters a run injects: profile values, then overrides, then the output folders.

    Raises:
        UnknownNameError: unknown profile, or parameter names the notebook does not declare
            (the message lists the allowed names).
        ParameterError: values of the wrong type or out of range (:mod:`modtools.checks`).
    """
    from .checks import check_values
    from .profiles import profile_parameters

    if profile not in PROFILES:
        raise UnknownNameError(f"unknown profile {profile!r}; available: {', '.join(PROFILES)}")
    allowed = notebook_parameters(name)
    params: dict[str, Any] = dict(profile_parameters(Path(name).stem, profile))
    params.update(overrides or {})
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise UnknownNameError(f"notebook {Path(name).stem} has no parameter(s) {', '.join(unknown)}; "
                               f"allowed: {', '.join(allowed)}")
    stem = Path(name).stem
    check_values(stem, params, allowed)
    if "profile" in allowed:
        params["profile"] = profile
    if "run_dir" in allowed:
        params["run_dir"] = str(Path(run_dir).resolve()) if run_dir else str((repo_root() / "runs" / stem).resolve())
    if "figures_dir" in allowed:
        params["figures_dir"] = str(Path(figures_dir).resolve()) if figures_dir else str((repo_root() / "figures").resolve())
    return params


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the failing cell."""


@dataclass
class RunResult:
    notebook: str
    output: Path
    results: dict
    seconds: float


@contextmanager
def kernel_environment():
    """Within the block, ``os.environ`` has the allocator settings of :mod:`modtools.allocator` (where
    unset), so that a kernel started there reads them when it starts; restored afterwards."""
    added = {k: v for k, v in tuned_environment().items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def run_notebook(name: str, profile: str = "quick", overrides: Mapping[str, Any] | None = None,
                 run_dir: str | os.PathLike | None = None, figures_dir: str | os.PathLike | None = None,
                 timeout: int | None = None, log_output: bool = False) -> RunResult:
    """Execute one notebook with papermill and complete its ``results.json``."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    stem = Path(name).stem
    path = notebook_path(stem)
    params = resolve_parameters(stem, profile, overrides, run_dir, figures_dir)
    out_dir = Path(params.get("run_dir") or (repo_root() / "runs" / stem))
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{stem}.ipynb"
    results_path = out_dir / "results.json"
    if results_path.exists():
        results_path.unlink()
    t0 = time.perf_counter()
    try:
        with kernel_environment():
            papermill.execute_notebook(str(path), str(output), parameters=params, kernel_name="python3",
                                       cwd=str(path.parent), progress_bar=False, log_output=log_output,
                                       execution_timeout=timeout)
    except PapermillExecutionError as exc:
        first = (exc.source or "").strip().splitlines()
        raise NotebookFailed(f"notebook {stem} failed in cell {exc.cell_index} (execution count {exc.exec_count}, "
                             f"starting {first[0][:80] if first else ''!r}): {exc.ename}: {exc.evalue}. "
                             f"The partial notebook is {output}") from None
    seconds = time.perf_counter() - t0
    if not results_path.is_file():
        raise NotebookFailed(f"notebook {stem} ran but wrote no {results_path}; it must call "
                             "modtools.runner.write_results(run_dir, ...)")
    results = read_json(results_path)
    results.update({"profile": profile, "wall_seconds": seconds})
    atomic_write_json(results_path, results)
    return RunResult(stem, output, results, seconds)


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("modtools", "torch", "torchvision", "torch-pruning", "numpy", "papermill", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def current_parameters(namespace: Mapping[str, Any], notebook: str) -> dict[str, Any]:
    """The values the notebook's parameters have now (read the names from its parameters cell)."""
    return {k: namespace[k] for k in notebook_parameters(notebook) if k in namespace}


def config_from(cls, params: Mapping[str, Any], **overrides):
    """Build an approach's config dataclass from a notebook's parameters (same field names)."""
    from dataclasses import fields

    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in {**params, **overrides}.items() if k in names})


def write_results(run_dir: str | os.PathLike, notebook: str, parameters: Mapping[str, Any],
                  metrics: Mapping[str, Any], device: str = "cpu", seed: int | None = None) -> Path:
    """Called by a notebook: write ``results.json`` with the run's context and the notebook's metrics.

    Metrics appear at the top level (e.g. ``results["accuracy_model"]``) and their names are
    listed under ``"metrics"``. Accuracies and rates are fractions; times are seconds. With a
    ``precision`` parameter, ``compute_precision`` says what it meant on the device (fp32 or bf16).
    """
    clash = sorted(set(metrics) & set(RUN_KEYS))
    if clash:
        raise ValueError(f"metric names {clash} are reserved for the run's context; reserved: {RUN_KEYS}")
    params = {k: v for k, v in parameters.items() if k not in ("run_dir", "figures_dir")}
    results = {"notebook": notebook, "profile": parameters.get("profile", "quick"), "parameters": params,
               "seed": seed if seed is not None else parameters.get("seed"), "device": str(device),
               "wall_seconds": None, "versions": package_versions(), "metrics": sorted(metrics)}
    if "precision" in parameters:   # what the notebook's precision meant on this device (modtools.precision)
        from .precision import resolved
        results["compute_precision"] = resolved(parameters["precision"], str(device).split(":")[0])
    results.update(metrics)
    return atomic_write_json(Path(run_dir) / "results.json", results)
