"""Batch normalisation and a per-sample channel gate in one step: ``BN(x) · g[n, c]``.

MwT gates every conv's output after its BN with input-dependent gates ``g`` (``B × C``). Done as
two modules, a training step pays BN's passes over the activation and then the gate's: the
multiply, its gradient, and the product ``grad · BN(x)`` summed for the gate's gradient. In training
mode BN is a per-channel affine map of ``x`` with batch statistics, so the gated output is one
affine map per sample and channel::

    out = a[n, c] · x + b[n, c],   a = g · γ / σ_B,   b = g · (β − μ_B · γ / σ_B)

which :class:`BatchNormGate` computes in fewer passes (one ``addcmul`` after two reductions), with a
hand-written backward (one fused reduction pass, BN's own, and two ``addcmul``). The result is the same function and
the same gradients as ``batch_norm(x) * g`` (checked by ``gradcheck`` in the tests); rounding
differs in the last bits. The running statistics are updated as :class:`torch.nn.BatchNorm2d` does.

:func:`attach` makes a plain ``nn.BatchNorm2d`` take its gate from a callable on each call (the
class of the instance is switched to :class:`GatedBatchNorm2d`, so parameters, buffers and
``state_dict`` keys stay as they are); :func:`detach` undoes it. Evaluation mode, other dtypes than
float32/float64 (autocast) and BN without affine parameters use the plain ``batch_norm(x) * g``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["BatchNormGate", "batch_norm_gated", "fast_path", "GatedBatchNorm2d", "attach", "detach", "can_fuse"]


class BatchNormGate(torch.autograd.Function):
    """``batch_norm(x, training=True) · g`` for ``x`` of shape ``(N, C, H, W)`` and ``g`` of ``(N, C)``.

    Returns ``(out, mean, var)`` with the biased batch variance (for the running statistics). The
    variance is ``E[x²] − μ²`` (clamped at 0), computed in the input's dtype.
    """

    @staticmethod
    def forward(ctx, x, g, weight, bias, eps: float):
        out, mean, var, saved = _bn_gate_forward(x, g, weight, bias, eps)
        ctx.save_for_backward(x, g, bias, *saved)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad, _grad_mean, _grad_var):
        x, g, bias, mean, invstd, scale = ctx.saved_tensors
        grad_x, grad_g, grad_weight, grad_bias = _bn_gate_backward(grad, x, g, bias, mean, invstd, scale)
        return grad_x, grad_g, grad_weight, grad_bias, None


def _bn_gate_forward(x, g, weight, bias, eps):
    """``(out, mean, var, (mean, invstd, scale))`` of ``batch_norm(x) · g`` with batch statistics."""
    m = x.numel() // x.shape[1]
    moments = torch.stack([x.sum(dim=(2, 3)), torch.linalg.vector_norm(x, dim=(2, 3)).square_()]).sum(1) / m
    mean, mean_sq = moments                                  # E[x], E[x²] per channel
    var = torch.addcmul(mean_sq, mean, mean, value=-1).clamp_(min=0)
    invstd = (var + eps).rsqrt_()
    scale = weight * invstd
    shift = torch.addcmul(bias, mean, scale, value=-1)
    ab = torch.stack([scale, shift])[:, None] * g            # a = g·γ/σ, b = g·(β − μγ/σ)   (2 × N × C)
    out = torch.addcmul(ab[1, :, :, None, None], x, ab[0, :, :, None, None])
    return out, mean, var, (mean, invstd, scale)


def _bn_gate_backward(grad, x, g, bias, mean, invstd, scale):
    """Gradients of ``batch_norm(x) · g`` for ``x``, ``g``, BN's weight and bias."""
    m = x.numel() // x.shape[1]
    s1, s2 = _sums_per_map(grad, x)                  # Σ_hw grad, Σ_hw grad · x  (N × C each)
    centred = torch.addcmul(s2, s1, mean, value=-1)  # Σ_hw grad · (x − μ)
    grad_g = torch.addcmul(bias * s1, scale, centred)  # Σ_hw grad · BN(x)
    g_centred, g_s1 = (g * torch.stack([centred, s1])).sum(1)
    grad_weight = invstd * g_centred
    # BN's input gradient with dy = grad · g · γ: invstd · (dy − mean(dy) − x̂ · mean(dy · x̂))
    k1 = scale * invstd * invstd * g_centred / -m
    k0 = torch.addcmul(scale * g_s1 / -m, mean, k1, value=-1)
    grad_x = torch.addcmul(k0[None, :, None, None], x, k1[None, :, None, None])
    grad_x.addcmul_(grad, (g * scale)[:, :, None, None])
    return grad_x, grad_g, grad_weight, g_s1


