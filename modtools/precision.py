"""Arithmetic precision of training and search loops.

Every approach's config and :class:`modtools.train.FitConfig` have a ``precision`` field:

* ``"fp32"``: plain float32 everywhere (PyTorch's default; the default of every config and of the
  ``paper`` profile, which reproduces the published settings).
* ``"bf16"``: the training and search loops run under ``torch.autocast`` with bfloat16:
  convolutions and linear layers compute in bfloat16, while weights, optimiser states, mask
  scores, losses and reductions stay float32 (mixed precision, as in Lightning's
  ``"bf16-mixed"``).
* ``"auto"``: ``"bf16"`` where the device computes it fast (a GPU that supports bfloat16, a CPU with
  AMX tiles or AVX-512 BF16, such as this project's 2-core Xeon, where convolutions run
  1.6–2.2× faster), else ``"fp32"``. In the quick profile, notebook 32 and the approaches of 60
  use it; the others stay ``"fp32"``, where bf16 moved their results past their targets (see
  the README).

Only the loops that train or search use it. Every accuracy, latency and module a notebook reports
or saves is computed in float32, so a module saved from a bf16 search loads and runs like any
other. Which precision a loop actually used is recorded where its results are (:func:`resolved`).
"""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "auto")


def check_precision(precision: str) -> str:
    """``precision`` itself, or ``ValueError`` naming it and the allowed values."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not supported; use one of {PRECISIONS}")
    return precision


def fast_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions natively (faster than float32)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return torch.backends.mkldnn.is_available() and any(
            bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    return False


def resolved(precision: str, device: str | torch.device) -> str:
    """``"fp32"`` or ``"bf16"``: what ``precision`` means on ``device``."""
    check_precision(precision)
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    return precision


def autocast(precision: str, device: str | torch.device):
    """A context manager that runs its body in ``precision`` on ``device`` (a no-op for fp32)."""
    if resolved(precision, device) == "fp32":
        return contextlib.nullcontext()
    dev = torch.device(device)
    # no cast cache: a loop may update a weight inside one context (a whole search is one context),
    # and a cached bfloat16 copy would go stale after the first optimiser step
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, cache_enabled=False)


def strip_default(settings: dict) -> dict:
    """``settings`` without ``precision`` when it is ``"fp32"``, so that cache keys made before the
    field existed still name the same float32 work."""
    return {k: v for k, v in settings.items() if not (k == "precision" and v == "fp32")}
