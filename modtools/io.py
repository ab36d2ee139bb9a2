"""Safe, atomic files: JSON, safetensors weights, hashes. No pickle anywhere.

Every write goes to a temporary file in the same folder and is renamed into place, so a crash
never leaves a half-written file. Every weights file is read through :func:`load_tensors`, which
turns truncation, corruption and hash mismatches into :class:`~modtools.errors.CheckpointError`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import CheckpointError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=_jsonable)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return atomic_write_bytes(path, (to_json(obj) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); size {path.stat().st_size} bytes") from None


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def config_hash(obj: Any, length: int = 12) -> str:
    """A short, stable hash of a JSON-able configuration."""
    text = json.dumps(obj, sort_keys=True, default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def state_hash(module: torch.nn.Module | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a model's state (names, shapes, dtypes and bytes, in sorted order)."""
    state = module.state_dict() if isinstance(module, torch.nn.Module) else module
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> str:
    """Save tensors to a ``.safetensors`` file atomically; return the file's SHA-256."""
    from safetensors.torch import save

    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    data = save(clean, metadata={k: str(v) for k, v in (metadata or {}).items()})
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_tensors(path: str | os.PathLike, expected_sha256: str | None = None,
                 device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a ``.safetensors`` file, checking its SHA-256 when given.

    Raises:
        CheckpointError: missing, truncated or corrupted file, or a hash mismatch.
    """
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    data = path.read_bytes()
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise CheckpointError(f"{path} ({len(data)} bytes) is corrupted or was changed: SHA-256 is {actual}, "
                                  f"expected {expected_sha256}")
    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path} ({len(data)} bytes) is not a valid safetensors file: {exc}") from None
    return {k: v.to(device) for k, v in tensors.items()}


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; unsafe pickles raise :class:`CheckpointError`."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path} could not be loaded safely ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "modtools loads only plain tensors (weights_only=True) and never falls back to unpickling "
            "arbitrary objects: re-save the file with safetensors, and trust_checkpoint only your own files") from exc


def atomic_copy_dir(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy folder ``src`` to ``dst`` so that ``dst`` appears complete or not at all."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return dst
