"""SeaM (Qi et al., ICSE 2023): re-engineer a trained model for a target sub-problem by learning
which weights that problem needs, on the shared mask machinery.

Every weight and bias of every conv and linear layer of the original model gets a real-valued
score (:class:`~modtools.masks.WeightMasks`): the forward uses ``W ⊙ 1[score > 0]``, the backward
is straight-through with the gradient clipped to [-1, 1]. BN is frozen and unmasked. A new head
``ReLU → Linear(original classes → target classes)`` reads the original logits. The loss is
cross-entropy plus ``α`` times the weight retention rate (WRR, the share of scores above 0); Adam
trains masks (``lr_mask``) and head (``lr_head``); every ``head_every``-th epoch trains the head
alone (the published ``[0, 1, 1, 1, 1]`` cycle), with the backbone run without gradients.

What the toolkit does differently, all recorded in the config:

* **selection on a validation split**: the published acceptance rule (the fewest weights among
  epochs whose accuracy reaches the original model's on the target problem, WRR compared in 0.1 %
  buckets; else the epoch with the largest accuracy − WRR), applied to validation accuracy; the test
  split is read once, for the report. The selected masks are copies (the original aliased them);
* **dead kernels are removed**: a kernel (output channel) whose weights and bias are all masked
  contributes 0 after its BN as well (the original lets BN's shift through), so the foundation's
  extraction removes such kernels physically and the extracted module computes exactly what the
  re-engineered model computes;
* **dropout is off** during re-engineering (the original leaves VGG's dropout on);
* a faster schedule for CPUs: scores can start nearer 0 (``init_value``) and epochs can be capped
  (``steps_per_epoch``); the ``paper`` profile keeps the published values;
* ``kernel_level=True``: one score per kernel instead of per weight (structured: every pruned weight
  is a removed kernel, so the saving is real speed in PyTorch);
* a cheaper step, with the same function: the frozen BNs are folded into their convs while
  re-engineering (:func:`fold_frozen_norms`; masks mean the same on the folded weights), and each
  step compares every score with 0 once (:meth:`~modtools.masks.WeightMasks.binarized`). A step then
  costs 0.85× (ResNet-20) and 0.98× (VGG16 ½) a plain training step on a 2-core CPU (1.0× and 1.1×
  before).
"""
from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import data as D
from .errors import InvalidClassError, UnknownNameError, check_classes, check_range
from .fold import frozen_norm_affine, scale_conv_outputs_
from .masks import ChannelGating, WeightMasks, binarize_ste, find_maskable_layers
from .module import Module
from .precision import autocast, check_precision
from .train import adam, predict, resolve_device, seed_everything

#: Named class groups of Fashion-MNIST (multi-class target problems).
FASHION_MNIST_GROUPS = {"tops": [0, 2, 4, 6], "footwear": [5, 7, 9], "rest": [1, 3, 8]}

#: Published ``(lr_mask, alpha)`` per (kind, architecture, data set) (SeaM's README).
PUBLISHED = {("binary", "vgg16", "cifar10"): (0.01, 1.0), ("binary", "vgg16", "cifar100"): (0.05, 1.5),
             ("binary", "resnet20", "cifar10"): (0.05, 1.0), ("binary", "resnet20", "cifar100"): (0.12, 1.5),
             ("multiclass", "resnet20", "cifar100"): (0.10, 2.0), ("multiclass", "resnet50", "imagenet"): (0.05, 2.0)}


