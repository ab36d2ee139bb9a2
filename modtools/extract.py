"""Turn per-layer kernel masks into a physically smaller network that computes the same outputs.

The rule, in two steps:

1. **Zero.** In a copy of the model, every masked kernel's contribution is set to exactly 0: the
   BN's weight and bias of that channel (or, without BN, the conv's weight and bias of that
   channel), and the same for the layer's followers (depthwise convs whose channels are its
   kernels, :mod:`modtools.layers`). The copy now computes what the masked model computes (in eval
   mode).
2. **Remove.** Torch-Pruning's dependency graph groups the channels that must be removed together
   (a residual stream couples the convs that add into it; a concatenation maps channels to
   offsets; a depthwise conv's channels are its input's). A channel is removed only when its
   removal is exact, that is unless
   * some coupled conv keeps it (the *union rule*: the members that mask it contribute 0 through
     step 1);
   * a BN that is not paired with a coupled conv reads it (a BN after a concatenation or an
     addition, as in pre-activation DenseNets: it turns a zero channel into its shift, not 0);
   * a LayerNorm/GroupNorm or a layer modtools does not mask (the output conv) uses it;
   * a grouped conv reads or writes it and removing it would leave the groups uneven: every group
     of a grouped conv loses the same number of channels, and zeroed channels stay where needed.

So the extracted network equals the masked model up to float summation order, for plain,
residual, inception, dense, depthwise-separable and grouped CNNs alike. A layer whose mask removes
every kernel raises :class:`~modtools.errors.EmptyMaskError`, unless ``on_empty="keep_one"``, in
which case one zeroed channel stays (outputs still equal) and the decision is recorded in the report.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Mapping

import torch
import torch.nn as nn

from .errors import EmptyMaskError, UnknownNameError, UnsupportedModelError
from .layers import CHANNEL_NORMS, MaskableLayer, default_input, find_maskable_layers, is_depthwise, pruning_group
from .masks import apply_masks, check_mask

EXTRACT_ON_EMPTY = ("raise", "keep_one")
COUPLING_RULE = ("union: a channel shared by coupled layers (residual stream, concatenation, depthwise follower) is "
                 "kept if any member keeps it, and members that mask it contribute exactly 0; a channel read by a BN "
                 "not paired with a coupled conv, by a LayerNorm/GroupNorm or by an unmasked layer is kept; grouped "
                 "convs lose the same number of channels in every group")


@dataclass
class ExtractionReport:
    """What extraction did: kernels kept per layer, channels kept only because of coupling or
    another rule, the channels removed per conv, and the policies."""

    kept: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    coupled_kept: dict[str, int] = field(default_factory=dict)
    empty_layers: list[str] = field(default_factory=list)
    on_empty: str = "raise"
    align: int = 1
    rule: str = COUPLING_RULE
    kept_by_rule: dict[str, int] = field(default_factory=dict)
    removed: dict[str, list[int]] = field(default_factory=dict)
    layers: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def zero_masked(model: nn.Module, layers: list[MaskableLayer], masks: Mapping[str, torch.Tensor]) -> None:
    """Set each masked kernel's output to exactly zero in place (BN weight and bias, else conv),
    also after the layer's followers."""
    for layer in layers:
        if layer.name not in masks:
            continue
        off = masks[layer.name].to(layer.conv.weight.device) == 0
        if not off.any():
            continue
        for name, conv, norm_name, norm in [(layer.name, layer.conv, layer.norm_name, layer.norm)] + [
                (f.name, f.conv, f.norm_name, f.norm) for f in layer.followers]:
            if norm is not None:
                if norm.weight is None:
                    raise UnsupportedModelError(f"BN {norm_name} after {name} has no affine parameters; "
                                                "supported: BatchNorm2d(affine=True)")
                norm.weight[off] = 0
                norm.bias[off] = 0
            else:
                conv.weight[off] = 0
                if conv.bias is not None:
                    conv.bias[off] = 0


