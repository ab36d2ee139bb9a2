"""Defect inheritance (SeaM §5): reuse a source model on a target data set by standard fine-tuning,
or by SeaM's three steps, and measure how many of the source's adversarial defects each inherits.

* **Standard fine-tuning**: the source model with a new last linear layer, all parameters trained
  on the target data (the new layer at 10× the learning rate).
* **SeaM** (the spec's three steps): (1) a linear probe: only the new layer trains, on the target
  data; (2) re-engineering of that model: weight masks on every conv, the new layer trained along,
  ``CE + α·WRR``, until the pruned share reaches the threshold (checked every step; the masks are copied);
  (3) a fresh copy of the source model with the pruned conv weights set to 0 and a new last layer,
  fine-tuned like (a) (zeroed weights may grow back).
* **Defects**: PGD crafts inputs against the source model's *features* (the input of its last
  linear layer, SeaM's feature-space loss, L∞ budget ``eps`` in [0, 1] input space) and feeds them
  to each fine-tuned model; DIR is the share of clean-correct test samples the attack turns wrong.
"""
from __future__ import annotations

from typing import Sequence

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import attacks as A
from . import data as D
from .errors import UnsupportedModelError, check_range
from .masks import WeightMasks
from .precision import autocast, check_precision
from .train import FitConfig, adam, fit, predict, resolve_device, seed_everything


@dataclass
class DefectConfig:
    """Settings of the defect-inheritance comparison (quick CPU values; the spec's are in the docstrings)."""

    finetune_epochs: int = 5        # fine-tuning epochs, standard and step 3 (spec: up to 300, early stop 30)
    finetune_lr: float = 0.005      # hidden layers; the new last layer learns 10× faster (spec: 0.005 / 0.05)
    probe_epochs: int = 3           # step 1 (spec: up to 300)
    probe_lr: float = 0.1           # step 1 (spec: 0.1)
    lr_mask: float = 0.05           # step 2 (spec README: 0.05)
    alpha: float = 0.5              # step 2 (spec README: 0.5)
    init_value: float = 1.0         # step 2: initial mask scores (spec: 1)
    max_reengineer_epochs: int = 30 # step 2 stops at the threshold or after this many epochs
    batch_size: int = 64
    eps: float = 0.05               # L∞ budget in [0, 1] input space
    attack_steps: int = 20
    attack_step_size: float = 0.01
    seed: int = 0
    precision: str = "fp32"         # fp32 | bf16 | auto: fine-tuning and step 2 (the attacks stay fp32)

    def __post_init__(self) -> None:
        check_precision(self.precision)
        for name in ("finetune_lr", "probe_lr", "lr_mask"):
            check_range(name, getattr(self, name), getattr(self, name) > 0, "a number > 0")
        check_range("alpha", self.alpha, self.alpha >= 0, "a number >= 0")
        check_range("eps", self.eps, 0 <= self.eps <= 1, "0 <= eps <= 1")


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The model's last ``nn.Linear`` (its classifier), by module order."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise UnsupportedModelError(f"{type(model).__name__} has no nn.Linear classifier to replace")
    return found[-1]