@dataclass
class SeaMConfig:
    """SeaM's settings; the defaults are the published ones (CLI defaults where no per-model value exists)."""

    lr_mask: float = 0.05
    lr_head: float = 0.1
    alpha: float = 1.0
    epochs: int = 300
    batch_size: int = 64
    head_every: int = 5            # epoch e trains the head alone when e % head_every == 0 (published: 5)
    init_value: float = 1.0        # initial score of every weight (published: 1, everything kept)
    kernel_level: bool = False     # one score per kernel instead of per weight (toolkit variant)
    augment: bool = True           # random crop + flip while re-engineering (published)
    steps_per_epoch: int | None = None   # cap the mini-batches per epoch (None: the whole split)
    early_stop: int = -1           # stop after this many accepted-then-failing epochs (-1: never, published)
    select_tolerance: float = 0.0  # accept epochs within this of the original's validation accuracy (published: 0)
    seed: int = 0
    precision: str = "fp32"        # fp32 | bf16 | auto: the loop's arithmetic (modtools.precision)

    def __post_init__(self) -> None:
        check_precision(self.precision)
        check_range("alpha", self.alpha, self.alpha >= 0, "a number >= 0")
        for name in ("lr_mask", "lr_head"):
            check_range(name, getattr(self, name), getattr(self, name) > 0, "a number > 0")
        check_range("epochs", self.epochs, self.epochs >= 1, "an integer >= 1")
        check_range("batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1")
        check_range("head_every", self.head_every, self.head_every >= 1, "an integer >= 1")
        check_range("select_tolerance", self.select_tolerance, 0 <= self.select_tolerance < 1, "0 <= tolerance < 1")
        check_range("steps_per_epoch", self.steps_per_epoch, self.steps_per_epoch is None or self.steps_per_epoch >= 1,
                    "None or an integer >= 1")

    @classmethod
    def published(cls, kind: str, arch: str, dataset: str, **overrides) -> "SeaMConfig":
        """The published per-model ``lr_mask`` and ``alpha`` (``kind``: binary | multiclass)."""
        key = (kind, arch, dataset)
        if key not in PUBLISHED:
            raise UnknownNameError(f"no published SeaM setting for {key}; published: {sorted(PUBLISHED)}")
        lr_mask, alpha = PUBLISHED[key]
        return cls(**{"lr_mask": lr_mask, "alpha": alpha, **overrides})


def phase(epoch: int, cfg: SeaMConfig) -> str:
    """``"head"`` or ``"joint"`` for a 0-based epoch (the published ``[0, 1, 1, 1, 1]`` cycle)."""
    return "head" if epoch % cfg.head_every == 0 else "joint"


# --------------------------------------------------------------------------------------------
# Target problems
# --------------------------------------------------------------------------------------------

@dataclass
class TargetProblem:
    """A target problem over a data set's classes: one class against the rest, or a group."""

    kind: str                     # binary | multiclass
    classes: list[int]
    class_names: list[str]
    name: str

    def data(self, ds: D.ImageDataset, split: str, seed: int = 0) -> D.ImageDataset:
        """The problem's samples of ``ds``: binary labels 1 = the class, 0 = balanced seeded negatives;
        multi-class labels 0..k-1 in the group's order."""
        if self.kind == "binary":
            return D.binary_task(ds, self.classes[0], seed=seed, split=split)
        return D.subset_task(ds, self.classes, split)

    def to_dict(self) -> dict:
        return asdict(self)


def group_classes(dataset: str, name: str) -> list[int]:
    """The classes of a named group: Fashion-MNIST's tops/footwear/rest, or a CIFAR-100 superclass."""
    if dataset == "fashion-mnist" and name in FASHION_MNIST_GROUPS:
        return list(FASHION_MNIST_GROUPS[name])
    if dataset == "cifar100" and name in D.CIFAR100_SUPERCLASSES:
        s = D.CIFAR100_SUPERCLASSES.index(name)
        return [c for c, sup in enumerate(D.CIFAR100_FINE_TO_COARSE) if sup == s]
    known = list(FASHION_MNIST_GROUPS) if dataset == "fashion-mnist" else \
        list(D.CIFAR100_SUPERCLASSES) if dataset == "cifar100" else []
    raise UnknownNameError(f"unknown class group {name!r} for data set {dataset!r}; "
                           f"named groups: {', '.join(known) if known else 'none (give a list of class ids)'}")


