"""The C allocator's settings for PyTorch on CPU: keep freed memory for reuse instead of returning it.

PyTorch's CPU tensors come from the C library's ``malloc``. With glibc's defaults, a block of more
than 128 KiB is a fresh ``mmap`` that ``free`` hands back to the kernel at once, and the heap is
trimmed as soon as 128 KiB are free at its top. The batched passes of the approaches (ten
GradSplitter modules, a chunk of CNNSplitter candidates, a sensitivity pass: N × B images at
once) allocate and free activations of many megabytes at every layer, so each pass faults every
page in anew and the kernel zeroes it: on this project's 2-core machine a quarter to half of the
CPU time of a CNNSplitter search was system time. Raising the mmap threshold to its maximum (32 MiB
on 64-bit glibc) and the trim threshold to 1 GiB lets freed blocks be reused. Measured on the
quick profile's CNNSplitter search (notebook 20, same results bit for bit): 83 s → 56 s, system time
63 s → 14 s; a GradSplitter search gains a few per cent, a plain training step at batch 64 nothing.
The cost is that a process keeps up to about 1 GiB of freed memory instead of returning it.

* :func:`tuned_environment` gives the ``MALLOC_*`` variables a child process (a notebook's kernel,
  a dashboard job) reads when it starts; :func:`modtools.runner.run_notebook` and the job runner
  pass them on.
* :func:`tune_allocator` applies the same settings to the running process (``mallopt``); the
  benchmarks call it, and an interactive user may.

Variables the user has set are left alone, and ``MODTOOLS_MALLOC=default`` turns all of this off.
Other C libraries (musl, macOS, Windows) are left alone too.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Mapping

#: glibc's variables and their values (bytes): the maximum mmap threshold, a 1 GiB trim threshold,
#: and 64 MiB of padding each time the heap grows
SETTINGS = {"MALLOC_MMAP_THRESHOLD_": 32 * 1024 * 1024, "MALLOC_TRIM_THRESHOLD_": 1024 * 1024 * 1024,
            "MALLOC_TOP_PAD_": 64 * 1024 * 1024}
_MALLOPT = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_TOP_PAD_": -2, "MALLOC_MMAP_THRESHOLD_": -3}  # glibc's M_* ids
OPT_OUT = "MODTOOLS_MALLOC"
_applied: dict[str, int] | None = None


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the tuning applies: on Linux, unless ``MODTOOLS_MALLOC=default``."""
    env = os.environ if environ is None else environ
    value = env.get(OPT_OUT, "tuned").strip().lower()
    if value not in ("tuned", "default"):
        raise ValueError(f"{OPT_OUT}={env[OPT_OUT]!r} is not allowed; use 'tuned' (the default) or 'default'")
    return sys.platform.startswith("linux") and value == "tuned"


def tuned_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: ``os.environ``) with the ``MALLOC_*`` settings added where unset."""
    env = dict(os.environ if environ is None else environ)
    if enabled(env):
        for name, value in SETTINGS.items():
            env.setdefault(name, str(value))
    return env


def tune_allocator() -> dict[str, int]:
    """Apply :data:`SETTINGS` to this process with glibc's ``mallopt`` (once; later calls return the
    same). Returns what was set: empty when disabled, when not on glibc, or for variables the user
    set (glibc read those at start-up)."""
    global _applied
    if _applied is not None:
        return dict(_applied)
    _applied = {}
    if not enabled():
        return {}
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return {}
    for name, value in SETTINGS.items():
        if name not in os.environ and mallopt(_MALLOPT[name], int(value)) == 1:
            _applied[name] = value
    return dict(_applied)