def with_new_head(model: nn.Module, num_classes: int, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose last linear layer is a fresh ``Linear(in, num_classes)``."""
    net = copy.deepcopy(model)
    name, old = last_linear(net)
    torch.manual_seed(seed)
    new = nn.Linear(old.in_features, num_classes)
    parent = net.get_submodule(name.rsplit(".", 1)[0]) if "." in name else net
    setattr(parent, name.rsplit(".", 1)[-1], new)
    if hasattr(net, "modtools_config"):
        net.modtools_config = {**net.modtools_config, "num_classes": num_classes}
    return net


class Features(nn.Module):
    """The input of a model's last linear layer (its features), as the attack's teacher."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._layer = last_linear(model)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = {}
        handle = self._layer.register_forward_pre_hook(lambda m, inp: seen.setdefault("x", inp[0]))
        try:
            self.model(x)
        finally:
            handle.remove()
        return seen["x"]


def _finetune(net: nn.Module, train: D.ImageDataset, val: D.ImageDataset, cfg: DefectConfig, device) -> None:
    head = last_linear(net)[1]
    head_ids = {id(p) for p in head.parameters()}
    groups = [{"params": [p for p in net.parameters() if id(p) not in head_ids], "lr": cfg.finetune_lr},
              {"params": list(head.parameters()), "lr": 10 * cfg.finetune_lr}]
    fc = FitConfig(epochs=cfg.finetune_epochs, batch_size=cfg.batch_size, lr=cfg.finetune_lr, momentum=0.9,
                   weight_decay=1e-4, schedule="cosine", augment=False, select_best=True, seed=cfg.seed,
                   precision=cfg.precision)
    fit(net, train, val, fc, device=device, progress=False, params=groups)


def standard_finetune(source: nn.Module, train: D.ImageDataset, val: D.ImageDataset, cfg: DefectConfig,
                      device: str = "auto") -> nn.Module:
    """(a): all parameters of the source model with a new last layer, fine-tuned on the target data."""
    net = with_new_head(source, train.num_classes, cfg.seed)
    _finetune(net, train, val, cfg, resolve_device(device))
    return net.eval()


def reengineer_convs(model: nn.Module, train: D.ImageDataset, threshold: float, cfg: DefectConfig,
                     device: str = "auto") -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Step 2: weight masks on every conv of ``model`` (a copy is masked), the last layer trained along,
    until the pruned share ``1 − WRR`` reaches ``threshold``; returns copies of those binary masks."""
    return reengineer_at_thresholds(model, train, [threshold], cfg, device)[threshold]


def reengineer_at_thresholds(model: nn.Module, train: D.ImageDataset, thresholds: Sequence[float], cfg: DefectConfig,
                             device: str = "auto") -> dict[float, tuple[dict[str, torch.Tensor], list[dict]]]:
    """Step 2 for several thresholds in one run: the masks are copied at the first step where the pruned
    share reaches each threshold. A run stopped at a threshold is the prefix of this run (same seed, same
    data order), so the masks equal those of separate runs, at the cost of the longest one."""
    todo = sorted(float(t) for t in thresholds)
    for t in todo:
        if not 0.0 < t < 1.0:
            raise ValueError(f"threshold={t} is out of range; allowed: 0 < threshold < 1")
    dev = resolve_device(device)
    seed_everything(cfg.seed)
    net = copy.deepcopy(model).to(dev).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    head = last_linear(net)[1]
    for p in head.parameters():
        p.requires_grad_(True)
    wm = WeightMasks(net, include=lambda name, mod: isinstance(mod, nn.Conv2d), init=cfg.init_value)
    opt = adam([{"params": wm.parameters(), "lr": cfg.lr_mask}, {"params": list(head.parameters()), "lr": 0.001}],
               lr=cfg.lr_mask)
    loader = D.TensorLoader(train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    history: list[dict] = []
    out: dict[float, tuple[dict[str, torch.Tensor], list[dict]]] = {}

    def snapshot(epoch_row: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
        masks = {k: v.detach().clone().cpu().bool() for k, v in wm.masks().items()}  # copies (the original aliased them)
        return masks, history + [epoch_row]

    for epoch in range(cfg.max_reengineer_epochs):
        t0 = time.perf_counter()
        for x, y in loader:
            x, y = x.to(dev), y.to(dev)
            wrr = wm.retention()
            with autocast(cfg.precision, dev):
                loss = F.cross_entropy(net(x), y) + cfg.alpha * wrr
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            pruned = 1.0 - float(wm.retention().detach())
            while todo and pruned >= todo[0]:                          # checked every step
                row = {"epoch": epoch + 1, "wrr": 1.0 - pruned, "seconds": time.perf_counter() - t0}
                out[todo.pop(0)] = snapshot(row)
            if not todo:
                break
        if not todo:
            break
        history.append({"epoch": epoch + 1, "wrr": float(wm.retention().detach()), "seconds": time.perf_counter() - t0})
    for t in todo:                                                     # not reached: the last masks
        out[t] = ({k: v.detach().clone().cpu().bool() for k, v in wm.masks().items()}, list(history))
    wm.remove()
    return out


def seam_finetune(source: nn.Module, train: D.ImageDataset, val: D.ImageDataset, threshold: float,
                  cfg: DefectConfig, device: str = "auto") -> tuple[nn.Module, dict]:
    """(b): SeaM's three steps (see the module docstring); returns the fine-tuned model and a report."""
    return seam_finetune_sweep(source, train, val, [threshold], cfg, device)[0]


def seam_finetune_sweep(source: nn.Module, train: D.ImageDataset, val: D.ImageDataset, thresholds: Sequence[float],
                        cfg: DefectConfig, device: str = "auto") -> list[tuple[nn.Module, dict]]:
    """:func:`seam_finetune` for several thresholds, sharing step 1 and one step-2 run; in ``thresholds`` order."""
    dev = resolve_device(device)
    probe = with_new_head(source, train.num_classes, cfg.seed)
    head = last_linear(probe)[1]
    fit(probe, train, val, FitConfig(epochs=cfg.probe_epochs, batch_size=cfg.batch_size, lr=cfg.probe_lr,
                                     momentum=0.0, weight_decay=1e-4, schedule="constant", select_best=True,
                                     seed=cfg.seed, precision=cfg.precision), device=dev, progress=False, params=list(head.parameters()))
    runs = reengineer_at_thresholds(probe, train, thresholds, cfg, dev)
    out = []
    for t in thresholds:
        masks, history = runs[float(t)]
        net = with_new_head(source, train.num_classes, cfg.seed)
        params = dict(net.named_parameters())
        with torch.no_grad():
            for name, mask in masks.items():
                params[name].mul_(mask.to(params[name].dtype))
        pruned = 1.0 - history[-1]["wrr"]
        _finetune(net, train, val, cfg, dev)
        out.append((net.eval(), {"threshold": float(t), "pruned": pruned, "reengineer_epochs": len(history),
                                 "reengineer_history": history}))
    return out


def adversarial_set(source: nn.Module, test: D.ImageDataset, cfg: DefectConfig, device: str = "auto") -> torch.Tensor:
    """PGD inputs crafted against the source model's features (the same set for every student)."""
    dev = resolve_device(device)
    teacher = Features(copy.deepcopy(source).eval().to(dev))
    g = torch.Generator().manual_seed(cfg.seed)
    parts = []
    for x, _ in D.TensorLoader(test, 256):
        parts.append(A.pgd(teacher, x.to(dev), A.feature_loss, cfg.eps, cfg.attack_step_size, cfg.attack_steps,
                           generator=g).cpu())
    return torch.cat(parts)


@torch.no_grad()
def defect_rate(student: nn.Module, test: D.ImageDataset, adversarial: torch.Tensor, device: str = "auto") -> dict:
    """Clean accuracy and DIR of ``student`` on ``test`` and its adversarial version."""
    dev = resolve_device(device)
    student = student.eval().to(dev)
    clean = predict(student, test, device=dev).argmax(1)
    adv = torch.cat([student(adversarial[i:i + 256].to(dev)).argmax(1).cpu()
                     for i in range(0, len(adversarial), 256)])
    return {"accuracy": float((clean == test.labels).float().mean()),
            "dir": A.defect_inheritance_rate(clean, adv, test.labels)}