def target_problem(spec, class_names: Sequence[str], dataset: str = "") -> TargetProblem:
    """A :class:`TargetProblem` from a class id (binary), a list of class ids, or a group name."""
    n = len(class_names)
    if isinstance(spec, str):
        classes = group_classes(dataset, spec)
        return TargetProblem("multiclass", classes, [class_names[c] for c in classes], spec)
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise InvalidClassError(f"the target group is empty; give at least two class ids in 0..{n - 1}")
        classes = check_classes(spec, n, dataset, what="target group")
        if len(classes) < 2:
            raise InvalidClassError(f"a multi-class target problem needs at least two classes, got {classes}; "
                                    "give one class id for a binary problem")
        return TargetProblem("multiclass", classes, [class_names[c] for c in classes],
                             "+".join(class_names[c] for c in classes))
    (c,) = check_classes([spec], n, dataset, what="target class")
    return TargetProblem("binary", [c], [class_names[c]], f"{class_names[c]} vs rest")


@torch.no_grad()
def original_accuracy(model: nn.Module, problem: TargetProblem, ds: D.ImageDataset, device: str = "auto") -> float:
    """The original model's accuracy on a problem's samples ``ds``: binary, whether "argmax is the class"
    matches the label; multi-class, the argmax over the group's logits (the original compares its
    all-class argmax with the re-engineered model's k-way one, which inflates the gain)."""
    logits = predict(model, ds, device=device)
    if problem.kind == "binary":
        pred = (logits.argmax(1) == problem.classes[0]).long()
    else:
        pred = logits[:, problem.classes].argmax(1)
    return float((pred == ds.labels).float().mean())


# --------------------------------------------------------------------------------------------
# Selection (the published acceptance rule, on a validation split)
# --------------------------------------------------------------------------------------------

class SelectionRule:
    """SeaM's online acceptance rule (spec §3.5), fed one epoch at a time.

    With ``acc ≥ acc_pre``: accept when WRR drops to a lower 0.1 % bucket (and reset the early-stop
    counter), reject a larger WRR, otherwise accept only a strictly higher accuracy. Below ``acc_pre``
    after a first acceptance, count towards ``early_stop``. The backup is the epoch with the largest
    ``acc − WRR``, used when no epoch reaches ``acc_pre``.
    """

    def __init__(self, acc_pre: float, early_stop: int = -1):
        self.acc_pre, self.early_stop = acc_pre, early_stop
        self.best_epoch, self.best_acc, self.best_wrr = None, 0.0, 1.0
        self.backup_epoch, self.backup_value = None, -math.inf
        self.armed, self.counter = False, 0

    def observe(self, epoch: int, acc: float, wrr: float) -> tuple[bool, bool, bool]:
        """Returns ``(accepted, new backup, stop)`` for this epoch."""
        backup = acc - wrr > self.backup_value
        if backup:
            self.backup_epoch, self.backup_value = epoch, acc - wrr
        accepted = stop = False
        if acc >= self.acc_pre:
            self.armed = True
            if math.floor(1000 * wrr) < math.floor(1000 * self.best_wrr):
                self.counter, accepted = 0, True
            elif wrr > self.best_wrr or acc <= self.best_acc:
                accepted = False
            else:
                accepted = True
            if accepted:
                self.best_epoch, self.best_acc, self.best_wrr = epoch, acc, wrr
        elif self.armed:
            self.counter += 1
            stop = self.counter == self.early_stop
        return accepted, backup, stop

    @property
    def selected(self) -> int:
        return self.best_epoch if self.best_epoch is not None else self.backup_epoch


# --------------------------------------------------------------------------------------------
# Re-engineering
# --------------------------------------------------------------------------------------------