def _even_groups(item_channels: list[tuple[int, list[int], list[int]]], keep_root: set[int]) -> int:
    """Add channels to ``keep_root`` until every group of every grouped conv in the coupling group
    keeps the same number (``item_channels``: group size, channel indices, their root indices);
    returns how many were added."""
    added, changed = 0, True
    while changed:
        changed = False
        for size, idxs, roots in item_channels:
            per_group: dict[int, list[tuple[int, int]]] = {}
            for idx, root in zip(idxs, roots):
                per_group.setdefault(idx // size, []).append((idx, root))
            kept = {j: sum(root in keep_root for _, root in members) for j, members in per_group.items()}
            target = max(kept.values())
            for j, members in per_group.items():
                for idx, root in members:
                    if kept[j] >= target:
                        break
                    if root not in keep_root:
                        keep_root.add(root)
                        kept[j] += 1
                        added += 1
                        changed = True
    return added


def private_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode, without modtools' architecture tags (a network cut from
    it is no longer that architecture)."""
    net = copy.deepcopy(model).eval()
    for attr in ("modtools_config", "modtools_source"):
        if hasattr(net, attr):
            delattr(net, attr)
    return net


def checked_masks(description, masks: Mapping[str, torch.Tensor], on_empty: str,
                  empty_layers: list[str]) -> dict[str, torch.Tensor]:
    """``masks`` checked against the maskable layers (names, shapes, values); a layer whose mask is
    empty raises :class:`EmptyMaskError` unless ``on_empty="keep_one"``, and is listed in ``empty_layers``."""
    by_name = {layer.name: layer for layer in description}
    checked: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        if name not in by_name:
            why = description.excluded.get(name) or (f"it follows {description.followers[name]}"
                                                     if name in description.followers else "")
            raise UnknownNameError(f"mask names layer {name!r}, which is not a maskable layer"
                                   f"{f' ({why})' if why else ''}; maskable layers: {list(by_name)}")
        m = check_mask(by_name[name], mask, on_empty="allow")
        if not m.any():
            if on_empty == "raise":
                raise EmptyMaskError(f"the mask removes every kernel of layer {name}; pass on_empty='keep_one' "
                                     f"to keep one zeroed channel (options: {EXTRACT_ON_EMPTY})")
            empty_layers.append(name)
        checked[name] = m
    return checked


def mask_owners(description, checked: Mapping[str, torch.Tensor]) -> tuple[dict, set]:
    """Each conv's mask (its layer's, for a follower its leader's; None when unmasked) and the BNs
    paired with a maskable conv."""
    mask_of: dict[nn.Module, torch.Tensor | None] = {}
    paired_norms: set[nn.Module] = set()
    for layer in description:
        for conv, norm in [(layer.conv, layer.norm)] + [(f.conv, f.norm) for f in layer.followers]:
            mask_of[conv] = checked.get(layer.name)
            if norm is not None:
                paired_norms.add(norm)
    return mask_of, paired_norms


@dataclass(frozen=True)
class CoupledItem:
    """One member of a dependency group, as plain data: the module, whether the group removes its
    output (else input) channels, its channel indices and the root conv's index of each."""

    module: nn.Module
    out_fn: bool
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]


def coupling_groups(net: nn.Module, graph) -> list[tuple[nn.Conv2d, list[CoupledItem]]]:
    """Every conv that roots a dependency group (in module order, each conv in one group only) with
    the group's items; the groups depend on the structure only, not on any mask."""
    groups, seen = [], set()
    for conv in (m for m in net.modules() if isinstance(m, nn.Conv2d)):
        if id(conv) in seen or conv not in graph.module2node:
            continue
        items = [CoupledItem(item.dep.target.module, bool(graph.is_out_channel_pruning_fn(item.dep.handler)),
                             tuple(int(i) for i in item.idxs), tuple(int(i) for i in item.root_idxs))
                 for item in pruning_group(graph, conv).items]
        seen.update(id(it.module) for it in items if isinstance(it.module, (nn.Conv2d, nn.Linear)) and it.out_fn)
        groups.append((conv, items))
    return groups


