"""Finding the maskable layers of any CNN: one description that every approach and extraction share.

A *maskable layer* is a ``Conv2d`` whose output channels (kernels) a module may keep or drop,
together with the ``BatchNorm2d`` that directly consumes its output when there is one. The layers
are found on any ``nn.Module`` by one traced forward pass (forward hooks, so Python control flow is
no obstacle) and by Torch-Pruning's dependency graph, which tells which channels of which layers
are coupled. The rules, applied in this order:

* **BN pairing.** A BN is paired with a conv when the BN's input *is* the conv's output tensor.
  The traced outputs are kept alive during the pass, so a freed tensor's ``id`` can never be
  matched to a later tensor (the DenseNet case).
* **Depthwise convs follow.** A depthwise conv (``groups == in == out channels``) computes output
  channel k from input channel k only, so it has no kernels of its own to choose: it is a
  *follower* of the earliest non-depthwise conv coupled with its channels (in practice the conv that
  feeds it). Gating kernel k of that leader also gates channel k after the follower (after its BN),
  and extraction removes both together. A depthwise conv coupled with no other conv is a maskable
  layer of its own.
* **Grouped convs** (``1 < groups``, not depthwise) are maskable; extraction removes the same
  number of channels from every group, keeping zeroed channels where the groups would differ.
* **Excluded, with the reason recorded** in :attr:`LayerDescription.excluded`:
  the conv whose channels are the model's outputs (a conv classifier, as in SqueezeNet: masking
  logits is meaningless); convs whose channels a ``LayerNorm``/``GroupNorm`` normalises together
  (removing a channel would change the statistics of the others, so no module could be exact);
  and the names the caller passes in ``exclude``.
* **Not taken apart**, with :class:`~modtools.errors.UnsupportedModelError`: a model with no conv;
  a model with attention (multi-head attention, or a softmax over token products: ViT, Swin,
  MaxViT); a model whose channel flow Torch-Pruning cannot map (a channel shuffle, as in
  ShuffleNet); a model where no maskable layer is left.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from .errors import UnknownNameError, UnsupportedModelError

CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm)
LAYER_RULE = ("conv kernels are maskable; BN paired by tensor identity; depthwise convs follow the earliest "
              "non-depthwise conv coupled with them; grouped convs lose the same number of channels per group; "
              "excluded: the model's output conv and convs normalised by LayerNorm/GroupNorm")


@dataclass
class Follower:
    """A depthwise conv whose channels follow a maskable layer's kernels, with its BN."""

    name: str
    conv: nn.Conv2d
    norm_name: str | None = None
    norm: nn.BatchNorm2d | None = None

    @property
    def output_module(self) -> nn.Module:
        return self.norm if self.norm is not None else self.conv


@dataclass
class MaskableLayer:
    """A conv layer whose output channels (kernels) can be gated, the BN that follows it, and the
    depthwise convs whose channels follow its kernels."""

    name: str
    conv: nn.Conv2d
    norm_name: str | None = None
    norm: nn.BatchNorm2d | None = None
    followers: list[Follower] = field(default_factory=list)

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    @property
    def output_module(self) -> nn.Module:
        """The module whose output is gated: the BN if there is one, else the conv."""
        return self.norm if self.norm is not None else self.conv

    @property
    def groups(self) -> int:
        return self.conv.groups


class LayerDescription(list):
    """The maskable layers of a model in execution order (a ``list`` of :class:`MaskableLayer`),
    plus what was left out and why (``excluded``: conv name → reason) and the followers
    (``followers``: depthwise conv name → the layer it follows)."""

    def __init__(self, layers: Iterable[MaskableLayer] = (), excluded: dict[str, str] | None = None,
                 followers: dict[str, str] | None = None):
        super().__init__(layers)
        self.excluded = dict(excluded or {})
        self.followers = dict(followers or {})
        self.rule = LAYER_RULE

    def to_dict(self) -> dict:
        """A JSON-able summary (for reports and module cards)."""
        return {"layers": [layer.name for layer in self], "excluded": self.excluded, "followers": self.followers,
                "grouped": {layer.name: layer.groups for layer in self if layer.groups > 1}, "rule": self.rule}