@dataclass
class SeaMResult:
    """The selected masks and head, the history, the selection, and the problem."""

    masks: dict[str, torch.Tensor]      # weight-level: "layer.weight"/"layer.bias" → bool; kernel-level: layer → (C,)
    head: dict[str, torch.Tensor]
    history: list[dict]
    selected_epoch: int
    accepted: bool                      # an epoch reached the original model's validation accuracy
    val_accuracy_original: float
    problem: TargetProblem
    config: dict
    num_classes: int
    seconds: float = 0.0

    @property
    def wrr(self) -> float:
        return self.history[self.selected_epoch - 1]["wrr"]

    @property
    def val_accuracy(self) -> float:
        return self.history[self.selected_epoch - 1]["val_accuracy"]


class _KernelScores(nn.Module):
    """Kernel-level scores: one per kernel of each maskable layer, gated at its output with the STE."""

    def __init__(self, layers, init: float, device):
        super().__init__()
        self.layers = layers
        self.scores = nn.ParameterDict({layer.name.replace(".", "__"): nn.Parameter(
            torch.full((layer.out_channels,), float(init), device=device)) for layer in layers})

    def gate(self, layer, out, x_in=None):
        m = binarize_ste(self.scores[layer.name.replace(".", "__")]).to(out.dtype)
        return out * m.view(1, -1, *([1] * (out.ndim - 2)))

    def follow(self, layer, out):
        return self.gate(layer, out)


class _FoldedNorm(nn.Module):
    """A frozen BN folded into the conv before it: the conv's weights (and bias) carry BN's scale, and
    this adds BN's shift. ``alive`` (per channel, or ``None``) zeroes the outputs of dead kernels: a
    layer's dead kernels already output exactly 0 (every weight and the bias masked), so only their
    shift is dropped; a follower's outputs are multiplied (its own weights may live on)."""

    def __init__(self, shift: torch.Tensor, follower: bool):
        super().__init__()
        self.register_buffer("shift", shift)
        self.follower = follower
        self.alive: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place: x is the conv's fresh output, which the conv's backward does not keep
        view = (1, -1, *([1] * (x.ndim - 2)))
        if self.alive is None:
            return x.add_(self.shift.to(x.dtype).view(view))
        if self.follower:
            return x.add_(self.shift.to(x.dtype).view(view)).mul_(self.alive.to(x.dtype).view(view))
        return x.add_((self.shift * self.alive).to(x.dtype).view(view))


@torch.no_grad()
def fold_frozen_norms(model: nn.Module, layers) -> dict[str, list[_FoldedNorm]]:
    """Fold every eval-mode BN that directly follows a maskable conv (or one of its followers) into
    that conv: ``W ← W·s``, ``b ← b·s`` with ``s = γ/√(var + ε)``, and the BN module is replaced by the
    shift ``β − μ·s`` (:class:`_FoldedNorm`). A weight mask means the same on the folded weights (the
    same positions are zero), and the straight-through score gradient ``grad·W`` is the same value,
    so a re-engineering step computes what it computed with the BN, without BN's passes over the
    activations forward and backward. Returns the shifts per layer name."""
    folded: dict[str, list[_FoldedNorm]] = {}
    units = [(layer, layer.conv, layer.norm_name, layer.norm, False) for layer in layers]
    units += [(layer, f.conv, f.norm_name, f.norm, True) for layer in layers for f in layer.followers]
    for layer, conv, norm_name, norm, follower in units:
        affine = frozen_norm_affine(norm)
        if affine is None or norm_name is None:
            continue
        scale, shift = affine
        scale_conv_outputs_(conv, scale)
        shift_module = _FoldedNorm(shift.detach().clone(), follower)
        model.set_submodule(norm_name, shift_module)
        folded.setdefault(layer.name, []).append(shift_module)
    return folded


