"""The ``Module``: what every approach produces, and its file format.

A module is a source model's identity (architecture, build config, SHA-256 of its weights) plus
a kernel mask per layer, a head, the task (classes and names), the approach and its config, the
metrics and the lineage. Its network is the physically extracted sub-network
(:func:`modtools.extract.extract`), so a module runs on its own.

On disk a module is a folder:

* ``weights.safetensors``: ``network.*`` (the extracted network), ``head.*`` and ``mask.<layer>``.
* ``card.json``: the metadata, with keys in the spirit of Hugging Face model cards
  (``library_name``, ``tags``, ``datasets``, ``base_model``, ``metrics``) plus modtools' own.

The folder is written to a temporary sibling and renamed, so it appears complete or not at all.
Loading rebuilds the architecture from the card, re-applies the masks' structure, and loads the
weights after checking the file's SHA-256; problems raise :class:`~modtools.errors.CheckpointError`
(corrupt or truncated files) or :class:`~modtools.errors.ModuleMismatchError` (wrong model).
"""
from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from .errors import CheckpointError, ModuleMismatchError
from .extract import extract
from .heads import build_head
from .io import atomic_write_json, load_tensors, read_json, save_tensors, state_hash
from .metrics import kernel_retention
from .models import architecture, build_from_config

CARD_VERSION = 1


def source_identity(model: nn.Module, input_shape: Sequence[int], dataset: str = "") -> dict:
    """What identifies a source model: its architecture (a zoo name and build arguments, or the import
    path of a model class of your own and its constructor arguments where known), the SHA-256 of its
    weights, the input shape and the parameter shapes."""
    arch = architecture(model)
    return {"arch": arch["arch"], "config": arch, "sha256": state_hash(model),
            "input_shape": list(input_shape), "dataset": dataset,
            "shapes": {k: list(v.shape) for k, v in model.state_dict().items()}}


def check_source(model: nn.Module, source: dict, where: str = "module") -> None:
    """Raise :class:`ModuleMismatchError` unless ``model`` is the source model described by ``source``."""
    cfg = architecture(model)
    if cfg != source["config"]:
        diff = next(k for k in sorted(set(cfg) | set(source["config"])) if cfg.get(k) != source["config"].get(k))
        raise ModuleMismatchError(f"{where} was made from {source['config']} but the model is {cfg}; "
                                  f"first difference: {diff!r} ({source['config'].get(diff)!r} vs {cfg.get(diff)!r})")
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    for k in sorted(set(shapes) | set(source["shapes"])):
        if shapes.get(k) != source["shapes"].get(k):
            raise ModuleMismatchError(f"{where}: parameter {k!r} has shape {shapes.get(k)} in the model but "
                                      f"{source['shapes'].get(k)} in the source model")
    sha = state_hash(model)
    if sha != source["sha256"]:
        raise ModuleMismatchError(f"{where} was made from weights with SHA-256 {source['sha256'][:16]}…, "
                                  f"the model's weights hash to {sha[:16]}… (same architecture, other weights)")


