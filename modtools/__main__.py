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
    failed = []
    for name in list_notebooks():
        try:
            result = run_notebook(name, args.profile, timeout=args.timeout)
            print(f"{name}: done in {result.seconds:.1f} s", flush=True)
        except NotebookFailed as exc:
            print(f"FAILED {exc}", file=sys.stderr, flush=True)
            failed.append(name)
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


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
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UnknownNameError, ParameterError, NotebookFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, NotebookFailed) else 2


if __name__ == "__main__":
    sys.exit(main())
