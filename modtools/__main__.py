"""``python -m modtools``: list the notebooks, run one, or run them all under a profile."""
from __future__ import annotations

import argparse
import sys

from .errors import ParameterError, UnknownNameError
from .runner import PROFILES, NotebookFailed, list_notebooks, notebook_parameters, parse_value, run_notebook


def _cmd_list(args) -> int:
    for name in list_notebooks():
        print(name)
        for key, info in notebook_parameters(name).items():
            note = f"  # {info['help']}" if info["help"] else ""
            print(f"    {key} = {info['default']!r}{note}")
    return 0


def _cmd_run(args) -> int:
    overrides = {k: parse_value(v) for k, v in (args.param or [])}
    result = run_notebook(args.notebook, args.profile, overrides, run_dir=args.run_dir, figures_dir=args.figures_dir,
                          timeout=args.timeout, log_output=args.log_output)
    print(f"{result.notebook}: done in {result.seconds:.1f} s -> {result.output.parent / 'results.json'}")
    return 0


def _cmd_run_all(args) -> int:
    import time

    from .io import atomic_write_json
    from .runner import repo_root
    from .summary import write_figures_readme

    failed, timings = [], {}
    for name in list_notebooks():
        t0 = time.perf_counter()
        try:
            result = run_notebook(name, args.profile, timeout=args.timeout)
            print(f"{name}: done in {result.seconds:.1f} s", flush=True)
        except NotebookFailed as exc:
            print(f"FAILED {exc}", file=sys.stderr, flush=True)
            failed.append(name)
        timings[name] = time.perf_counter() - t0
    runs, figures = repo_root() / "runs", repo_root() / "figures"
    atomic_write_json(runs / "run-all.json", {"profile": args.profile, "seconds": timings, "failed": failed,
                                              "total_seconds": sum(timings.values())})
    summary = write_figures_readme(figures, runs, args.profile, timings, failed)
    print(f"all notebooks: {sum(timings.values()) / 60:.1f} min; summary {summary}", flush=True)
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _cmd_sweep(args) -> int:
    from .sweep import split_values, sweep

    values = {}
    for name, text in args.param or []:
        if name in values:
            raise ParameterError(f"parameter {name!r} is given twice; give its values once, comma-separated")
        values[name] = split_values(text)
    result = sweep(args.notebook, values, args.profile, jobs=args.jobs, scheduler=args.scheduler,
                   timeout=args.timeout)
    print(f"{len(result.rows)} run(s), {len(result.failed)} failed -> {result.csv}")
    return 1 if result.failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modtools", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="notebooks and their parameters").set_defaults(func=_cmd_list)
    run = sub.add_parser("run", help="run one notebook with papermill")
    run.add_argument("notebook")
    run.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                     help="override a parameter (a Python literal or a string)")
    run.add_argument("--profile", default="quick", choices=PROFILES)
    run.add_argument("--run-dir", default=None, help="where the executed notebook and results.json go")
    run.add_argument("--figures-dir", default=None, help="where the figures go (default figures/)")
    run.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    run.add_argument("--log-output", action="store_true", help="stream the notebook's output")
    run.set_defaults(func=_cmd_run)
    run_all = sub.add_parser("run-all", help="run every notebook in order")
    run_all.add_argument("--profile", default="quick", choices=PROFILES)
    run_all.add_argument("--timeout", type=int, default=None)
    run_all.set_defaults(func=_cmd_run_all)
    sw = sub.add_parser("sweep", help="run a notebook over a grid of parameter values, in parallel (dask)")
    sw.add_argument("notebook")
    sw.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "V1,V2,..."), required=True,
                    help="a parameter and its comma-separated values (Python literals or strings)")
    sw.add_argument("--profile", default="quick", choices=PROFILES)
    sw.add_argument("--jobs", type=int, default=None, help="parallel runs on a LocalCluster (default: CPU cores)")
    sw.add_argument("--scheduler", default=None, help="address of a running dask scheduler (e.g. from dask-jobqueue)")
    sw.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    sw.set_defaults(func=_cmd_sweep)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UnknownNameError, ParameterError, NotebookFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, NotebookFailed) else 2


if __name__ == "__main__":
    sys.exit(main())