class Reengineer:
    """The state of one re-engineering: a frozen copy of the model, its masks, the new head.

    With ``fold_norms`` (weight-level only) the frozen BNs are folded into their convs
    (:func:`fold_frozen_norms`): the same function, a cheaper step, outputs equal up to float rounding.
    """

    def __init__(self, model: nn.Module, problem: TargetProblem, cfg: SeaMConfig, input_shape: Sequence[int],
                 device: str = "auto", fold_norms: bool = True):
        self.cfg, self.problem, self.device = cfg, problem, resolve_device(device)
        seed_everything(cfg.seed)
        self.model = copy.deepcopy(model).eval().to(self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        example = torch.zeros(1, *input_shape, device=self.device)
        with torch.no_grad():
            self.num_classes = int(self.model(example).shape[1])
        self.layers = find_maskable_layers(self.model, example)
        self.totals = {n: p.numel() for n, p in _maskable_parameters(self.model).items()}
        k = 2 if problem.kind == "binary" else len(problem.classes)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(self.num_classes, k)).to(self.device)
        if cfg.kernel_level:
            self.kernels = _KernelScores(self.layers, cfg.init_value, self.device)
            self.gating = ChannelGating(self.model, self.layers, self.kernels.gate, follow=self.kernels.follow)
            self.mask_params = list(self.kernels.parameters())
            self._per_kernel = {layer.name: layer.conv.weight[0].numel() + (1 if layer.conv.bias is not None else 0)
                                for layer in self.layers}
            self._folded: dict[str, list[_FoldedNorm]] = {}
        else:
            self._folded = fold_frozen_norms(self.model, self.layers) if fold_norms else {}
            self.weights = WeightMasks(self.model, init=cfg.init_value)
            self.mask_params = self.weights.parameters()
            # hooks on the output modules that are still in the network (convs without a BN, unfolded BNs)
            self.gating = ChannelGating(self.model, self.layers, self._dead_kernels, follow=self._dead_follow)
        self._alive: dict[str, torch.Tensor] = {}

    # -- dead kernels contribute 0 after their BN (so that extraction removes them exactly) --------
    def _dead_kernels(self, layer, out, x_in):
        if layer.name not in self._alive:
            return out
        m = self._alive[layer.name].to(out.dtype)
        return out * m.view(1, -1, *([1] * (out.ndim - 2)))

    def _dead_follow(self, layer, out):
        return self._dead_kernels(layer, out, None)

    def refresh_alive(self) -> None:
        """Which kernels are dead now; only layers with a dead kernel are gated (no multiply otherwise)."""
        if not self.cfg.kernel_level:
            self._alive = {k: v for k, v in self.weights.kernels_alive(self.layers).items() if not bool(v.all())}
            for name, shifts in self._folded.items():
                for shift in shifts:
                    shift.alive = self._alive.get(name)

    def binarized(self):
        """A block in which every weight score is compared with 0 once (:meth:`WeightMasks.binarized`)."""
        return nullcontext() if self.cfg.kernel_level else self.weights.binarized()

    def step(self, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, joint: bool = True) -> torch.Tensor:
        """One optimiser step on a batch: cross-entropy of the head plus α·WRR; ``joint`` trains masks
        and head (the backbone runs with gradients), else the head alone. Returns the loss."""
        with self.binarized():
            self.refresh_alive()
            if joint:
                loss = F.cross_entropy(self.forward(x), y) + self.cfg.alpha * self.retention()
            else:
                with torch.no_grad():
                    logits = self.model(x)
                    wrr = self.retention()
                loss = F.cross_entropy(self.head(logits), y) + self.cfg.alpha * wrr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    # -- rates --------------------------------------------------------------------------------
    def retention(self) -> torch.Tensor:
        """WRR: kept / all weights and biases of the original's conv and linear layers (STE)."""
        if not self.cfg.kernel_level:
            return self.weights.retention()
        total = sum(self.totals.values())
        masked = sum(self.layers_weight_count())
        kept = sum(binarize_ste(self.kernels.scores[layer.name.replace(".", "__")]).sum() * self._per_kernel[layer.name]
                   for layer in self.layers)
        return (kept + (total - masked)) / total

    def layers_weight_count(self) -> list[int]:
        return [layer.out_channels * self._per_kernel[layer.name] for layer in self.layers]

    def binary_masks(self) -> dict[str, torch.Tensor]:
        if self.cfg.kernel_level:
            return {layer.name: (self.kernels.scores[layer.name.replace(".", "__")].detach() > 0).cpu()
                    for layer in self.layers}
        return {k: (v.detach() > 0).cpu() for k, v in self.weights.scores().items()}

    # -- the loop -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.model(x))

    @torch.no_grad()
    def accuracy(self, ds: D.ImageDataset) -> float:
        self.model.eval()
        self.head.eval()
        correct = 0
        with self.binarized():
            self.refresh_alive()
            for x, y in D.TensorLoader(ds, 256):
                correct += int((self.forward(x.to(self.device)).argmax(1).cpu() == y).sum())
        return correct / len(ds)

    def run(self, train: D.ImageDataset, val: D.ImageDataset, acc_pre: float, progress: bool = False) -> SeaMResult:
        cfg = self.cfg
        t0 = time.perf_counter()
        opt_h = adam(self.head.parameters(), lr=cfg.lr_head)
        opt_hm = adam([{"params": self.mask_params, "lr": cfg.lr_mask},
                       {"params": list(self.head.parameters()), "lr": cfg.lr_head}], lr=cfg.lr_mask)
        loader = D.TensorLoader(train, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=cfg.augment)
        rule = SelectionRule(acc_pre - cfg.select_tolerance, cfg.early_stop)
        history, best, backup = [], None, None
        epochs = range(cfg.epochs)
        if progress:
            from tqdm.auto import tqdm
            epochs = tqdm(epochs, desc="epochs", leave=False)
        for epoch in epochs:
            kind = phase(epoch, cfg)
            t_epoch = time.perf_counter()
            self.head.train()
            total, seen = 0.0, 0
            for step, (x, y) in enumerate(loader):
                if cfg.steps_per_epoch is not None and step >= cfg.steps_per_epoch:
                    break
                x, y = x.to(self.device), y.to(self.device)
                loss = self.step(x, y, opt_h if kind == "head" else opt_hm, joint=kind != "head")
                total += float(loss) * len(y)
                seen += len(y)
            acc = self.accuracy(val)
            with torch.no_grad():
                wrr = float(self.retention())
            history.append({"epoch": epoch + 1, "phase": kind, "loss": total / max(1, seen), "val_accuracy": acc,
                            "wrr": wrr, "seconds": time.perf_counter() - t_epoch})
            accepted, new_backup, stop = rule.observe(epoch + 1, acc, wrr)
            if accepted or new_backup:
                snap = (self.binary_masks(), {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()})
                best = snap if accepted else best
                backup = snap if new_backup else backup
            if stop:
                break
        masks, head = best if rule.best_epoch is not None else backup
        self.gating.remove()
        return SeaMResult(masks, head, history, rule.selected, rule.best_epoch is not None, acc_pre, self.problem,
                          asdict(cfg), self.num_classes, time.perf_counter() - t0)


