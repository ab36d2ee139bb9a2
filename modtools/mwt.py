"""MwT, modularizing while training (Qi et al., ICSE 2024), on the shared mask machinery.

A CNN is trained with one small gate network per conv layer (all but the first): the gate maps the
layer's *input* to per-sample, per-kernel weights ``relu(tanh(·))`` that scale the BN output
(:class:`~modtools.masks.InputGates`). Besides cross-entropy, a *cohesion* loss pulls the gate
vectors of same-class samples together and a *coupling* loss pushes different classes apart
(cosine of row-normalised gate vectors over the pairs of a batch, layers weighted equally). After
training, a kernel belongs to class c's module when its gate is on (> 0) for at least a fraction
θ of c's training samples (collected once, without augmentation). A module for a sub-task is the
union of its classes' kernels, extracted as one smaller network, with a new ``ReLU → Linear`` head
on the logits, fine-tuned briefly and selected on a validation split (never the test split).
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import data as D
from .errors import EmptyMaskError, check_classes, check_range
from .masks import InputGates, MaskableLayer, bypassable_layers, find_maskable_layers
from .models import build_model
from .module import Module
from .precision import check_precision
from .train import (FitConfig, ModelSpec, SpecData, fit, predict, resolve_device, seed_everything, spec_data,
                    train_cached)

ON_EMPTY = ("lower", "top1", "raise")
INIT_FROM = ("scratch", "standard")


@dataclass
class MwTConfig:
    """MwT's settings; the defaults are the published ones (``paper`` profile) unless noted."""

    arch: str = "vgg16"
    width: float = 1.0
    dataset: str = "cifar10"
    per_class: int | None = None
    test_per_class: int | None = None
    val_fraction: float = 0.1
    alpha: float = 0.5            # weight of the cohesion loss
    beta: float = 1.5             # weight of the coupling loss
    epochs: int = 200
    lr: float = 0.05              # network and gates
    batch_size: int = 128
    weight_decay: float = 0.0
    augment: bool = True          # random crop + flip
    threshold: float = 0.9        # θ of the frequency rule
    on_empty: str = "lower"       # a layer left empty: lower θ for it by 0.05 steps | keep its top kernel | raise
    finetune_epochs: int = 10
    finetune_lr: float = 0.05
    init_from: str = "scratch"    # scratch (published) | standard: start from the trained standard model's weights
    coupling_warmup: float = 0.0  # epochs over which β ramps linearly from 0 (published: 0, β from the start)
    detach_gate_input: bool = False  # no gradient from the gates into the backbone through their input (published: False)
    seed: int = 0
    precision: str = "fp32"       # fp32 | bf16 | auto: the training arithmetic (modtools.precision); fine-tuning is fp32

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.on_empty not in ON_EMPTY:
            raise ValueError(f"on_empty={self.on_empty!r} is not allowed; use one of {ON_EMPTY}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.init_from not in INIT_FROM:
            raise ValueError(f"init_from={self.init_from!r} is not allowed; use one of {INIT_FROM}")
        for name in ("alpha", "beta", "weight_decay", "coupling_warmup"):
            check_range(name, getattr(self, name), getattr(self, name) >= 0, "a number >= 0")
        for name in ("lr", "finetune_lr"):
            check_range(name, getattr(self, name), getattr(self, name) > 0, "a number > 0")
        check_range("epochs", self.epochs, self.epochs >= 1, "an integer >= 1")
        check_range("finetune_epochs", self.finetune_epochs, self.finetune_epochs >= 0, "an integer >= 0")
        check_range("batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1")
        check_range("val_fraction", self.val_fraction, 0 < self.val_fraction < 1, "0 < val_fraction < 1")

    def fit_config(self) -> FitConfig:
        return FitConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, momentum=0.9, nesterov=True,
                         weight_decay=self.weight_decay, schedule="cosine", augment=self.augment,
                         select_best=False, seed=self.seed, precision=self.precision)

    def spec(self, modular: bool) -> ModelSpec:
        """The model spec of the modular (gated) or the standard model; both share data and recipe."""
        variant = {"approach": "mwt", "alpha": self.alpha, "beta": self.beta} if modular else {}
        if modular and self.init_from != "scratch":
            variant["init_from"] = self.spec(modular=False).key()
        if modular and self.coupling_warmup:
            variant["coupling_warmup"] = self.coupling_warmup
        if modular and self.detach_gate_input:
            variant["detach_gate_input"] = True
        return ModelSpec(arch=self.arch, width=self.width, dataset=self.dataset, per_class=self.per_class,
                         test_per_class=self.test_per_class, data_seed=self.seed, val_fraction=self.val_fraction,
                         fit=self.fit_config(), variant=variant)


