"""Adversarial inputs under an L∞ budget, in ``[0, 1]`` input space (models carry their own
normalisation), and the defect inheritance rate.

Our own short FGSM and PGD: advertorch, which SeaM used, no longer imports on current torch (see
``shared/guides/libraries.md``). PGD follows the textbook loop: a uniform random start in the
ε-ball, then ``steps`` signed-gradient ascent steps of size ``step_size``, each followed by a
projection onto the ε-ball and onto ``[0, 1]``. The loss is a callable of the model's outputs,
so the same loop serves a classification loss and SeaM's feature-space loss
(:func:`feature_loss`: drive the teacher's first feature to 1000 and the others to 0).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def _check(x: torch.Tensor, eps: float) -> None:
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps={eps} is out of range; allowed: 0 <= eps <= 1 (inputs are in [0, 1])")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"inputs must lie in [0, 1]; got min {lo:.4g}, max {hi:.4g} (normalise inside the model)")


def classification_loss(labels: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Cross-entropy against ``labels`` (an untargeted attack ascends it)."""
    return lambda out: F.cross_entropy(out, labels)


def feature_loss(out: torch.Tensor, target: float = 1000.0) -> torch.Tensor:
    """SeaM's (ReMoS's) feature-space loss, to ascend: ``−mean[(f₀ − 1000)² + 0.1 · mean_{j≥1} f_j²]``."""
    first = (out[:, 0] - target) ** 2
    rest = (out[:, 1:] ** 2).mean(1) if out.shape[1] > 1 else torch.zeros_like(first)
    return -(first + 0.1 * rest).mean()


def fgsm(model: nn.Module, x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor], eps: float) -> torch.Tensor:
    """One signed-gradient step of size ``eps`` that increases ``loss_fn(model(x))``; inputs stay in [0, 1]."""
    return pgd(model, x, loss_fn, eps, step_size=eps, steps=1, random_start=False)


def pgd(model: nn.Module, x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor], eps: float,
        step_size: float | None = None, steps: int = 40, random_start: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient ascent on ``loss_fn(model(x_adv))`` with ``‖x_adv − x‖∞ ≤ eps`` and ``x_adv ∈ [0, 1]``.

    The model is used in eval mode and is not changed; ``eps = 0`` returns ``x`` unchanged.
    """
    _check(x, eps)
    if steps < 1:
        raise ValueError(f"steps={steps} is out of range; allowed: an integer >= 1")
    if eps == 0:
        return x.clone()
    step_size = eps / 4 if step_size is None else step_size
    was = model.training
    model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        x = x.detach()
        if random_start:
            noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device) * 2 - 1
            adv = (x + eps * noise).clamp(0, 1)
        else:
            adv = x.clone()
        for _ in range(steps):
            adv.requires_grad_(True)
            with torch.enable_grad():
                loss = loss_fn(model(adv))
                grad, = torch.autograd.grad(loss, adv)
            with torch.no_grad():
                adv = adv + step_size * grad.sign()
                adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
        return adv.detach()
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was)


def defect_inheritance_rate(clean_pred: torch.Tensor, adv_pred: torch.Tensor, labels: torch.Tensor) -> float:
    """DIR: among the samples classified correctly when clean, the share the attack turns wrong
    (0 when none is correct)."""
    correct = clean_pred == labels
    n = int(correct.sum())
    if n == 0:
        return 0.0
    return float(((adv_pred != labels) & correct).sum()) / n