def reengineer(model: nn.Module, problem: TargetProblem, train: D.ImageDataset, val: D.ImageDataset,
               cfg: SeaMConfig | None = None, device: str = "auto", progress: bool = False) -> SeaMResult:
    """Re-engineer ``model`` for ``problem``; ``train``/``val`` are the problem's samples
    (:meth:`TargetProblem.data`). The model is not changed."""
    cfg = cfg or SeaMConfig()
    with autocast(cfg.precision, resolve_device(device)):   # the original's accuracy in the loop's arithmetic
        acc_pre = original_accuracy(model, problem, val, device=device)
        engine = Reengineer(model, problem, cfg, train.shape, device)
        return engine.run(train, val, acc_pre, progress)


def stacked_problems(model: nn.Module, problems: int, init_value: float = 1.0,
                     head_classes: int = 2) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Scores for ``problems`` target problems of one model stacked on a leading axis (one per weight
    and bias of every conv and linear layer, all ``init_value``), and their heads' weights and biases:
    the state :func:`stacked_forward` takes."""
    params = _maskable_parameters(model)
    scores = {n: torch.full((problems, *p.shape), float(init_value), device=p.device, requires_grad=True)
              for n, p in params.items()}
    num_classes = list(params.values())[-1].shape[0]          # the out-features of the classifier
    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(problems, head_classes, num_classes, generator=g) / math.sqrt(num_classes)).requires_grad_()
    return scores, weight, torch.zeros(problems, head_classes, requires_grad=True)


def _maskable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if n.endswith((".weight", ".bias"))
            and isinstance(model.get_submodule(n.rsplit(".", 1)[0]), (nn.Conv2d, nn.Linear))}


def stacked_forward(model: nn.Module, scores: dict[str, torch.Tensor], head_weight: torch.Tensor,
                    head_bias: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K target problems in one batched pass (``torch.func.vmap`` over the stacked scores): ``x`` is
    ``K × B × C × H × W``; returns the K × B × classes logits of each problem's head (ReLU → Linear on the
    masked model's logits) and the K WRRs. The model (in eval mode, BN frozen) is not changed.

    The benchmark compares one such step with K steps of :class:`Reengineer` one after another."""
    from torch.func import functional_call, vmap

    base = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    total = sum(base[n].numel() for n in scores)

    def one(sc, w, b, xk):
        hard = {n: binarize_ste(s) for n, s in sc.items()}
        out = functional_call(model, ({**base, **{n: base[n] * m for n, m in hard.items()}}, buffers), (xk,))
        return F.linear(F.relu(out), w, b), sum(m.sum() for m in hard.values()) / total

    return vmap(one)(scores, head_weight, head_bias, x)