# --------------------------------------------------------------------------------------------
# Gates and the gated model
# --------------------------------------------------------------------------------------------

def gate_hidden_width(c_out: int) -> int:
    """MwT's hidden width: ``C_out`` below 128 kernels, else ``C_out // 2``."""
    return c_out if c_out < 128 else c_out // 2


class MwTGate(nn.Module):
    """GAP of the layer input → Linear (no bias) → ReLU → Linear (bias 1.0) → relu(tanh(·)).

    With ``detach_input`` no gradient flows from the gate back into the backbone through the gate's
    input (the gates still learn, and the backbone still learns through the gated outputs).
    """

    def __init__(self, c_in: int, c_out: int, detach_input: bool = False):
        super().__init__()
        self.detach_input = detach_input
        hidden = gate_hidden_width(c_out)
        self.fc1 = nn.Linear(c_in, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, c_out)
        nn.init.kaiming_normal_(self.fc1.weight)
        nn.init.kaiming_normal_(self.fc2.weight)
        nn.init.constant_(self.fc2.bias, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.detach_input:
            x = x.detach()
        # the spatial mean as a sum times 1/HW: its backward is a broadcast view, where mean's backward
        # writes a full-size quotient (≈ 5 % of a ResNet-20 training step on a CPU)
        g = x.sum(dim=(2, 3)) * (1.0 / (x.shape[2] * x.shape[3])) if x.ndim == 4 else x
        return torch.relu(torch.tanh(self.fc2(torch.relu(self.fc1(g)))))


class GatedModel(nn.Module):
    """A backbone with MwT gates on every maskable layer except the first.

    ``forward`` returns the backbone's logits; the gates of the last pass are in ``self.gates.last``.
    With ``fuse_batchnorm`` (the default) a gate that follows a ``BatchNorm2d`` is computed with it in
    one step (:mod:`modtools.gated_bn`: the same function, fewer passes over the activations).
    """

    def __init__(self, backbone: nn.Module, image_size: int = 32, detach_gate_input: bool = False,
                 fuse_batchnorm: bool = True):
        super().__init__()
        self.backbone = backbone
        first = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d))
        example = torch.zeros(1, first.in_channels, image_size, image_size)
        layers = find_maskable_layers(backbone, example)
        self.layers: list[MaskableLayer] = layers[1:]
        self.gates = InputGates(self.layers, build_gate=lambda layer: MwTGate(layer.conv.in_channels,
                                                                              layer.out_channels, detach_gate_input))
        self.fuse_batchnorm = fuse_batchnorm
        self._handle = self.gates.install(backbone, fuse_batchnorm)
        self.modtools_config = getattr(backbone, "modtools_config", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def widths(self) -> dict[str, int]:
        return {layer.name: layer.out_channels for layer in self.layers}

    def plain_backbone(self) -> nn.Module:
        """A copy of the backbone without gates (the network a module is extracted from)."""
        self._handle.remove()
        try:
            plain = copy.deepcopy(self.backbone)
        finally:
            self._handle = self.gates.install(self.backbone, self.fuse_batchnorm)
        return plain.eval()


def build_gated(spec: ModelSpec, ds: D.ImageDataset) -> GatedModel:
    """A gated model for ``ds`` (seeded from ``spec.fit.seed``), as :func:`train_cached` expects."""
    seed_everything(spec.fit.seed)
    backbone = build_model(spec.arch, in_channels=ds.shape[0], num_classes=ds.num_classes, width=spec.width,
                           **spec.arch_kwargs)
    return GatedModel(backbone, image_size=ds.shape[-1],
                      detach_gate_input=bool(spec.variant.get("detach_gate_input", False)))


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------

def stack_gates(gates: Sequence[torch.Tensor]) -> torch.Tensor:
    """Gate tensors of all layers, zero-padded to one width: ``(L, B, C_max)``."""
    c_max = max(g.shape[1] for g in gates)
    return torch.stack([F.pad(g, (0, c_max - g.shape[1])) for g in gates])


def cohesion_coupling_loss(gates: Sequence[torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MwT's cohesion and coupling losses, all layers at once.

    Per layer: cosine similarity of the row-normalised gate vectors; cohesion = 1 − mean over
    same-class pairs ``i < j``, coupling = mean over different-class pairs; then the plain mean
    over layers. A batch without same-class (or different-class) pairs contributes 0 to that term.
    """
    return pair_similarity_terms(stack_gates(gates), labels)


def pair_similarity_terms(stacked: torch.Tensor, labels: torch.Tensor,
                          num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`cohesion_coupling_loss` on gates already stacked to ``(L, B, C)``, without a B × B matrix.

    The sum of cosines over pairs ``i < j`` of a set is ``(‖Σ gᵢ‖² − Σ ‖gᵢ‖²) / 2`` for unit (or zero)
    rows, so per-class sums of the normalised gates (one matrix product with the one-hot labels)
    give the same-class total, and the sum over the whole batch gives all pairs; the different-class
    total is their difference. Cost O(L·B·C) instead of O(L·B²·C).
    """
    g = F.normalize(stacked.float(), p=2, dim=2)               # L × B × C (float32 under autocast); zero rows stay zero
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.numel() else 1
    onehot = F.one_hot(labels, num_classes).to(g.dtype)        # B × K
    norms = g.pow(2).sum(dim=(1, 2))                           # L: Σ ‖gᵢ‖²
    per_class = torch.einsum("bk,lbc->lkc", onehot, g)         # L × K × C
    same_total = (per_class.pow(2).sum(dim=(1, 2)) - norms) / 2
    all_total = (g.sum(dim=1).pow(2).sum(dim=1) - norms) / 2
    counts = onehot.sum(0)
    b = labels.shape[0]
    n_same = float((counts * (counts - 1)).sum()) / 2
    n_diff = b * (b - 1) / 2 - n_same
    zero = g.new_zeros(())
    coh = (1 - same_total / n_same).mean() if n_same > 0 else zero
    coup = ((all_total - same_total) / n_diff).mean() if n_diff > 0 else zero
    return coh, coup


def mwt_loss(alpha: float = 0.5, beta: float = 1.5, warmup_steps: int = 0):
    """The extra loss for :func:`modtools.train.fit`: ``α·cohesion + β·coupling``, with logged terms.

    With ``warmup_steps``, β grows linearly from 0 to its value over that many training steps.
    """
    calls = [0]

    def extra(model: GatedModel, x, y, logits):
        gates = [model.gates.last[layer.name] for layer in model.layers]
        stacked = stack_gates(gates)
        coh, coup = pair_similarity_terms(stacked, y, logits.shape[1] if logits is not None else None)
        ramp = min(1.0, (calls[0] + 1) / warmup_steps) if warmup_steps else 1.0
        calls[0] += 1
        with torch.no_grad():
            widths = torch.tensor([g.shape[1] for g in gates], dtype=torch.float32, device=stacked.device)
            rate = ((stacked > 0).sum(dim=(1, 2)).float() / (widths * stacked.shape[1])).mean()   # per layer, then mean
        return alpha * coh + ramp * beta * coup, {"cohesion_loss": float(coh.detach()),
                                                  "coupling_loss": float(coup.detach()), "kernel_rate": float(rate)}
    return extra


def train_mwt(cfg: MwTConfig, cache=None, device: str = "auto", progress: bool = True,
              data: SpecData | None = None) -> tuple[GatedModel, dict]:
    """Train (or load from the cache) the modular model of ``cfg``.

    With ``cfg.init_from="standard"`` the backbone starts from the trained standard model (trained
    or loaded first, same data and recipe); the gates start as MwT initialises them.
    """
    spec = cfg.spec(modular=True)
    data = data or spec_data(spec)
    build = build_gated
    if cfg.init_from == "standard":
        standard, _ = train_standard(cfg, cache=cache, device=device, progress=progress, data=data)
        weights = {k: v.detach().cpu().clone() for k, v in standard.state_dict().items()}

        def build(spec, ds):
            gated = build_gated(spec, ds)
            gated.backbone.load_state_dict(weights)
            return gated
    steps = -(-len(data.train) // cfg.batch_size)
    return train_cached(spec, cache=cache, device=device, progress=progress, data=data, build=build,
                        extra_loss=mwt_loss(cfg.alpha, cfg.beta, int(round(cfg.coupling_warmup * steps))))


def train_standard(cfg: MwTConfig, cache=None, device: str = "auto", progress: bool = True,
                   data: SpecData | None = None) -> tuple[nn.Module, dict]:
    """Train (or load) the same architecture the standard way, same data, recipe and budget."""
    return train_cached(cfg.spec(modular=False), cache=cache, device=device, progress=progress, data=data)


# --------------------------------------------------------------------------------------------
# Modularization
# --------------------------------------------------------------------------------------------

@dataclass
class GateStats:
    """Binarised gates of a data set: ``on`` (N × K, bool), labels, per-class on-frequencies."""

    on: torch.Tensor
    labels: torch.Tensor
    freq: torch.Tensor                 # num_classes × K
    slices: dict[str, tuple[int, int]]
    class_names: list[str] = field(default_factory=list)
    seconds: float = 0.0
    bypassable: list[str] = field(default_factory=list)   # layers on a residual branch (may be left empty)

    @property
    def num_kernels(self) -> int:
        return self.on.shape[1]


@torch.no_grad()
def collect_gates(model: GatedModel, ds: D.ImageDataset, batch_size: int = 256, device: str = "auto") -> GateStats:
    """Run ``model`` (eval, no augmentation, fixed order) over ``ds`` once; keep the binary gates."""
    t0 = time.perf_counter()
    dev = resolve_device(device)
    model.eval().to(dev)
    widths = model.widths()
    slices, start = {}, 0
    for name, w in widths.items():
        slices[name] = (start, start + w)
        start += w
    on = torch.zeros(len(ds), start, dtype=torch.bool)
    sums = torch.zeros(ds.num_classes, start, dtype=torch.float64)
    pos = 0
    for x, y in D.TensorLoader(ds, batch_size):
        model(x.to(dev))
        b = torch.cat([model.gates.last[name] > 0 for name in widths], dim=1).cpu()
        on[pos:pos + len(y)] = b
        sums.index_add_(0, y, b.double())
        pos += len(y)
    counts = torch.bincount(ds.labels, minlength=ds.num_classes).double().clamp(min=1)
    plain = model.plain_backbone().to(dev)
    bypass = bypassable_layers(plain, find_maskable_layers(plain, torch.zeros(1, *ds.shape, device=dev))[1:],
                               ds.shape)
    return GateStats(on, ds.labels.clone(), (sums / counts[:, None]).float(), slices, list(ds.class_names),
                     time.perf_counter() - t0, bypass)


def module_masks(stats: GateStats, threshold: float = 0.9, on_empty: str = "lower") -> tuple[torch.Tensor, list[dict]]:
    """Per-class kernel masks by the frequency rule: ``u[c, k] = freq[c, k] >= θ``.

    A layer left with no kernel for a class is handled by ``on_empty``: ``"lower"`` lowers θ for
    that layer in 0.05 steps until a kernel passes (MwT's rule), ``"top1"`` keeps its most frequent
    kernel, ``"raise"`` raises :class:`EmptyMaskError`. A layer whose gates never open for the class
    (no kernel at any threshold) on a residual branch (``stats.bypassable``: the skip connection
    carries the input past it) is left empty instead, with the policy ``"bypass"``: the class does not
    use that branch, and extraction keeps one zeroed channel so the module stays exact. On a plain path
    such a layer would cut the network, so ``"lower"`` raises and ``"top1"`` keeps one kernel. Every
    decision is returned.
    """
    if on_empty not in ON_EMPTY:
        raise ValueError(f"on_empty={on_empty!r} is not allowed; use one of {ON_EMPTY}")
    u = stats.freq >= threshold
    decisions = []
    for name, (a, b) in stats.slices.items():
        empty = torch.nonzero(~u[:, a:b].any(dim=1)).flatten().tolist()
        for c in empty:
            f = stats.freq[c, a:b]
            if float(f.max()) < 0.05 and name in stats.bypassable and on_empty != "raise":
                decisions.append({"class": c, "layer": name, "policy": "bypass", "threshold": threshold})
                continue
            if on_empty == "raise":
                raise EmptyMaskError(f"layer {name} keeps no kernel for class {c} at threshold {threshold} "
                                     f"(highest frequency {float(f.max()):.3f}); on_empty options: {ON_EMPTY}")
            if on_empty == "top1":
                u[c, a + int(f.argmax())] = True
                decisions.append({"class": c, "layer": name, "policy": "top1", "threshold": threshold})
                continue
            t = threshold
            while not (f >= t).any():
                t = round(t - 0.05, 10)
                if t <= 0:
                    raise EmptyMaskError(f"layer {name} keeps no kernel for class {c} at any threshold, and it is on "
                                         "a plain path (emptying it would cut the network); use on_empty='top1'")
            u[c, a:b] = f >= t
            decisions.append({"class": c, "layer": name, "policy": "lower", "threshold": t})
    return u, decisions


def masks_by_layer(u: torch.Tensor, stats: GateStats) -> dict[str, torch.Tensor]:
    """One class's (or a union's) flat mask split into ``{layer: (C,)}`` float masks."""
    return {name: u[a:b].float() for name, (a, b) in stats.slices.items()}


def krr(u: torch.Tensor) -> float:
    """Kernel retention rate: mean over modules of kept / gated kernels."""
    return float(u.float().mean())


def pairwise_jaccard(x: torch.Tensor) -> torch.Tensor:
    """Jaccard index of every pair of rows of a binary matrix (one GEMM); empty-vs-empty counts as 1."""
    xf = x.float()
    inter = xf @ xf.T
    sizes = xf.sum(1)
    union = sizes[:, None] + sizes[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def cohesion(stats: GateStats, u: torch.Tensor, max_samples: int | None = None) -> float:
    """Mean over classes of the mean Jaccard of distinct pairs of ``b_i ∧ u_c`` within class c."""
    values = []
    for c in range(u.shape[0]):
        b = stats.on[stats.labels == c]
        if max_samples is not None and len(b) > max_samples:
            b = b[:max_samples]
        n = len(b)
        if n < 2:
            continue
        j = pairwise_jaccard(b & u[c])
        values.append(float((j.sum() - j.diagonal().sum()) / (n * (n - 1))))
    return sum(values) / len(values) if values else float("nan")


def coupling(u: torch.Tensor) -> float:
    """Mean Jaccard of the module masks over pairs of distinct classes."""
    n = u.shape[0]
    j = pairwise_jaccard(u)
    return float((j.sum() - j.diagonal().sum()) / (n * (n - 1)))


def retention_by_layer(u: torch.Tensor, stats: GateStats) -> dict[str, list[float]]:
    """Per layer, per class: the fraction of the layer's kernels in the class's module."""
    return {name: u[:, a:b].float().mean(1).tolist() for name, (a, b) in stats.slices.items()}


# --------------------------------------------------------------------------------------------
# Sub-task modules
# --------------------------------------------------------------------------------------------

def subtask_module(model: GatedModel, stats: GateStats, u: torch.Tensor, classes: Sequence[int],
                   data: SpecData, cfg: MwTConfig, decisions: list[dict] | None = None,
                   device: str = "auto", progress: bool = False, align: int = 8) -> tuple[Module, dict]:
    """The module for target classes: union of their kernels, extracted, new head, fine-tuned.

    Extracted widths are rounded up to a multiple of ``align`` with zeroed channels (faster
    kernels; recorded in the card). Fine-tuning selects the epoch on the validation split.
    Returns the module and a report with
    the accuracy before and after fine-tuning (validation and test) and the fine-tuning history.
    """
    classes = check_classes(classes, u.shape[0], data.train.name, what="target classes")
    union = u[classes].any(dim=0)
    masks = masks_by_layer(union, stats)
    task = {"dataset": data.train.name, "classes": classes, "class_names": [data.train.class_names[c] for c in classes]}
    n_out = data.train.num_classes
    head = {"type": "linear", "in": n_out, "out": len(classes), "relu": True}
    config = {**asdict(cfg), "target_classes": classes}
    decisions = [d for d in (decisions or []) if d["class"] in classes]
    module = Module.create(model.plain_backbone(), masks, task, head, approach="mwt", config=config,
                           input_shape=data.train.shape, dataset=data.train.name, align=align,
                           on_empty="keep_one",   # only bypassed residual-branch layers can be empty here
                           lineage=[{"step": "modular training", "spec": cfg.spec(True).key()},
                                    {"step": "threshold", "threshold": cfg.threshold, "on_empty": cfg.on_empty,
                                     "empty_layer_decisions": decisions}])
    train_t, val_t, test_t = (D.subset_task(data.train, classes, "train"), D.subset_task(data.val, classes, "validation"),
                              D.subset_task(data.test, classes, "test"))
    net = module.as_model()
    acc = lambda ds: float((predict(net, ds, device=device).argmax(1) == ds.labels).float().mean())  # noqa: E731
    report = {"classes": classes, "krr": float(union.float().mean()),
              "accuracy_before_finetune": acc(test_t), "val_accuracy_before_finetune": acc(val_t)}
    ft = FitConfig(epochs=cfg.finetune_epochs, batch_size=cfg.batch_size, lr=cfg.finetune_lr, momentum=0.9,
                   nesterov=True, weight_decay=cfg.weight_decay, augment=cfg.augment, select_best=True, seed=cfg.seed)
    # float32 whatever cfg.precision: a few epochs from a head that starts near chance are sensitive to
    # rounding (measured on VGG16 ¼, classes 5, 7, 9: 0.93 in fp32, 0.65 in bf16), and they are cheap
    if cfg.finetune_epochs > 0:
        t0 = time.perf_counter()
        report["finetune_history"] = fit(net, train_t, val_t, ft, device=device, progress=progress)
        report["finetune_seconds"] = time.perf_counter() - t0
    net.cpu().eval()
    report["accuracy"] = acc(test_t)
    report["val_accuracy"] = acc(val_t)
    module.metrics = {"accuracy": report["accuracy"], "val_accuracy": report["val_accuracy"],
                      "accuracy_before_finetune": report["accuracy_before_finetune"], "krr": report["krr"]}
    return module, report