def default_input(model: nn.Module, size: int = 32) -> torch.Tensor:
    """Zeros of shape ``1 × C × size × size`` for the model's first conv, on its device and dtype."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise UnsupportedModelError(f"{type(model).__name__} has no Conv2d layer; modtools decomposes CNNs "
                                    "built of nn.Conv2d layers")
    p = next(model.parameters())
    return torch.zeros(1, first.in_channels, size, size, device=p.device, dtype=p.dtype)


# --------------------------------------------------------------------------------------------
# The traced pass: execution order, BN pairing, attention
# --------------------------------------------------------------------------------------------

class _OpWatch(TorchFunctionMode):
    """Records, with the module running them, attention-like calls and channel shuffles (a view or
    reshape that splits the channel axis of a 4-D activation) during a forward pass."""

    def __init__(self, stack: list, names: dict, attention: list, shuffles: list):
        super().__init__()
        self.stack, self.names, self.attention, self.shuffles = stack, names, attention, shuffles

    def _where(self) -> str:
        return (self.names.get(self.stack[-1], type(self.stack[-1]).__name__) if self.stack else "") or "the model"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        out = func(*args, **(kwargs or {}))
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name in ("scaled_dot_product_attention", "multi_head_attention_forward") or (
                name == "softmax" and first is not None and first.ndim >= 3):
            self.attention.append(f"{name} in {self._where()}")
        elif name in ("view", "reshape", "unflatten") and first is not None and first.ndim == 4 \
                and isinstance(out, torch.Tensor) and out.ndim >= 5:
            self.shuffles.append(f"{name} of {tuple(first.shape)} to {tuple(out.shape)} in {self._where()}")
        return out


@torch.no_grad()
def _trace(model: nn.Module, x: torch.Tensor) -> tuple[list[nn.Conv2d], dict, list[str], list[str]]:
    names = {m: n for n, m in model.named_modules()}
    order: list[nn.Conv2d] = []
    alive: list[torch.Tensor] = []           # keeps every traced output alive: ids stay unique
    producer: dict[int, nn.Conv2d] = {}
    norm_of: dict[nn.Conv2d, nn.BatchNorm2d] = {}
    stack: list[nn.Module] = []
    attention: list[str] = []
    shuffles: list[str] = []

    def conv_hook(mod, inp, out):
        if mod not in order:
            order.append(mod)
        alive.append(out)
        producer[id(out)] = mod

    def bn_hook(mod, inp, out):
        conv = producer.get(id(inp[0]))
        if conv is not None and conv not in norm_of and mod.num_features == conv.out_channels:
            norm_of[conv] = mod

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(lambda mod, inp: stack.append(mod)))
        handles.append(m.register_forward_hook(lambda mod, inp, out: stack.pop() and None))
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.BatchNorm2d):
            handles.append(m.register_forward_hook(bn_hook))
    was_training = model.training
    model.eval()
    try:
        with _OpWatch(stack, names, attention, shuffles):
            model(x)
    except Exception as exc:
        raise UnsupportedModelError(f"{type(model).__name__} fails on an example input of shape {tuple(x.shape)} "
                                    f"({type(exc).__name__}: {exc}); pass an example_input (or image_size) the "
                                    "model accepts") from None
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return order, norm_of, attention, shuffles


# --------------------------------------------------------------------------------------------
# Coupling through Torch-Pruning's dependency graph
# --------------------------------------------------------------------------------------------

def _traced_op_near(exc: BaseException, names: dict) -> str:
    """The nearest named layer before the graph node where Torch-Pruning failed, if one is found."""
    tb, node = exc.__traceback__, None
    while tb is not None:
        for key in ("reshape_node", "node"):
            cand = tb.tb_frame.f_locals.get(key)
            if cand is not None and hasattr(cand, "inputs"):
                node = cand
        tb = tb.tb_next
    if node is None:
        return ""
    seen, frontier = set(), [node]
    while frontier:
        nxt = []
        for n in frontier:
            if id(n) in seen:
                continue
            seen.add(id(n))
            if n.module in names and names[n.module]:
                return f"{type(node.module).__name__.strip('_')} after layer {names[n.module]}"
            nxt.extend(getattr(n, "inputs", []))
        frontier = nxt
    return type(node.module).__name__.strip("_")


def dependency_graph(model: nn.Module, x: torch.Tensor, conv_pruner=None):
    """Torch-Pruning's dependency graph of ``model`` traced on ``x``; failures become
    :class:`UnsupportedModelError` naming the operation (parameters are made trainable for the
    trace, which autograd needs, and restored). ``conv_pruner`` replaces the graph's pruner of
    (non-depthwise) convs."""
    import torch_pruning as tp

    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph()
            if conv_pruner is not None:
                graph.REGISTERED_PRUNERS[tp.ops.OPTYPE.CONV] = conv_pruner
                pruners = [p for p in graph.REGISTERED_PRUNERS.values() if p is not None]
                graph._in_channel_pruning_fn = {p.prune_in_channels for p in pruners}
                graph._out_channel_pruning_fn = {p.prune_out_channels for p in pruners}
            return graph.build_dependency(model, example_inputs=x)
    except Exception as exc:
        names = {m: n for n, m in model.named_modules()}
        where = _traced_op_near(exc, names)
        hint = (" A channel shuffle (view → transpose → reshape of the channel axis, as in ShuffleNet) maps "
                "channels in a way Torch-Pruning cannot follow.") if "Reshape" in where or isinstance(
                    exc, ZeroDivisionError) else ""
        raise UnsupportedModelError(
            f"{type(model).__name__}: the channel dependencies cannot be traced at {where or 'an operation'} "
            f"({type(exc).__name__}: {exc}).{hint} Supported: convs (plain, grouped, depthwise), BatchNorm, "
            "element-wise activations, pooling, additions, multiplications, concatenations and flatten") from None
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def grouped_conv_pruner():
    from torch_pruning.pruner.function import ConvPruner

    class _GroupedConvPruner(ConvPruner):
        """Torch-Pruning's conv pruner, except that the input channels of a grouped conv may be
        removed at any positions as long as every group loses the same number (Torch-Pruning's own
        assumes the same positions in every group)."""

        def prune_in_channels(self, layer, idxs):
            if layer.groups == 1:
                return super().prune_in_channels(layer, idxs)
            g, drop = layer.groups, set(int(i) for i in idxs)
            ipg, opg = layer.in_channels // g, layer.out_channels // g
            keep = [[i - j * ipg for i in range(j * ipg, (j + 1) * ipg) if i not in drop] for j in range(g)]
            if len({len(k) for k in keep}) != 1:
                raise UnsupportedModelError(f"uneven removal from the groups of a grouped conv ({layer}); "
                                            "this is a modtools bug, please report it")
            w = layer.weight.data
            new = torch.cat([w[j * opg:(j + 1) * opg][:, keep[j]] for j in range(g)])
            layer.weight = nn.Parameter(new, requires_grad=layer.weight.requires_grad)
            layer.in_channels -= len(drop)
            return layer

    return _GroupedConvPruner()


def pruning_group(graph, conv: nn.Conv2d, idxs: list[int] | None = None):
    """The dependency group that removing ``idxs`` (default: all) of ``conv``'s output channels touches."""
    fn = graph.get_pruner_of_module(conv).prune_out_channels
    return graph.get_pruning_group(conv, fn, idxs=list(range(conv.out_channels)) if idxs is None else idxs)