# --------------------------------------------------------------------------------------------
# The re-engineered model, its module and its costs
# --------------------------------------------------------------------------------------------

def kernel_masks(model: nn.Module, result: SeaMResult, input_shape: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per maskable layer, 1 for every kernel the result keeps (some weight or its bias)."""
    if result.config.get("kernel_level"):
        return {k: v.float() for k, v in result.masks.items()}
    layers = find_maskable_layers(model, torch.zeros(1, *input_shape))
    out = {}
    for layer in layers:
        w = result.masks.get(f"{layer.name}.weight")
        if w is None:
            continue
        alive = w.flatten(1).any(1)
        b = result.masks.get(f"{layer.name}.bias")
        if b is not None:
            alive |= b
        out[layer.name] = alive.float()
    return out


@torch.no_grad()
def baked(model: nn.Module, result: SeaMResult, input_shape: Sequence[int]) -> nn.Module:
    """A copy of ``model`` (eval mode) with every pruned weight set to exactly 0, and the outputs of
    dead kernels zeroed after their BN (so that it equals the re-engineered backbone)."""
    from .extract import zero_masked

    net = copy.deepcopy(model).eval().cpu()
    if hasattr(net, "modtools_config"):
        del net.modtools_config
    if result.config.get("kernel_level"):
        layers = find_maskable_layers(net, torch.zeros(1, *input_shape))
        zero_masked(net, layers, kernel_masks(model, result, input_shape))
        return net
    params = dict(net.named_parameters())
    for name, mask in result.masks.items():
        params[name].mul_(mask.to(params[name].dtype))
    layers = find_maskable_layers(net, torch.zeros(1, *input_shape))
    zero_masked(net, layers, kernel_masks(model, result, input_shape))
    return net


def reengineered_model(model: nn.Module, result: SeaMResult, input_shape: Sequence[int]) -> nn.Sequential:
    """The dense re-engineered model: the baked backbone and the new head."""
    head = nn.Sequential(nn.ReLU(), nn.Linear(result.num_classes, result.head["1.weight"].shape[0]))
    head.load_state_dict(result.head)
    return nn.Sequential(baked(model, result, input_shape), head).eval()


def kept_weights(result: SeaMResult, model: nn.Module | None = None) -> int:
    """The number of weights and biases the result keeps (for kernel-level results, of the kernels kept)."""
    if not result.config.get("kernel_level"):
        return int(sum(int(v.sum()) for v in result.masks.values()))
    per = {n: m for n, m in model.named_modules()} if model is not None else {}
    total = 0
    for name, mask in result.masks.items():
        conv = per[name]
        total += int(mask.sum()) * (conv.weight[0].numel() + (1 if conv.bias is not None else 0))
    return total


def to_module(model: nn.Module, result: SeaMResult, train: D.ImageDataset, metrics: dict | None = None,
              lineage: list | None = None) -> Module:
    """The result as a :class:`~modtools.module.Module`: the baked network (pruned weights exactly 0)
    with its dead kernels removed by extraction, and the new head. The source is the original model."""
    shape = train.shape
    problem = result.problem
    net = baked(model, result, shape)
    head = {"type": "linear", "in": result.num_classes, "out": int(result.head["1.weight"].shape[0]), "relu": True}
    head_state = {"1.weight": result.head["1.weight"], "1.bias": result.head["1.bias"]}
    names = ([f"not {problem.class_names[0]}", problem.class_names[0]] if problem.kind == "binary"
             else list(problem.class_names))
    task = {"dataset": train.name, "classes": problem.classes, "class_names": names, "kind": problem.kind,
            "problem": problem.name}
    card_metrics = {"wrr": result.wrr, "kept_weights": kept_weights(result, model), **(metrics or {})}
    return Module.create(net, kernel_masks(model, result, shape), task, head, head_state,
                         approach="seam", config={**result.config, "selected_epoch": result.selected_epoch},
                         metrics=card_metrics, lineage=lineage or [], input_shape=shape, dataset=train.name,
                         on_empty="keep_one", name=f"seam-{_slug(problem.name)}", source_model=model)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text.lower()).strip("_")


@torch.no_grad()
def nonzero_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds with a non-zero weight for one input: ``nnz(W) · H_out · W_out`` per conv
    (per output pixel each non-zero weight multiplies once; grouped convs included) and ``nnz(W)`` per
    linear layer. BN, pooling and additions are not counted."""
    total = [0]

    def hook(mod, inp, out):
        nnz = int((mod.weight != 0).sum())
        total[0] += nnz * (out.shape[2] * out.shape[3] if isinstance(mod, nn.Conv2d) else 1)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return total[0]


def cost_report(model: nn.Module, result: SeaMResult, module: Module, input_shape: Sequence[int],
                batch_size: int = 64, repeats: int = 10) -> dict:
    """WRR, MACs (dense, dead kernels removed, non-zero multiply-adds) and CPU latency (original,
    zeroed dense, structurally extracted), all with the head."""
    from .metrics import count_macs, measure_latency

    dense = reengineered_model(model, result, input_shape)
    original = copy.deepcopy(model).eval().cpu()
    structured = module.as_model().cpu()
    macs = {"original": count_macs(original, input_shape)["macs"],
            "dense": count_macs(dense, input_shape)["macs"],
            "structured": count_macs(structured, input_shape)["macs"],
            "nonzero": nonzero_macs(dense, input_shape)}
    lat = {name: measure_latency(net, input_shape, batch_size, repeats=repeats)["seconds"]
           for name, net in (("original", original), ("dense", dense), ("structured", structured))}
    return {"wrr": result.wrr, "kept_weights": kept_weights(result, model), "macs": macs,
            "macs_ratio_structured": macs["structured"] / macs["original"],
            "macs_ratio_nonzero": macs["nonzero"] / macs["original"],
            "latency_seconds": lat, "latency_ratio": lat["structured"] / lat["original"],
            "latency_ratio_dense": lat["dense"] / lat["original"], "batch_size": batch_size}
