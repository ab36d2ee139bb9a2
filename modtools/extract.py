"""Turn per-layer kernel masks into a physically smaller network that computes the same outputs.

The rule, in two steps:

1. **Zero.** In a copy of the model, every masked kernel's contribution is set to exactly 0: the
   BN's weight and bias of that channel (or, without BN, the conv's weight and bias of that
   channel). The copy now computes what the masked model computes (in eval mode).
2. **Remove.** Torch-Pruning's dependency graph groups the channels that must be removed together
   (a residual stream couples the convs that add into it; a concatenation maps channels to
   offsets). A channel is removed only if *no* coupled conv keeps it; a channel kept by some
   member stays, and the members that mask it contribute 0 through step 1 (the *union rule*).

So the extracted network equals the masked model up to float summation order, for plain,
residual and inception CNNs and torchvision ResNets alike. A layer whose mask removes every
kernel raises :class:`~modtools.errors.EmptyMaskError`, unless ``on_empty="keep_one"``, in which case
one zeroed channel stays (outputs still equal) and the decision is recorded in the report.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Mapping

import torch
import torch.nn as nn

from .errors import EmptyMaskError, UnknownNameError, UnsupportedModelError
from .masks import MaskableLayer, apply_masks, check_mask, find_maskable_layers

EXTRACT_ON_EMPTY = ("raise", "keep_one")
COUPLING_RULE = ("union: a channel shared by coupled layers (residual stream) is kept if any member keeps it; "
                 "members that mask it contribute exactly 0")


@dataclass
class ExtractionReport:
    """What extraction did: kernels kept per layer, channels kept only because of coupling, policy."""

    kept: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    coupled_kept: dict[str, int] = field(default_factory=dict)
    empty_layers: list[str] = field(default_factory=list)
    on_empty: str = "raise"
    align: int = 1
    rule: str = COUPLING_RULE

    def to_dict(self) -> dict:
        return asdict(self)


def _example(model: nn.Module, size: int) -> torch.Tensor:
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    p = next(model.parameters())
    return torch.zeros(1, first.in_channels, size, size, device=p.device, dtype=p.dtype)


@torch.no_grad()
def zero_masked(model: nn.Module, layers: list[MaskableLayer], masks: Mapping[str, torch.Tensor]) -> None:
    """Set each masked kernel's output to exactly zero in place (BN weight and bias, else conv)."""
    for layer in layers:
        if layer.name not in masks:
            continue
        off = masks[layer.name].to(layer.conv.weight.device) == 0
        if not off.any():
            continue
        if layer.norm is not None:
            if layer.norm.weight is None:
                raise UnsupportedModelError(f"BN {layer.norm_name} after {layer.name} has no affine parameters; "
                                            "supported: BatchNorm2d(affine=True)")
            layer.norm.weight[off] = 0
            layer.norm.bias[off] = 0
        else:
            layer.conv.weight[off] = 0
            if layer.conv.bias is not None:
                layer.conv.bias[off] = 0


def extract(model: nn.Module, masks: Mapping[str, torch.Tensor], on_empty: str = "raise",
            image_size: int = 32, layers: list[MaskableLayer] | None = None,
            align: int = 1) -> tuple[nn.Module, ExtractionReport]:
    """A smaller copy of ``model`` (eval mode) that computes what ``model`` gated by ``masks`` computes.

    Args:
        model: a CNN; it is not modified.
        masks: ``{conv layer name: (C,) 0/1}``; unnamed layers keep all kernels.
        on_empty: ``"raise"`` (default) or ``"keep_one"`` (keep one zeroed channel, recorded).
        image_size: spatial size of the example input used to trace the dependency graph.
        align: keep (zeroed) channels so every extracted width is a multiple of ``align`` where
            the original width allows; vectorised CPU/GPU kernels often run faster on such widths.

    Returns:
        ``(extracted, report)``.
    """
    import torch_pruning as tp

    if on_empty not in EXTRACT_ON_EMPTY:
        raise ValueError(f"on_empty={on_empty!r} is not allowed; use one of {EXTRACT_ON_EMPTY}")
    net = copy.deepcopy(model).eval()
    if hasattr(net, "modtools_config"):  # the extracted network is no longer that architecture
        del net.modtools_config
    example = _example(net, image_size)
    all_layers = find_maskable_layers(net, example, allow_grouped=True)
    names = [layer.name for layer in (layers or all_layers)]
    layers = [layer for layer in all_layers if layer.name in set(names)]
    by_name = {layer.name: layer for layer in all_layers}
    if align < 1:
        raise ValueError(f"align must be a positive integer, got {align}")
    report = ExtractionReport(on_empty=on_empty, align=align)
    checked: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        if name not in by_name:
            raise UnknownNameError(
                f"mask names layer {name!r}, which is not a maskable layer; maskable layers: {list(by_name)}")
        m = check_mask(by_name[name], mask, on_empty="allow")
        if not m.any():
            if on_empty == "raise":
                raise EmptyMaskError(f"the mask removes every kernel of layer {name}; pass on_empty='keep_one' "
                                     f"to keep one zeroed channel (options: {EXTRACT_ON_EMPTY})")
            report.empty_layers.append(name)
        checked[name] = m
    zero_masked(net, all_layers, checked)

    graph = tp.DependencyGraph().build_dependency(net, example_inputs=example)
    conv_by_module = {layer.conv: layer for layer in all_layers}
    plans: list[tuple[nn.Conv2d, list[int]]] = []
    seen: set[int] = set()
    for layer in all_layers:
        conv = layer.conv
        if id(conv) in seen or conv.groups != 1:
            continue
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
        keep_root = set()
        for item in group.items:
            dep = item.dep
            target = dep.target.module
            # Members are the convs (and linears) whose *outputs* the group removes; BN and
            # element-wise ops in the group follow them.
            if not graph.is_out_channel_pruning_fn(dep.handler) or not isinstance(target, (nn.Conv2d, nn.Linear)):
                continue
            seen.add(id(target))
            member = conv_by_module.get(target)
            mask = checked.get(member.name) if member is not None else None
            for idx, root in zip(item.idxs, item.root_idxs):
                if mask is None or mask[idx] != 0:
                    keep_root.add(root)
        remove = [c for c in range(conv.out_channels) if c not in keep_root]
        if len(remove) == conv.out_channels:  # only possible with on_empty="keep_one"
            remove = remove[1:]
        if align > 1:  # keep a few zeroed channels so the width is a multiple of `align`
            pad = min(len(remove), (-(conv.out_channels - len(remove))) % align)
            remove = remove[pad:]
        if remove:
            plans.append((conv, remove))
    for conv, remove in plans:
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=remove)
        group.prune()

    for layer in all_layers:
        report.total[layer.name] = int(checked[layer.name].numel()) if layer.name in checked else layer.out_channels
        own = int(checked[layer.name].sum()) if layer.name in checked else layer.out_channels
        report.kept[layer.name] = own
        report.coupled_kept[layer.name] = layer.conv.out_channels - own
    return net, report


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