def coupled_items(graph, conv: nn.Conv2d) -> list:
    """The items of the dependency group that removing all of ``conv``'s output channels touches."""
    return list(pruning_group(graph, conv).items)


def is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


# --------------------------------------------------------------------------------------------
# The description
# --------------------------------------------------------------------------------------------

_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _structure_key(model: nn.Module) -> tuple:
    return tuple((n, id(m)) for n, m in model.named_modules())


def find_maskable_layers(model: nn.Module, example_input: torch.Tensor | None = None,
                         exclude: Iterable[str] = (), cache: bool = True) -> LayerDescription:
    """The maskable conv layers of ``model`` in execution order (see the module docstring for the rules).

    The analysis is cached per model object while its modules stay the same.

    Args:
        example_input: an input for the traced pass (default: the input of the last analysis of
            this model, else zeros of shape ``1×C×32×32``).
        exclude: conv names to leave out (e.g. a first layer an approach does not gate).
        cache: keep the analysis for later calls on this model. The cache holds the model alive
            (its dependency graph refers to it), so throw-away copies pass ``cache=False``.

    Raises:
        UnsupportedModelError: no conv, attention, untraceable channel flow, or no maskable layer left.
        UnknownNameError: ``exclude`` names a layer that is not a conv of the model.
    """
    exclude = tuple(exclude)
    key = _structure_key(model)
    cached = _CACHE.get(model)
    shape = None if example_input is None else (tuple(example_input.shape), example_input.device.type)
    if cached is None or cached[0] != key or (shape is not None and cached[1] != shape):
        x = example_input if example_input is not None else default_input(model)
        cached = (key, (tuple(x.shape), x.device.type), _describe(model, x))
        if cache:
            _CACHE[model] = cached
    order, norm_of, excluded, leader_of, names, graph = cached[2]
    unknown = set(exclude) - {names[c] for c in order}
    if unknown:
        raise UnknownNameError(f"exclude names {sorted(unknown)} are not conv layers of {type(model).__name__}; "
                               f"conv layers: {[names[c] for c in order]}")
    excluded = dict(excluded)
    excluded.update({n: "excluded by the caller" for n in exclude})
    layers: dict[nn.Conv2d, MaskableLayer] = {}
    followers: dict[str, str] = {}
    for conv in order:
        name = names[conv]
        if name in excluded or conv in leader_of:
            continue
        norm = norm_of.get(conv)
        layers[conv] = MaskableLayer(name, conv, names.get(norm) if norm is not None else None, norm)
    for conv, leader in leader_of.items():
        if leader in layers:
            norm = norm_of.get(conv)
            layers[leader].followers.append(Follower(names[conv], conv, names.get(norm) if norm is not None else None,
                                                     norm))
            followers[names[conv]] = names[leader]
        else:
            excluded.setdefault(names[conv], f"follows {names[leader]}, which is excluded")
    if not layers:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(excluded.items())[:3])
        raise UnsupportedModelError(f"{type(model).__name__} has no maskable conv layer ({reasons}); supported: "
                                    "CNNs whose conv channels are followed by BatchNorm or nothing")
    description = LayerDescription(layers.values(), excluded, followers)
    description.graph = graph   # Torch-Pruning's dependency graph of the model (extraction prunes through it)
    return description