@dataclass
class Module:
    """A reusable module (see the module docstring)."""

    source: dict
    masks: dict[str, torch.Tensor]
    head_spec: dict
    network: nn.Module
    head: nn.Module
    task: dict
    approach: str = "baseline"
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    lineage: list = field(default_factory=list)
    extraction: dict = field(default_factory=dict)
    name: str = ""

    # -- building -------------------------------------------------------------------------
    @classmethod
    def create(cls, model: nn.Module, masks: Mapping[str, torch.Tensor], task: dict, head_spec: dict,
               head_state: Mapping[str, torch.Tensor] | None = None, approach: str = "baseline",
               config: dict | None = None, metrics: dict | None = None, lineage: list | None = None,
               input_shape: Sequence[int] = (3, 32, 32), dataset: str = "", on_empty: str = "raise",
               name: str = "", align: int = 1, source_model: nn.Module | None = None) -> "Module":
        """Extract ``model`` under ``masks`` and wrap it with a head and its metadata.

        ``source_model`` is the model the card names as the source when ``model`` is a changed copy
        of it (SeaM bakes its weight masks into a copy); it must have ``model``'s architecture.
        """
        masks = {k: (torch.as_tensor(v) != 0) for k, v in masks.items()}
        network, report = extract(model, {k: v.float() for k, v in masks.items()}, on_empty=on_empty,
                                  image_size=int(input_shape[-1]), align=align)
        head = build_head(head_spec)
        if head_state:
            head.load_state_dict(dict(head_state))
        source = source_identity(source_model if source_model is not None else model, input_shape, dataset)
        return cls(source, masks, dict(head_spec), network, head.eval(), dict(task), approach, dict(config or {}),
                   dict(metrics or {}), list(lineage or []), report.to_dict(),
                   name or f"{approach}-{source['arch']}-{'_'.join(map(str, task.get('classes', [])))}")

    def as_model(self) -> nn.Sequential:
        """The module as one ``nn.Module``: network then head."""
        return nn.Sequential(self.network, self.head).eval()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.network(x))

    def to(self, device) -> "Module":
        self.network.to(device)
        self.head.to(device)
        return self

    def kernel_counts(self) -> dict:
        return {k: {"kept": int(v.sum()), "total": int(v.numel())} for k, v in self.masks.items()}

    def card(self, weights_sha256: str = "") -> dict:
        """The module card (JSON-able)."""
        krr = kernel_retention(self.masks)["rate"] if self.masks else 1.0
        return {
            "card_version": CARD_VERSION,
            "library_name": "modtools",
            "name": self.name,
            "tags": ["modtools", "module", self.approach, self.source["arch"]],
            "datasets": [self.source.get("dataset") or self.task.get("dataset", "")],
            "base_model": dict(self.source),
            "approach": self.approach,
            "config": self.config,
            "task": self.task,
            "head": self.head_spec,
            "kernels": self.kernel_counts(),
            "kernel_retention": krr,
            "extraction": self.extraction,
            "metrics": self.metrics,
            "lineage": self.lineage,
            "weights": {"file": "weights.safetensors", "sha256": weights_sha256},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    # -- files ----------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``weights.safetensors`` and ``card.json`` into ``folder``, atomically."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            sha = save_tensors(tmp / "weights.safetensors", self.tensors(), {"format": "modtools-module"})
            atomic_write_json(tmp / "card.json", self.card(sha))
            old = None
            if folder.exists():
                old = folder.with_name(f".{folder.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(folder, old)
            os.replace(tmp, folder)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, model: nn.Module | None = None,
             device: str | torch.device = "cpu") -> "Module":
        """Load a module folder; with ``model``, also check that it is the module's source model.

        The network is rebuilt from ``model`` when given, else from the card's architecture (a zoo
        name, or a class of your own whose constructor arguments were recorded); the masks are
        extracted again and must remove the channels the card records.

        Raises:
            CheckpointError: missing/corrupt card or weights, hash mismatch.
            ModuleMismatchError: weights that do not fit the recorded architecture, a ``model``
                that is not the source model, or an extraction that differs from the recorded one.
            UnknownNameError: no ``model`` is given and the architecture cannot be rebuilt (a class
                of your own whose constructor arguments were not recorded); the message says so.
        """
        folder = Path(folder)
        card_path = folder / "card.json"
        if not card_path.is_file():
            raise CheckpointError(f"{folder} is not a module folder: {card_path} is missing")
        card = read_json(card_path)
        for key in ("base_model", "kernels", "head", "weights", "task"):
            if key not in card:
                raise CheckpointError(f"{card_path} lacks the key {key!r}; it is not a modtools module card")
        if model is not None:
            check_source(model, card["base_model"], where=f"module {folder}")
        tensors = load_tensors(folder / card["weights"]["file"], card["weights"]["sha256"])
        return cls.from_card(card, tensors, model=model, device=device, where=str(folder),
                             default_name=folder.name)

    @classmethod
    def from_card(cls, card: dict, tensors: Mapping[str, torch.Tensor], model: nn.Module | None = None,
                  device: str | torch.device = "cpu", where: str = "module", default_name: str = "") -> "Module":
        """Rebuild a module from its card and its tensors (``network.*``, ``head.*``, ``mask.*``), as
        :meth:`load` does; used for modules stored inside other files (compositions)."""
        source = card["base_model"]
        masks = {k[5:]: v.bool() for k, v in tensors.items() if k.startswith("mask.")}
        if model is not None:
            skeleton = model
        else:
            with torch.random.fork_rng(devices=[]):
                skeleton = build_from_config(source["config"])
        recorded = card.get("extraction", {})
        network, report = extract(skeleton, {k: v.float() for k, v in masks.items()},
                                  on_empty=recorded.get("on_empty", "raise"), image_size=int(source["input_shape"][-1]),
                                  align=int(recorded.get("align", 1)))
        if "removed" in recorded and report.removed != recorded["removed"]:
            diff = next(k for k in sorted(set(report.removed) | set(recorded["removed"]))
                        if report.removed.get(k) != recorded["removed"].get(k))
            raise ModuleMismatchError(f"{where}: extracting the recorded masks again removes other channels of "
                                      f"{diff!r} than the card records; the model or Torch-Pruning version differs")
        net_state = {k[8:]: v for k, v in tensors.items() if k.startswith("network.")}
        _load_strict(network, net_state, where)
        head = build_head(card["head"])
        _load_strict(head, {k[5:]: v for k, v in tensors.items() if k.startswith("head.")}, where)
        mod = cls(source, masks, card["head"], network.eval(), head.eval(), card["task"], card.get("approach", ""),
                  card.get("config", {}), card.get("metrics", {}), card.get("lineage", []),
                  card.get("extraction", {}), card.get("name", default_name))
        return mod.to(device)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The module's tensors as :meth:`save` writes them."""
        out = {f"network.{k}": v for k, v in self.network.state_dict().items()}
        out.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        out.update({f"mask.{k}": v.to(torch.uint8) for k, v in self.masks.items()})
        return out


def _load_strict(module: nn.Module, state: dict, folder) -> None:
    own = module.state_dict()
    for k in sorted(set(own) | set(state)):
        if k not in state:
            raise ModuleMismatchError(f"{folder}: weights lack {k!r} that the recorded architecture needs")
        if k not in own:
            raise ModuleMismatchError(f"{folder}: weights hold {k!r} that the recorded architecture does not have")
        if tuple(own[k].shape) != tuple(state[k].shape):
            raise ModuleMismatchError(f"{folder}: {k!r} has shape {tuple(state[k].shape)} in the file but the "
                                      f"architecture rebuilt from the card needs {tuple(own[k].shape)}")
    from collections import OrderedDict

    state = OrderedDict(state)
    state._metadata = getattr(own, "_metadata", None)  # some modules check their version (torchvision MNASNet)
    module.load_state_dict(state)