def _sums_per_map(grad: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ_hw grad`` and ``Σ_hw grad · x`` per sample and channel. For maps of 16 pixels or more in one pass
    without a temporary: BN's own backward reduction over a view with one channel per (sample, channel),
    mean 0 and inverse std 1 (on smaller maps its per-channel cost dominates, and two sums are faster)."""
    n, c, h, w = x.shape
    if h * w < 16:
        return grad.sum(dim=(2, 3)), (grad * x).sum(dim=(2, 3))
    zeros, ones = x.new_zeros(n * c), x.new_ones(n * c)
    _, dot, total = torch.ops.aten.native_batch_norm_backward(
        grad.reshape(1, n * c, h, w), x.reshape(1, n * c, h, w), None, None, None, zeros, ones, True, 0.0,
        [False, True, True])
    return total.view(n, c), dot.view(n, c)


def can_fuse(module: nn.Module) -> bool:
    """Whether :func:`attach` can take ``module``: a plain ``nn.BatchNorm2d`` (not a subclass, and not one
    already attached: a second gating of the same BN then multiplies its output in a hook, as unfused)
    with affine parameters."""
    return type(module) is nn.BatchNorm2d and module.affine


def _running_factor(bn: nn.BatchNorm2d) -> float:
    """Count the batch and return the running statistics' update factor, as ``BatchNorm2d.forward`` does."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    return factor


def fast_path(bn: nn.BatchNorm2d, x: torch.Tensor) -> bool:
    """Whether the fused functions apply: batch statistics, affine BN, a float32/float64 4-d input."""
    return ((bn.training or bn.running_mean is None) and bn.affine and x.ndim == 4
            and x.dtype in (torch.float32, torch.float64) and x.shape[0] * x.shape[2] * x.shape[3] > 1)


def _update_running(bn: nn.BatchNorm2d, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, factor: float) -> None:
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        m = x.numel() // x.shape[1]
        with torch.no_grad():
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
            bn.running_var.lerp_((var * (m / (m - 1))).to(bn.running_var.dtype), factor)


def batch_norm_gated(bn: nn.BatchNorm2d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``bn(x) * g[:, :, None, None]``, with :class:`BatchNormGate` where it applies (see :func:`fast_path`),
    updating ``bn``'s running statistics like ``bn(x)``."""
    factor = _running_factor(bn)
    if not (fast_path(bn, x) and g.dtype == x.dtype):
        batch_stats = bn.training or bn.running_mean is None
        y = F.batch_norm(x, bn.running_mean if not bn.training or bn.track_running_stats else None,
                         bn.running_var if not bn.training or bn.track_running_stats else None,
                         bn.weight, bn.bias, batch_stats, factor, bn.eps)
        return y * g.view(*g.shape, *([1] * (y.ndim - 2)))
    out, mean, var = BatchNormGate.apply(x, g, bn.weight, bn.bias, bn.eps)
    _update_running(bn, x, mean, var, factor)
    return out


class GatedBatchNorm2d(nn.BatchNorm2d):
    """A ``BatchNorm2d`` whose output is ``self.modtools_gate(self, x)`` on each call: BN and a gate in
    one step. Instances are made by :func:`attach` from plain ``BatchNorm2d``; do not build them directly."""

    modtools_gate: Callable[[nn.BatchNorm2d, torch.Tensor], torch.Tensor]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        return self.modtools_gate(self, x)


def attach(bn: nn.BatchNorm2d, gated: Callable[[nn.BatchNorm2d, torch.Tensor], torch.Tensor]) -> None:
    """Make ``bn(x)`` return ``gated(bn, x)`` (e.g. :func:`batch_norm_gated` with a gate) until :func:`detach`;
    its parameters, buffers and ``state_dict`` keys stay."""
    if not can_fuse(bn):
        raise TypeError(f"attach takes a plain nn.BatchNorm2d with affine parameters, not {type(bn).__name__}")
    bn.__class__ = GatedBatchNorm2d
    bn.modtools_gate = gated


def detach(bn: nn.Module) -> None:
    """Undo :func:`attach` (a module that is not attached is left as it is)."""
    if type(bn) is GatedBatchNorm2d:
        bn.__class__ = nn.BatchNorm2d
        bn.__dict__.pop("modtools_gate", None)
