"""One mask machinery for all approaches.

A *maskable layer* (:mod:`modtools.layers`) is a ``Conv2d``, together with the ``BatchNorm2d``
that directly consumes its output when there is one, and the depthwise convs whose channels follow
its kernels. Gating a layer multiplies its output channels (the BN output, else the conv output)
by a per-channel value, through a forward hook, so it works on any CNN whatever its Python control
flow; the same value also gates each follower's output. Four kinds of gate share this hook point:

* :class:`StaticMasks`: one mask per layer (``{layer: (C,)}``); a module is such a set of masks.
* :class:`StackedMasks`: N masks per layer (``{layer: (N, C)}``); :func:`batched_forward` runs N
  modules in one pass by repeating the input N times (outputs ``N × B × classes``). The model
  should be in eval mode (BN statistics are per sample then, so modules do not mix).
* :class:`InputGates`: gate values computed from the layer *input* by a small network per layer,
  per sample (MwT plugs its gate network in here through ``build_gate``).
* :class:`WeightMasks`: element-wise weight masks with a straight-through estimator (SeaM), as
  ``torch.nn.utils.parametrize`` parametrizations of conv/linear weights and biases.

An all-ones mask leaves outputs bit-identical (``x * 1.0 == x`` in IEEE arithmetic).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from . import gated_bn as fused_bn
from .errors import EmptyMaskError, MaskShapeError, UnknownNameError, UnsupportedModelError
from .layers import Follower, LayerDescription, MaskableLayer, find_maskable_layers, layer_widths  # noqa: F401

ON_EMPTY = ("raise", "allow")


# --------------------------------------------------------------------------------------------
# Checks and helpers
# --------------------------------------------------------------------------------------------

def check_mask(layer: MaskableLayer, mask: torch.Tensor, stacked: bool = False, binary: bool = True,
               on_empty: str = "raise") -> torch.Tensor:
    """Validate one layer's mask: shape ``(C,)`` (or ``(N, C)`` when stacked), finite, 0/1 if
    ``binary``, and not all zeros (unless ``on_empty="allow"``). Returns it as float."""
    if on_empty not in ON_EMPTY:
        raise ValueError(f"on_empty={on_empty!r} is not allowed; use one of {ON_EMPTY}")
    mask = torch.as_tensor(mask)
    want = f"(N, {layer.out_channels})" if stacked else f"({layer.out_channels},)"
    if mask.ndim != (2 if stacked else 1) or mask.shape[-1] != layer.out_channels:
        raise MaskShapeError(f"mask for layer {layer.name} has shape {tuple(mask.shape)}, expected {want}")
    if mask.dtype != torch.bool and not mask.is_floating_point() and mask.dtype not in (torch.int64, torch.int32, torch.uint8):
        raise MaskShapeError(f"mask for layer {layer.name} has dtype {mask.dtype}; expected bool or float")
    m = mask.float() if mask.dtype != torch.float32 else mask
    if not torch.isfinite(m).all():
        raise MaskShapeError(f"mask for layer {layer.name} contains NaN or inf")
    if binary and not ((m == 0) | (m == 1)).all():
        bad = m[(m != 0) & (m != 1)][0].item()
        raise MaskShapeError(f"mask for layer {layer.name} is not binary (found {bad}); expected values 0 or 1")
    if on_empty == "raise":
        rows = m.reshape(-1, layer.out_channels)
        empty = (rows == 0).all(dim=1)
        if empty.any():
            which = f" (module {int(torch.nonzero(empty)[0])})" if stacked else ""
            raise EmptyMaskError(f"the mask removes every kernel of layer {layer.name}{which}; "
                                 f"pass on_empty='allow' to accept it (options: {ON_EMPTY})")
    return m


def _layer_lookup(layers: list[MaskableLayer], masks: Mapping[str, torch.Tensor]) -> dict[str, MaskableLayer]:
    by_name = {layer.name: layer for layer in layers}
    unknown = [k for k in masks if k not in by_name]
    if unknown:
        raise UnknownNameError(f"masks name layers {unknown} that are not maskable layers; "
                               f"maskable layers: {list(by_name)}")
    return by_name


def ones_masks(layers: list[MaskableLayer], n: int | None = None) -> dict[str, torch.Tensor]:
    """All-ones masks (``(C,)`` per layer, or ``(n, C)`` when ``n`` is given)."""
    shape = (lambda c: (c,)) if n is None else (lambda c: (n, c))
    return {layer.name: torch.ones(shape(layer.out_channels)) for layer in layers}


def random_masks(layers: list[MaskableLayer], keep: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random binary masks keeping ``round(keep * C)`` kernels (at least one) per layer."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    g = torch.Generator().manual_seed(seed)
    out = {}
    for layer in layers:
        c = layer.out_channels
        k = max(1, int(round(keep * c)))
        m = torch.zeros(c)
        m[torch.randperm(c, generator=g)[:k]] = 1
        out[layer.name] = m
    return out


class BinarizeSTE(torch.autograd.Function):
    """Forward: ``1[score > 0]``. Backward: the incoming gradient clipped to [-1, 1] (straight through)."""

    generate_vmap_rule = True   # elementwise, so it also works under torch.func.vmap (stacked scores)

    @staticmethod
    def forward(score):
        return (score > 0).to(score.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(-1.0, 1.0)


def binarize_ste(score: torch.Tensor) -> torch.Tensor:
    """Hard step ``score > 0`` with a straight-through gradient clipped to [-1, 1]."""
    return BinarizeSTE.apply(score)


# --------------------------------------------------------------------------------------------
# Channel gating through forward hooks
# --------------------------------------------------------------------------------------------

class ChannelGating:
    """Installs a forward hook on each layer's output module that multiplies the output by the gate.

    ``gate(layer, out, x_in)`` returns the gated output (``out`` times a tensor broadcastable to
    it, or reshaped by the gate itself); ``x_in`` is the conv's input when ``needs_input`` is set,
    else ``None``. ``follow(layer, out)``, when given, gates the output of each of the layer's
    followers (depthwise convs whose channels are the layer's kernels) the same way; a gate that
    only observes outputs passes none. Use as a context manager or call :meth:`remove`.

    ``gated_bn(layer, x_in, bn, x)``, when given, computes a gated layer's BN output and its gate in
    one step: a layer whose output module is a plain ``BatchNorm2d`` then calls it instead of BN's own
    forward and a hook multiplying its output (:mod:`modtools.gated_bn`, fewer passes over the
    activation in training); other layers use ``gate`` as before.
    """

    def __init__(self, model: nn.Module, layers: list[MaskableLayer],
                 gate: Callable[[MaskableLayer, torch.Tensor, torch.Tensor | None], torch.Tensor],
                 needs_input: bool = False,
                 follow: Callable[[MaskableLayer, torch.Tensor], torch.Tensor] | None = None,
                 gated_bn: Callable[[MaskableLayer, torch.Tensor | None, nn.Module, torch.Tensor], torch.Tensor]
                 | None = None):
        self.model, self.layers, self.gate, self.follow = model, layers, gate, follow
        self._inputs: dict[str, torch.Tensor] = {}
        self._handles = []
        self._fused: list[nn.Module] = []
        for layer in layers:
            if needs_input:
                self._handles.append(layer.conv.register_forward_pre_hook(self._stash(layer)))
            if gated_bn is not None and fused_bn.can_fuse(layer.output_module):
                fused_bn.attach(layer.output_module, self._fused_gate(layer, gated_bn))
                self._fused.append(layer.output_module)
            else:
                self._handles.append(layer.output_module.register_forward_hook(self._apply(layer)))
            if follow is not None:
                for follower in getattr(layer, "followers", ()):
                    self._handles.append(follower.output_module.register_forward_hook(self._apply_follower(layer)))

    def _stash(self, layer):
        def hook(mod, inp):
            self._inputs[layer.name] = inp[0]
        return hook

    def _apply(self, layer):
        def hook(mod, inp, out):
            return self.gate(layer, out, self._inputs.pop(layer.name, None))
        return hook

    def _fused_gate(self, layer, gated_bn):
        def forward(bn, x):
            return gated_bn(layer, self._inputs.pop(layer.name, None), bn, x)
        return forward

    def _apply_follower(self, layer):
        def hook(mod, inp, out):
            return self.follow(layer, out)
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        for bn in self._fused:
            fused_bn.detach(bn)
        self._handles, self._fused = [], []
        self._inputs.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


class StaticMasks:
    """One 0/1 mask per layer: ``{layer name: (C,)}``; layers not named stay unmasked."""

    def __init__(self, layers: list[MaskableLayer], masks: Mapping[str, torch.Tensor], on_empty: str = "raise"):
        by_name = _layer_lookup(layers, masks)
        self.layers = [by_name[k] for k in masks]
        self.masks = {k: check_mask(by_name[k], v, on_empty=on_empty) for k, v in masks.items()}

    def __call__(self, layer, out, x_in):
        m = self.masks[layer.name].to(device=out.device, dtype=out.dtype)
        return out * m.view(1, -1, *([1] * (out.ndim - 2)))

    def follow(self, layer, out):
        return self(layer, out, None)

    def install(self, model: nn.Module) -> ChannelGating:
        return ChannelGating(model, self.layers, self, follow=self.follow)


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], layers: list[MaskableLayer] | None = None,
                on_empty: str = "raise") -> ChannelGating:
    """Gate ``model`` with one static mask per layer until the returned handle is removed.

    ``with apply_masks(model, masks): y = model(x)``.
    """
    layers = layers if layers is not None else find_maskable_layers(model)
    return StaticMasks(layers, masks, on_empty).install(model)


class StackedMasks:
    """N masks per layer, ``{layer name: (N, C)}``, applied to an input repeated N times.

    The values may carry gradients (e.g. :func:`binarize_ste` of learnable scores); set
    ``binary=False`` to skip the 0/1 check (it is skipped anyway for tensors that require grad).
    """

    def __init__(self, layers: list[MaskableLayer], masks: Mapping[str, torch.Tensor], binary: bool = True,
                 on_empty: str = "allow", expand_at: str | None = None):
        self.expand_at = expand_at  # the layer whose output is repeated N times (input not repeated)
        by_name = _layer_lookup(layers, {**masks, **({expand_at: None} if expand_at else {})})
        self.layers = [by_name[k] for k in masks]
        if expand_at is not None and expand_at not in masks:
            self.layers.append(by_name[expand_at])
        sizes = {tuple(v.shape)[:1] for v in masks.values()}
        if len(sizes) != 1:
            raise MaskShapeError(f"stacked masks disagree on N: first dimensions {sorted(sizes)}")
        self.n = next(iter(sizes))[0] if sizes else 1
        self.masks = {}
        for k, v in masks.items():
            if v.requires_grad:
                if v.ndim != 2 or v.shape[1] != by_name[k].out_channels:
                    raise MaskShapeError(f"mask for layer {k} has shape {tuple(v.shape)}, "
                                         f"expected (N, {by_name[k].out_channels})")
                self.masks[k] = v
            else:
                self.masks[k] = check_mask(by_name[k], v, stacked=True, binary=binary, on_empty=on_empty)

    def __call__(self, layer, out, x_in):
        if layer.name == self.expand_at:
            out = out.unsqueeze(0).expand(self.n, *out.shape).reshape(self.n * out.shape[0], *out.shape[1:])
            if layer.name not in self.masks:
                return out
        return self.follow(layer, out)

    def follow(self, layer, out):
        if layer.name not in self.masks:
            return out
        m = self.masks[layer.name].to(device=out.device, dtype=out.dtype)
        nb = out.shape[0]
        if nb % self.n:
            raise MaskShapeError(f"layer {layer.name}: batch of {nb} is not a multiple of N={self.n} modules; "
                                 "run the model through batched_forward")
        shaped = out.view(self.n, nb // self.n, *out.shape[1:])
        return (shaped * m.view(self.n, 1, -1, *([1] * (out.ndim - 2)))).view_as(out)

    def install(self, model: nn.Module) -> ChannelGating:
        return ChannelGating(model, self.layers, self, follow=self.follow)


@torch.no_grad()
def bypassable_layers(model: nn.Module, layers: list[MaskableLayer], input_shape, seed: int = 0) -> list[str]:
    """The layers whose kernels can all be masked while the model's output still depends on its input:
    layers on a residual branch (the skip connection carries the input past them), not on a plain path
    (where an empty layer cuts the network). Found by masking each layer entirely (eval mode) and
    comparing the outputs for two seeded random inputs."""
    g = torch.Generator().manual_seed(seed)
    p = next(model.parameters())
    x = torch.rand(2, *input_shape, generator=g).to(p.device, p.dtype)
    was = model.training
    model.eval()
    out = []
    try:
        for layer in layers:
            with apply_masks(model, {layer.name: torch.zeros(layer.out_channels)}, layers, on_empty="allow"):
                y = model(x)
            if not torch.allclose(y[0], y[1], rtol=1e-5, atol=1e-6):
                out.append(layer.name)
    finally:
        model.train(was)
    return out


def batched_forward(model: nn.Module, x: torch.Tensor, masks: Mapping[str, torch.Tensor],
                    layers: list[MaskableLayer] | None = None, binary: bool = True,
                    share_first: bool = False, expand_at: str | None = None) -> torch.Tensor:
    """Run N masked copies of ``model`` on ``x`` in one pass; returns ``N × B × outputs``.

    With ``share_first``, the first maskable layer runs once on ``x`` and its output is repeated
    N times before its mask (valid when every path from the input goes through that layer, as in
    the zoo and torchvision CNNs; otherwise shapes disagree and PyTorch raises).
    ``expand_at`` names another layer to repeat at: everything before it runs once. It is valid
    when every masked layer runs after it and every path from the input goes through it (a plain
    network); a skip connection around it makes the shapes disagree, and PyTorch raises.
    """
    layers = layers if layers is not None else find_maskable_layers(model)
    if expand_at is not None or share_first:
        stacked = StackedMasks(layers, masks, binary=binary, expand_at=expand_at or layers[0].name)
        xn = x
    else:
        stacked = StackedMasks(layers, masks, binary=binary)
        xn = x.unsqueeze(0).expand(stacked.n, *x.shape).reshape(stacked.n * x.shape[0], *x.shape[1:])
    with stacked.install(model):
        y = model(xn)
    return y.view(stacked.n, x.shape[0], *y.shape[1:])


@contextmanager
def channels_last_on_cpu(model: nn.Module, device: torch.device | str):
    """Within the block, keep ``model``'s 4-D weights in channels-last layout when running on a CPU.

    The batched module passes (N × B images) are dominated by convolutions and max-pooling, and
    PyTorch's CPU pooling is several times faster in channels-last layout; results agree up to
    float rounding. The layout is restored afterwards; a model already in a non-default layout,
    or a GPU run, is left alone.
    """
    convert = torch.device(device).type == "cpu" and all(
        p.is_contiguous() for p in model.parameters() if p.ndim == 4)
    if convert:
        model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        if convert:
            model.to(memory_format=torch.contiguous_format)


class InputGates(nn.Module):
    """Input-dependent gates: per layer, a network maps the conv's input ``(B, C_in, H, W)`` to
    per-sample channel gates ``(B, C_out)`` that scale the layer's output.

    ``build_gate(layer)`` returns that network (MwT supplies its own). The default is global
    average pooling → Linear → ReLU → Linear → sigmoid. The gates of the last forward pass are
    kept in :attr:`last` (``{layer: (B, C_out)}``) for losses and metrics.
    """

    def __init__(self, layers: list[MaskableLayer],
                 build_gate: Callable[[MaskableLayer], nn.Module] | None = None):
        super().__init__()
        self.layers = layers
        build_gate = build_gate or default_gate
        self.nets = nn.ModuleDict({_key(layer.name): build_gate(layer) for layer in layers})
        self.last: dict[str, torch.Tensor] = {}
        self.binary = False

    def gate_values(self, layer: MaskableLayer, x_in: torch.Tensor) -> torch.Tensor:
        """This layer's gates (``B × C_out``) from its input, kept in :attr:`last`."""
        g = self.nets[_key(layer.name)](x_in)
        if self.binary:
            g = (g > 0).to(g.dtype)
        self.last[layer.name] = g
        return g

    def apply_gate(self, layer: MaskableLayer, out: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
        """The hook body: compute this layer's gates from its input and scale its output."""
        g = self.gate_values(layer, x_in)
        if self.binary:
            g = g.to(out.dtype)
        return out * g.view(*g.shape, *([1] * (out.ndim - 2)))

    def gated_batch_norm(self, layer: MaskableLayer, x_in: torch.Tensor, bn: nn.BatchNorm2d,
                         x: torch.Tensor) -> torch.Tensor:
        """``bn(x)`` scaled by this layer's gates (from ``x_in``) in one step: :func:`modtools.gated_bn.batch_norm_gated`."""
        g = self.gate_values(layer, x_in)
        return fused_bn.batch_norm_gated(bn, x, g.to(x.dtype) if self.binary else g)

    def follow_gate(self, layer: MaskableLayer, out: torch.Tensor) -> torch.Tensor:
        """A follower's output takes the gates its layer computed in this pass."""
        g = self.last[layer.name]
        return out * g.view(*g.shape, *([1] * (out.ndim - 2)))

    def install(self, model: nn.Module, fuse_batchnorm: bool = True) -> ChannelGating:
        """Gate ``model``'s layers until the handle is removed; with ``fuse_batchnorm`` a gate on a plain
        ``BatchNorm2d`` is computed with it in one step (the same values; see :mod:`modtools.gated_bn`)."""
        return ChannelGating(model, self.layers, self.apply_gate, needs_input=True, follow=self.follow_gate,
                             gated_bn=self.gated_batch_norm if fuse_batchnorm else None)


def _key(name: str) -> str:
    return name.replace(".", "__")


def default_gate(layer: MaskableLayer) -> nn.Module:
    cin, cout = layer.conv.in_channels, layer.out_channels
    hidden = max(4, cout // 2)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, hidden, bias=False), nn.ReLU(),
                         nn.Linear(hidden, cout), nn.Sigmoid())


# --------------------------------------------------------------------------------------------
# Weight-level masks (SeaM)
# --------------------------------------------------------------------------------------------

class _ScoreMask(nn.Module):
    """Parametrization ``W ↦ W ⊙ 1[score > 0]`` with a straight-through gradient into ``score``."""

    def __init__(self, shape: torch.Size, device=None, init: float = 1.0):
        super().__init__()
        self.score = nn.Parameter(torch.full(shape, float(init), device=device))
        self.hard: torch.Tensor | None = None   # ``score > 0`` of the current step (WeightMasks.binarized)

    def kept(self) -> torch.Tensor:
        """``score > 0`` (bool), from the step's cache when there is one."""
        return self.hard if self.hard is not None else self.score.detach() > 0

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return MaskedWeightSTE.apply(w, self.score, self.hard)


class MaskedWeightSTE(torch.autograd.Function):
    """``W ⊙ 1[score > 0]`` in one function: the same values and score gradient as ``W * binarize_ste(score)``
    (``clamp(grad · W, −1, 1)``), with fewer passes over the weights; ``W`` (frozen) gets no gradient.
    ``hard``, when given, is ``score > 0`` already computed."""

    @staticmethod
    def forward(ctx, w, score, hard=None):
        ctx.save_for_backward(w)
        return torch.where(score > 0 if hard is None else hard, w, torch.zeros((), dtype=w.dtype, device=w.device))

    @staticmethod
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        return None, (grad * w).clamp_(-1.0, 1.0), None


class KeptShareSTE(torch.autograd.Function):
    """``Σ 1[score > 0] / Σ numel`` over several score tensors, with the straight-through gradient of
    ``binarize_ste`` (``grad / Σ numel`` for every score, already inside [-1, 1]) and no full-size temporaries.
    ``hard``, when not ``None``, holds each score's ``score > 0`` already computed."""

    @staticmethod
    def forward(ctx, hard, *scores):
        ctx.shapes = [s.shape for s in scores]
        ctx.total = sum(s.numel() for s in scores)
        kept = hard if hard is not None else [s > 0 for s in scores]
        return sum(torch.count_nonzero(k) for k in kept).to(scores[0].dtype) / ctx.total

    @staticmethod
    def backward(ctx, grad):
        g = (grad / ctx.total).clamp(-1.0, 1.0)
        return (None, *(g.expand(shape) for shape in ctx.shapes))


class WeightMasks:
    """Element-wise masks on the weights (and biases) of conv and linear layers.

    Each masked tensor gets a learnable score of its shape, initialised to ``init`` (1: everything
    kept); the forward uses ``W ⊙ 1[score > 0]``; the backward is straight-through with the
    gradient clipped to [-1, 1]. The original weights are frozen. :meth:`remove` restores the model.
    """

    def __init__(self, model: nn.Module, include: Callable[[str, nn.Module], bool] | None = None,
                 mask_bias: bool = True, init: float = 1.0):
        self.model = model
        self.targets: list[tuple[str, nn.Module, str]] = []
        for name, mod in model.named_modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and (include is None or include(name, mod)):
                for pname in ("weight", "bias") if mask_bias else ("weight",):
                    p = getattr(mod, pname, None)
                    if p is None:
                        continue
                    p.requires_grad_(False)
                    parametrize.register_parametrization(mod, pname, _ScoreMask(p.shape, p.device, init))
                    self.targets.append((name, mod, pname))
        if not self.targets:
            raise UnsupportedModelError(f"{type(model).__name__} has no conv or linear layer to mask")

    def scores(self) -> dict[str, torch.Tensor]:
        return {f"{n}.{p}": m.parametrizations[p][0].score for n, m, p in self.targets}

    def _parts(self) -> list[_ScoreMask]:
        return [m.parametrizations[p][0] for _, m, p in self.targets]

    @contextmanager
    def binarized(self):
        """Within the block every ``score > 0`` is computed once and shared by the masked forward,
        :meth:`retention` and :meth:`kernels_alive` (one pass over the scores instead of three). The
        scores must not change inside the block: step the optimiser after it (the backward may run
        inside or after; it does not read the cache)."""
        parts = self._parts()
        for part in parts:
            part.hard = part.score.detach() > 0
        try:
            yield self
        finally:
            for part in parts:
                part.hard = None

    def parameters(self):
        return [s for s in self.scores().values()]

    def masks(self) -> dict[str, torch.Tensor]:
        """The current binary masks ``{"layer.weight": 0/1 tensor}``."""
        return {k: (s.detach() > 0).float() for k, s in self.scores().items()}

    def retention(self) -> torch.Tensor:
        """The weight retention rate: kept / all masked scalars (weights and biases), differentiable
        through the straight-through estimator."""
        parts = self._parts()
        hard = [p.hard for p in parts] if all(p.hard is not None for p in parts) else None
        return KeptShareSTE.apply(hard, *(p.score for p in parts))

    @torch.no_grad()
    def kernels_alive(self, layers: list[MaskableLayer]) -> dict[str, torch.Tensor]:
        """Per maskable layer, 1 for each kernel (output channel) that keeps some weight or its bias."""
        out = {}
        mods = {m for _, m, _ in self.targets}
        for layer in layers:
            if layer.conv not in mods:
                continue
            # bool any(1) is ten times slower on a CPU than the max of the same bytes read as uint8
            alive = layer.conv.parametrizations["weight"][0].kept().flatten(1).view(torch.uint8).amax(1) > 0
            if "bias" in getattr(layer.conv, "parametrizations", {}):
                alive |= layer.conv.parametrizations["bias"][0].kept()
            out[layer.name] = alive.float()
        return out

    def remove(self, bake: bool = False) -> None:
        """Remove the parametrizations; with ``bake=True`` the masked weights are kept."""
        for _, mod, pname in self.targets:
            parametrize.remove_parametrizations(mod, pname, leave_parametrized=bake)
        self.targets = []
