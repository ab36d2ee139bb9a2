"""Folding frozen BatchNorms into the convs before them, for searches over a frozen model.

A BN in eval mode is a per-channel affine map, ``y = s·x + t`` with ``s = γ/√(var + ε)`` and
``t = β − μ·s``. When it directly consumes a conv's output (the pairing of
:func:`~modtools.layers.find_maskable_layers`), the pair computes the same function as one conv with
weights ``W·s`` and bias ``b·s + t``. A search that keeps the model frozen and only learns masks
(GradSplitter) then runs without BN's passes over the activations, forward and backward, which on
a CPU cost about a sixth of a search step. The outputs agree up to float rounding.

The mask (or gate) of a layer applies to the BN's output; on the folded copy it applies to the
conv's output, which is the same tensor. :func:`fold_norms_into_convs` works on a copy, checks the
copy against the original on a seeded input, and returns the original unchanged when they
disagree (a BN whose conv output also feeds another consumer, for example).
"""
from __future__ import annotations

import copy
from dataclasses import replace

import torch
import torch.nn as nn

from .layers import Follower, MaskableLayer


def frozen_norm_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(scale, shift)`` of an eval-mode ``BatchNorm2d`` with running statistics, else ``None``."""
    if not isinstance(norm, nn.BatchNorm2d) or norm.training or norm.running_var is None:
        return None
    scale = (norm.running_var + norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale + (norm.bias if norm.bias is not None else 0.0)
    return scale.detach(), shift.detach()


@torch.no_grad()
def scale_conv_outputs_(conv: nn.Conv2d, scale: torch.Tensor) -> None:
    """Multiply ``conv``'s output channels by ``scale`` in place (its weights and bias)."""
    conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.ndim - 1))))
    if conv.bias is not None:
        conv.bias.mul_(scale)


@torch.no_grad()
def _fold_into_bias(model: nn.Module, conv: nn.Conv2d, norm_name: str, norm: nn.Module) -> bool:
    affine = frozen_norm_affine(norm)
    if affine is None:
        return False
    scale, shift = affine
    scale_conv_outputs_(conv, scale)
    if conv.bias is None:
        conv.bias = nn.Parameter(shift.clone().to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.add_(shift)
    model.set_submodule(norm_name, nn.Identity())
    return True


@torch.no_grad()
def fold_norms_into_convs(model: nn.Module, layers: list[MaskableLayer], example: torch.Tensor,
                          rtol: float = 1e-3, atol: float = 1e-4) -> tuple[nn.Module, list[MaskableLayer], int]:
    """A copy of the eval-mode ``model`` whose BNs paired with ``layers`` (and their followers) are
    folded into their convs, the layers of that copy (same names, no norms), and how many BNs were
    folded. ``example`` (one input batch, any values) fixes the input shape of the check: the copy
    must give the original's outputs within ``rtol``/``atol`` on a seeded input of that shape, else
    ``(model, layers, 0)`` is returned unchanged."""
    units = [unit for layer in layers for unit in (layer, *layer.followers)]
    if model.training or not any(frozen_norm_affine(unit.norm) is not None for unit in units):
        return model, layers, 0
    folded = copy.deepcopy(model)
    modules = dict(folded.named_modules())
    count, new_layers = 0, []
    for layer in layers:
        conv = modules[layer.name]
        norm_name = layer.norm_name
        if norm_name is not None and _fold_into_bias(folded, conv, norm_name, modules[norm_name]):
            count, norm_name = count + 1, None
        followers = []
        for f in layer.followers:
            f_conv, f_norm = modules[f.name], f.norm_name
            if f_norm is not None and _fold_into_bias(folded, f_conv, f_norm, modules[f_norm]):
                count, f_norm = count + 1, None
            followers.append(Follower(f.name, f_conv, f_norm, None if f_norm is None else modules[f_norm]))
        new_layers.append(replace(layer, conv=conv, norm_name=norm_name,
                                  norm=None if norm_name is None else modules[norm_name], followers=followers))
    g = torch.Generator().manual_seed(0)
    x = torch.randn((4, *example.shape[1:]), generator=g).to(device=example.device, dtype=example.dtype)
    want, got = model(x), folded(x)
    if not torch.allclose(got, want, rtol=rtol, atol=atol * float(want.abs().max().clamp_min(1.0))):
        return model, layers, 0
    return folded, new_layers, count
