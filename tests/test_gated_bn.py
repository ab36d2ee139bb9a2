"""BN and a per-sample gate in one step (modtools.gated_bn): the same function, gradients and running
statistics as ``BatchNorm2d`` followed by a multiply, and MwT's gated models with and without it."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from modtools import gated_bn as G
from modtools import mwt as W
from modtools.models import build_model


def _inputs(shape, dtype=torch.double, seed=0):
    torch.manual_seed(seed)
    n, c = shape[:2]
    x = (torch.randn(*shape, dtype=dtype) * 2 + 1.5).requires_grad_()
    g = torch.rand(n, c, dtype=dtype).requires_grad_()
    w = torch.randn(c, dtype=dtype).requires_grad_()
    b = torch.randn(c, dtype=dtype).requires_grad_()
    return x, g, w, b


@pytest.mark.parametrize("shape", [(6, 3, 5, 5), (5, 2, 2, 2)])   # maps of ≥ 16 and < 16 pixels take different sums
def test_gradcheck_and_values_equal_batch_norm_times_gate(shape):
    x, g, w, b = _inputs(shape)

    def fused(x, g, w, b):
        return G.BatchNormGate.apply(x, g, w, b, 1e-5)[0]

    assert torch.autograd.gradcheck(fused, (x, g, w, b))
    reference = F.batch_norm(x, None, None, w, b, True, 0.1, 1e-5) * g[:, :, None, None]
    torch.testing.assert_close(fused(x, g, w, b), reference)
    _, mean, var = G.BatchNormGate.apply(x, g, w, b, 1e-5)
    torch.testing.assert_close(mean, x.detach().mean((0, 2, 3)))
    torch.testing.assert_close(var, x.detach().var((0, 2, 3), unbiased=False))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_attached_bn_matches_bn_then_multiply_with_running_statistics(momentum):
    torch.manual_seed(1)
    plain = nn.BatchNorm2d(4, momentum=momentum)
    nn.init.uniform_(plain.weight, 0.5, 1.5)
    nn.init.uniform_(plain.bias, -0.5, 0.5)
    gated = copy.deepcopy(plain)
    gates = [torch.rand(8, 4) for _ in range(3)]
    step = iter(range(3))
    G.attach(gated, lambda bn, x: G.batch_norm_gated(bn, x, gates[next(step)]))
    assert type(gated) is G.GatedBatchNorm2d
    assert list(gated.state_dict()) == list(plain.state_dict())
    for i in range(3):
        x = torch.randn(8, 4, 6, 6) * 3 + 2
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        grad = torch.randn(8, 4, 6, 6)
        out_ref = plain(xa) * gates[i][:, :, None, None]
        out = gated(xb)
        torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
        out_ref.backward(grad)
        out.backward(grad)
        torch.testing.assert_close(xb.grad, xa.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gated.weight.grad, plain.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gated.bias.grad, plain.bias.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gated.running_mean, plain.running_mean)
    torch.testing.assert_close(gated.running_var, plain.running_var)
    assert int(gated.num_batches_tracked) == int(plain.num_batches_tracked) == 3
    G.detach(gated)
    assert type(gated) is nn.BatchNorm2d and "modtools_gate" not in gated.__dict__


def test_eval_mode_and_low_precision_take_the_plain_path():
    torch.manual_seed(2)
    bn = nn.BatchNorm2d(3).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    x, g = torch.randn(4, 3, 5, 5), torch.rand(4, 3)
    assert not G.fast_path(bn, x)
    torch.testing.assert_close(G.batch_norm_gated(bn, x, g), bn(x) * g[:, :, None, None])
    bn.train()
    assert G.fast_path(bn, x) and not G.fast_path(bn, x.bfloat16())
    out = G.batch_norm_gated(bn, x.bfloat16(), g.bfloat16())
    assert out.dtype == torch.bfloat16


def test_attach_refuses_what_it_cannot_fuse():
    with pytest.raises(TypeError, match="BatchNorm2d"):
        G.attach(nn.BatchNorm2d(3, affine=False), lambda bn, x: x)
    with pytest.raises(TypeError, match="SyncBatchNorm"):
        G.attach(nn.SyncBatchNorm(3), lambda bn, x: x)
    assert not G.can_fuse(nn.BatchNorm1d(3))


@pytest.mark.parametrize("arch", ["resnet20", "vgg16"])
def test_gated_model_fused_equals_unfused(arch):
    kw = {"width": 0.25} if arch == "vgg16" else {"width": 0.5}

    def make(fuse):
        torch.manual_seed(0)
        return W.GatedModel(build_model(arch, num_classes=10, **kw), 16, fuse_batchnorm=fuse).double()

    a, b = make(False), make(True)
    assert any(type(m) is G.GatedBatchNorm2d for m in b.backbone.modules())
    assert not any(type(m) is G.GatedBatchNorm2d for m in a.backbone.modules())
    assert list(a.state_dict()) == list(b.state_dict())
    x, y = torch.rand(16, 3, 16, 16, dtype=torch.double), torch.arange(16) % 10
    extra = W.mwt_loss()
    losses = []
    for m in (a, b):
        m.train()
        torch.manual_seed(1)                                # the same dropout masks
        logits = m(x)
        loss = F.cross_entropy(logits, y) + extra(m, x, y, logits)[0]
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1])      # float64: agreement to rounding
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, msg=name)
    for (name, ba), (_, bb) in zip(a.named_buffers(), b.named_buffers()):
        torch.testing.assert_close(bb, ba, msg=name)
    a.eval(), b.eval()
    torch.testing.assert_close(b(x), a(x))
    # the plain backbone has no gates and plain BatchNorm2d, and the gated model keeps its fused layers
    plain = b.plain_backbone()
    assert not any(type(m) is G.GatedBatchNorm2d for m in plain.modules())
    assert any(type(m) is G.GatedBatchNorm2d for m in b.backbone.modules())
    b._handle.remove()
    assert not any(type(m) is G.GatedBatchNorm2d for m in b.backbone.modules())


def test_bn_without_running_statistics_uses_batch_statistics_in_both_modes():
    torch.manual_seed(3)
    plain = nn.BatchNorm2d(3, track_running_stats=False)
    gated = copy.deepcopy(plain)
    g = torch.rand(5, 3)
    G.attach(gated, lambda bn, x: G.batch_norm_gated(bn, x, g))
    x = torch.randn(5, 3, 4, 4) * 2 + 1
    for mode in (True, False):
        plain.train(mode), gated.train(mode)
        assert G.fast_path(gated, x)                 # no running statistics: batch statistics in eval too
        torch.testing.assert_close(gated(x), plain(x) * g[:, :, None, None], atol=1e-5, rtol=1e-5)
    one = torch.randn(1, 3, 1, 1)
    gated.train()
    assert not G.fast_path(gated, one)
    with pytest.raises(ValueError, match="more than 1 value"):   # BatchNorm2d's own error, as unfused
        gated(one)


def test_a_second_gating_of_the_same_bn_stacks_instead_of_replacing_the_first():
    def make(fuse):
        torch.manual_seed(4)
        gm = W.GatedModel(build_model("resnet20", num_classes=10, width=0.5), 16, fuse_batchnorm=fuse).double()
        torch.manual_seed(5)
        second = W.InputGates(gm.layers, build_gate=lambda layer: W.MwTGate(layer.conv.in_channels,
                                                                            layer.out_channels)).double()
        return gm, second, second.install(gm.backbone)     # on attached BNs the second one uses hooks

    fused, second, handle = make(True)
    bn = fused.layers[0].output_module
    assert type(bn) is G.GatedBatchNorm2d and not G.can_fuse(bn)
    with pytest.raises(TypeError, match="GatedBatchNorm2d"):
        G.attach(bn, lambda b, x: x)
    plain, plain_second, plain_handle = make(False)
    x = torch.rand(8, 3, 16, 16, dtype=torch.double)
    fused.train(), plain.train()
    torch.testing.assert_close(fused(x), plain(x))       # both gatings apply, as with two hooks
    assert set(second.last) == set(fused.gates.last)
    handle.remove(), plain_handle.remove()               # the first gating keeps working on its own
    assert type(bn) is G.GatedBatchNorm2d
    torch.testing.assert_close(fused(x), plain(x))