def _describe(model: nn.Module, x: torch.Tensor):
    was_training = model.training
    model.eval()
    try:
        return _describe_eval(model, x)
    finally:
        model.train(was_training)


def _describe_eval(model: nn.Module, x: torch.Tensor):
    names = {m: n for n, m in model.named_modules() if m is not model}   # no reference to the model itself
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        raise UnsupportedModelError(f"{type(model).__name__} has no Conv2d layer; modtools decomposes CNNs "
                                    "built of nn.Conv2d layers")
    mha = [f"{type(m).__name__} {n}" for n, m in model.named_modules()
           if isinstance(m, nn.MultiheadAttention) or "Attention" in type(m).__name__]
    order, norm_of, attention, shuffles = _trace(model, x) if not mha else ([], {}, [], [])
    if mha or attention:
        where = ", ".join((mha or attention)[:3])
        raise UnsupportedModelError(f"{type(model).__name__} is not a CNN: it uses attention ({where}); modtools "
                                    "decomposes convolutional networks (supported: conv, BN, pooling, residual and "
                                    "concatenated branches, depthwise/grouped convs, squeeze-excitation)")
    if shuffles:
        raise UnsupportedModelError(
            f"{type(model).__name__} shuffles channels ({shuffles[0]}): a view that splits the channel axis, as "
            "in ShuffleNet's channel shuffle, permutes channels in a way that kernel masks cannot follow; "
            "supported: convs (plain, grouped, depthwise), BatchNorm, element-wise activations, pooling, "
            "additions, multiplications, concatenations and flatten")
    graph = dependency_graph(model, x, conv_pruner=grouped_conv_pruner())
    excluded: dict[str, str] = {}
    leader_of: dict[nn.Conv2d, nn.Conv2d] = {}
    rank = {c: i for i, c in enumerate(order)}
    for conv in order:
        items = coupled_items(graph, conv)
        members, consumers, mixing = [], 0, []
        for item in items:
            target, handler = item.dep.target.module, item.dep.handler
            if isinstance(target, CHANNEL_NORMS) or type(target).__name__.startswith("LayerNorm"):
                mixing.append(names.get(target, type(target).__name__))
            elif isinstance(target, (nn.Conv2d, nn.Linear)):
                if graph.is_out_channel_pruning_fn(handler):
                    members.append(target)
                if graph.is_in_channel_pruning_fn(handler) and not (isinstance(target, nn.Conv2d)
                                                                    and is_depthwise(target)):
                    consumers += 1
        name = names[conv]
        if mixing:
            excluded[name] = (f"its channels are normalised together by {mixing[0]} (LayerNorm/GroupNorm): "
                              "removing one would change the others")
            continue
        if consumers == 0:
            excluded[name] = "it produces the model's output (a conv classifier); its channels are the outputs"
            continue
        if is_depthwise(conv):
            leaders = sorted((m for m in members if isinstance(m, nn.Conv2d) and not is_depthwise(m) and m in rank),
                             key=rank.get)
            if leaders:
                leader_of[conv] = leaders[0]
    # a leader that is itself excluded takes its followers with it (handled by the caller)
    return order, norm_of, excluded, leader_of, names, graph


def layer_widths(layers: list[MaskableLayer]) -> dict[str, int]:
    return {layer.name: layer.out_channels for layer in layers}
