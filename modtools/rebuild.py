"""Many extractions of one model, fast: the structure is analysed once, and each mask is then applied
by index selection alone.

:func:`modtools.extract.extract` copies the model, traces it and builds Torch-Pruning's dependency
graph for every call: right for one module, wasteful for a search that evaluates thousands of
candidate modules of the same model (CNNSplitter's genetic search). A :class:`Rebuilder` does that
work once. For each mask it then decides which channels to remove with extraction's own rules
(:func:`~modtools.extract.channels_to_remove`, the same code), and sets the parameters of one
private copy of the model to slices of the original tensors. The network it returns therefore
computes what ``extract(model, masks)`` computes, and costs the same fewer MACs.

Supported members of a coupling group: ``Conv2d`` (plain or depthwise), ``BatchNorm2d``, ``Linear``
and the parameter-free operations Torch-Pruning traces (additions, concatenations, reshapes). A
model with anything else in a group (a grouped non-depthwise conv, a split, a parametrised
activation, ...) raises :class:`~modtools.errors.UnsupportedModelError` on construction; callers
then use :func:`~modtools.extract.extract`.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn as nn

from .errors import UnsupportedModelError
from .extract import channels_to_remove, checked_masks, coupling_groups, mask_owners, private_copy, zero_masked
from .layers import default_input, find_maskable_layers, is_depthwise

# Torch-Pruning's traced operations whose pruning only re-indexes (nothing to slice here).
_INDEX_ONLY_OPS = ("_ConcatOp", "_ReshapeOp", "_ElementWiseOp", "_OutputOp", "_CustomizedOp")


def _kind(module: nn.Module) -> str:
    """How a group member is sliced: ``conv``, ``depthwise``, ``norm``, ``linear`` or ``none``."""
    if isinstance(module, nn.Conv2d):
        if module.groups == 1:
            return "conv"
        if is_depthwise(module):
            return "depthwise"
        raise UnsupportedModelError(f"grouped conv {module} (groups={module.groups}): the fast rebuild keeps "
                                    "groups even only through modtools.extract.extract")
    if isinstance(module, nn.BatchNorm2d):
        return "norm"
    if isinstance(module, nn.Linear):
        return "linear"
    name = type(module).__name__
    if name in _INDEX_ONLY_OPS and not any(True for _ in module.parameters(recurse=False)):
        return "none"
    raise UnsupportedModelError(f"{name} in a coupling group: the fast rebuild slices Conv2d, BatchNorm2d and "
                                "Linear only; use modtools.extract.extract")


class Rebuilder:
    """Extraction for many masks of one model (see the module docstring).

    Args:
        model: a CNN in eval mode; it is copied once and not modified.
        image_size: spatial size of the example input used to trace the structure.

    :meth:`build` returns the rebuilder's own network, set for the given masks; it stays valid
    until the next call (copy it with :func:`copy.deepcopy` to keep it)."""

    def __init__(self, model: nn.Module, image_size: int = 32):
        self.net = private_copy(model)
        self.description = find_maskable_layers(self.net, default_input(self.net, image_size), cache=False)
        self.groups = coupling_groups(self.net, self.description.graph)
        self.kinds: dict[nn.Module, str] = {}
        for _, items in self.groups:
            for item in items:
                self.kinds[item.module] = _kind(item.module)
        self.sliced = [m for m, kind in self.kinds.items() if kind != "none"]
        # per root conv, its sliced members: (module, output side?, channel indices, their roots)
        self.members = {conv: [(it.module, it.out_fn or self.kinds[it.module] in ("norm", "depthwise"),
                                np.asarray(it.idxs, dtype=np.int64), np.asarray(it.root_idxs, dtype=np.int64))
                               for it in items if self.kinds[it.module] != "none"] for conv, items in self.groups}
        self.pristine = {m: {n: t.data for n, t in list(m.named_parameters(recurse=False))
                             + list(m.named_buffers(recurse=False)) if t is not None} for m in self.sliced}
        self.shape = {m: self._shape_attrs(m) for m in self.sliced}

    @staticmethod
    def _shape_attrs(m: nn.Module) -> dict[str, int]:
        names = {"conv": ("in_channels", "out_channels", "groups"), "norm": ("num_features",),
                 "linear": ("in_features", "out_features")}
        kind = "conv" if isinstance(m, nn.Conv2d) else "norm" if isinstance(m, nn.BatchNorm2d) else "linear"
        return {a: getattr(m, a) for a in names[kind]}

    def _restore(self) -> None:
        """Every sliced module back to the original tensors and widths."""
        for m in self.sliced:
            for n, t in self.pristine[m].items():
                getattr(m, n).data = t
            for a, v in self.shape[m].items():
                setattr(m, a, v)

    def _copy_zeroed(self, checked: Mapping[str, torch.Tensor]) -> None:
        """Private copies of the tensors that zeroing the masked kernels writes to."""
        for layer in self.description:
            if layer.name not in checked or bool(checked[layer.name].all()):
                continue
            for conv, norm in [(layer.conv, layer.norm)] + [(f.conv, f.norm) for f in layer.followers]:
                target = norm if norm is not None else conv
                for p in (target.weight, target.bias):
                    if p is not None:
                        p.data = p.data.clone()

    @torch.no_grad()
    def build(self, masks: Mapping[str, torch.Tensor], on_empty: str = "keep_one") -> nn.Module:
        """The network that ``extract(model, masks, on_empty=on_empty)`` returns (same outputs, same
        widths), built by index selection on this rebuilder's copy."""
        self._restore()
        checked = checked_masks(self.description, masks, on_empty, [])
        self._copy_zeroed(checked)
        zero_masked(self.net, self.description, checked)
        mask_of, paired_norms = mask_owners(self.description, checked)
        drop: dict[tuple[nn.Module, bool], np.ndarray] = {}      # (member, output side) → channels kept
        for conv, items in self.groups:
            remove = set(channels_to_remove(conv, items, mask_of, paired_norms))
            if not remove:
                continue
            removed = np.zeros(conv.out_channels, dtype=bool)
            removed[list(remove)] = True
            for m, out, idxs, roots in self.members[conv]:
                if (m, out) not in drop:
                    drop[(m, out)] = np.ones(m.weight.shape[0 if out else 1], dtype=bool)
                drop[(m, out)][idxs[removed[roots]]] = False
        for (m, out), keep in drop.items():
            self._slice(m, out, torch.from_numpy(np.flatnonzero(keep)).to(m.weight.device))
        return self.net

    def _slice(self, m: nn.Module, out: bool, keep: torch.Tensor) -> None:
        kind = self.kinds[m]
        dim = 0 if out else 1
        if kind == "norm":
            for n in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(m, n)
                if t is not None:
                    t.data = t.data.index_select(0, keep)
            m.num_features = len(keep)
            return
        m.weight.data = m.weight.data.index_select(dim, keep)
        if out and m.bias is not None:
            m.bias.data = m.bias.data.index_select(0, keep)
        if kind == "linear":
            setattr(m, "out_features" if out else "in_features", len(keep))
        elif kind == "depthwise":
            m.in_channels = m.out_channels = m.groups = len(keep)
        else:
            setattr(m, "out_channels" if out else "in_channels", len(keep))