def channels_to_remove(conv: nn.Conv2d, items: list[CoupledItem], mask_of: Mapping[nn.Module, torch.Tensor | None],
                       paired_norms: set[nn.Module], align: int = 1,
                       rule_counts: dict[str, int] | None = None) -> list[int]:
    """The output channels of the group's root ``conv`` that can be removed exactly (the module
    docstring's rules), counting the channels each rule keeps in ``rule_counts`` when given."""
    if rule_counts is None:
        rule_counts = {"bn_after_merge": 0, "unmasked_reader": 0, "grouped_even": 0}
    keep_root: set[int] = set()
    grouped_items = []
    for item in items:
        target, out_fn = item.module, item.out_fn
        if isinstance(target, nn.Conv2d) and target.groups > 1 and not is_depthwise(target):
            width = target.out_channels if out_fn else target.in_channels
            grouped_items.append((width // target.groups, list(item.idxs), list(item.root_idxs)))
        if isinstance(target, (nn.Conv2d, nn.Linear)) and out_fn:
            mask = mask_of.get(target)
            if mask is None:
                keep_root.update(item.root_idxs)
            else:
                on = mask.tolist()
                keep_root.update(root for idx, root in zip(item.idxs, item.root_idxs) if on[idx] != 0)
        elif out_fn and isinstance(target, nn.modules.batchnorm._BatchNorm) and target not in paired_norms:
            before = len(keep_root)
            keep_root.update(item.root_idxs)
            rule_counts["bn_after_merge"] += len(keep_root) - before
        elif out_fn and (isinstance(target, CHANNEL_NORMS) or type(target).__name__.startswith("LayerNorm")):
            before = len(keep_root)
            keep_root.update(item.root_idxs)
            rule_counts["unmasked_reader"] += len(keep_root) - before
    if grouped_items:
        rule_counts["grouped_even"] += _even_groups(grouped_items, keep_root)
    remove = [c for c in range(conv.out_channels) if c not in keep_root]
    if len(remove) == conv.out_channels:  # only possible with on_empty="keep_one"
        remove = remove[1:]
    if align > 1 and not grouped_items:  # keep a few zeroed channels so the width is a multiple of `align`
        pad = min(len(remove), (-(conv.out_channels - len(remove))) % align)
        remove = remove[pad:]
    return remove


def extract(model: nn.Module, masks: Mapping[str, torch.Tensor], on_empty: str = "raise",
            image_size: int = 32, layers: list[MaskableLayer] | None = None,
            align: int = 1, verify: bool = True) -> tuple[nn.Module, ExtractionReport]:
    """A smaller copy of ``model`` (eval mode) that computes what ``model`` gated by ``masks`` computes.

    Args:
        model: a CNN; it is not modified.
        masks: ``{conv layer name: (C,) 0/1}``; unnamed layers keep all kernels.
        on_empty: ``"raise"`` (default) or ``"keep_one"`` (keep one zeroed channel, recorded).
        image_size: spatial size of the example input used to trace the dependency graph.
        layers: unused (kept for compatibility); the layers are found on the copy.
        align: keep (zeroed) channels so every extracted width is a multiple of ``align`` where
            the original width allows; vectorised CPU/GPU kernels often run faster on such widths.
        verify: compare the extracted network with the masked model on two seeded random inputs and
            raise :class:`UnsupportedModelError` if they differ (an operation that does not map a
            zero channel to zero, which no rule above covers).

    Returns:
        ``(extracted, report)``.
    """
    if on_empty not in EXTRACT_ON_EMPTY:
        raise ValueError(f"on_empty={on_empty!r} is not allowed; use one of {EXTRACT_ON_EMPTY}")
    if align < 1:
        raise ValueError(f"align must be a positive integer, got {align}")
    net = private_copy(model)
    example = default_input(net, image_size)
    description = find_maskable_layers(net, example, cache=False)   # net is a throw-away copy
    report = ExtractionReport(on_empty=on_empty, align=align, layers=description.to_dict())
    checked = checked_masks(description, masks, on_empty, report.empty_layers)
    zero_masked(net, description, checked)
    mask_of, paired_norms = mask_owners(description, checked)
    names = {m: n for n, m in net.named_modules()}
    try:
        graph = description.graph
        rule_counts = {"bn_after_merge": 0, "unmasked_reader": 0, "grouped_even": 0}
        plans = [(conv, remove) for conv, items in coupling_groups(net, graph)
                 if (remove := channels_to_remove(conv, items, mask_of, paired_norms, align, rule_counts))]
        for conv, remove in plans:
            report.removed[names.get(conv, "")] = remove
            pruning_group(graph, conv, remove).prune()
    except UnsupportedModelError:
        raise
    except Exception as exc:
        raise UnsupportedModelError(f"{type(model).__name__}: Torch-Pruning could not remove the masked channels "
                                    f"({type(exc).__name__}: {exc}); the masked model itself works, use "
                                    "modtools.masks.apply_masks instead of extraction") from None
    report.kept_by_rule = rule_counts
    for layer in description:
        report.total[layer.name] = int(checked[layer.name].numel()) if layer.name in checked else layer.out_channels
        own = int(checked[layer.name].sum()) if layer.name in checked else layer.out_channels
        report.kept[layer.name] = own
        report.coupled_kept[layer.name] = layer.conv.out_channels - own
    if verify:
        _verify(model, checked, net, example)
    return net, report


@torch.no_grad()
def _verify(model: nn.Module, masks: Mapping[str, torch.Tensor], extracted: nn.Module, example: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, *example.shape[1:], generator=g).to(example.device, example.dtype)
    was = model.training
    model.eval()
    try:
        with apply_masks(model, masks, find_maskable_layers(model, example), on_empty="allow"):
            ref = model(x)
    finally:
        model.train(was)
    err = float((ref - extracted(x)).abs().max())
    if not err <= 1e-4 * max(1.0, float(ref.abs().max())):
        raise UnsupportedModelError(
            f"extracting {type(model).__name__} is not exact (max |masked − extracted| = {err:.3g}): an operation "
            "between a masked conv and the layers that read its channels does not map 0 to 0; the masked model "
            "itself works (modtools.masks.apply_masks)")


@torch.no_grad()
def extraction_error(model: nn.Module, masks: Mapping[str, torch.Tensor], extracted: nn.Module,
                     x: torch.Tensor) -> float:
    """max |masked model(x) − extracted(x)| with both in eval mode."""
    was = model.training
    model.eval()
    extracted.eval()
    try:
        with apply_masks(model, masks, on_empty="allow"):
            a = model(x)
        b = extracted(x)
    finally:
        model.train(was)
    return float((a - b).abs().max())
