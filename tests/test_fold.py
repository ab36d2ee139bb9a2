"""Folding frozen BNs into their convs: the same function, the same masked modules, the original untouched."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from modtools import data as D
from modtools import gradsplitter as G
from modtools.fold import fold_norms_into_convs, frozen_norm_affine
from modtools.layers import find_maskable_layers
from modtools.masks import batched_forward

from conftest import ALL_ARCHS, tiny_model


def _paired_norms(layers) -> int:
    return sum(unit.norm is not None for layer in layers for unit in (layer, *layer.followers))


@pytest.mark.parametrize("arch", ALL_ARCHS + ["tv:mobilenet_v3_small"])
def test_folded_copy_computes_the_masked_modules_of_the_original(arch):
    model = tiny_model(arch, in_channels=1, num_classes=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    example = torch.zeros(1, 1, 32, 32)
    layers = find_maskable_layers(model, example)
    folded, new_layers, count = fold_norms_into_convs(model, layers, example)
    assert count == _paired_norms(layers)
    assert [layer.name for layer in new_layers] == [layer.name for layer in layers]
    assert _paired_norms(new_layers) == 0 and all(layer.conv is dict(folded.named_modules())[layer.name]
                                                  for layer in new_layers)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())     # the original is untouched
    g = torch.Generator().manual_seed(1)
    masks = {layer.name: (torch.rand(3, layer.out_channels, generator=g) > 0.4).float() for layer in layers}
    x = torch.rand(4, 1, 32, 32, generator=g)
    with torch.no_grad():
        want = batched_forward(model, x, masks, layers, share_first=True)
        got = batched_forward(folded, x, masks, new_layers, share_first=True)
    scale = float(want.abs().max())
    torch.testing.assert_close(got / scale, want / scale, rtol=1e-4, atol=1e-5)


def test_affine_of_a_bn_is_its_eval_map():
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 0.0]))
        bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
        bn.weight.copy_(torch.tensor([2.0, 1.0, -1.0]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, 0.5]))
    scale, shift = frozen_norm_affine(bn)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(bn(x), x * scale.view(1, 3, 1, 1) + shift.view(1, 3, 1, 1))
    assert frozen_norm_affine(nn.BatchNorm2d(3).train()) is None
    assert frozen_norm_affine(nn.BatchNorm2d(3, track_running_stats=False).eval()) is None


class _SharedConvOutput(nn.Module):
    """A conv whose output feeds its BN and, unnormalised, a second path: folding would change that path."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        c = self.conv(x)
        y = self.conv2(torch.relu(self.bn(c))) + c
        return self.fc(y.mean((2, 3)))


def test_no_fold_when_the_copy_disagrees_or_the_model_trains():
    model = _SharedConvOutput()
    with torch.no_grad():
        model.bn.running_mean.fill_(0.3)
        model.bn.running_var.fill_(2.0)
    model.eval()
    example = torch.zeros(1, 1, 8, 8)
    layers = find_maskable_layers(model, example)
    same, same_layers, count = fold_norms_into_convs(model, layers, example)
    assert same is model and same_layers is layers and count == 0
    trained = tiny_model("simcnn", in_channels=1).train()
    layers = find_maskable_layers(trained, torch.zeros(1, 1, 32, 32))
    assert fold_norms_into_convs(trained, layers, torch.zeros(1, 1, 32, 32))[2] == 0


def test_gradsplitter_search_is_the_same_with_folded_norms():
    """A few epochs of search on the folded copy end with the masks and validation accuracy of the
    search on the model with its BNs (equal up to rounding, which flips no mask here)."""
    model = tiny_model("simcnn", in_channels=1, num_classes=4)
    train, val = D.synthetic(4, 16, 32, 1, seed=0), D.synthetic(4, 8, 32, 1, seed=1)
    cfg = G.GradSplitterConfig(first_head_epochs=1, cycle_epochs=3, cycle_mask=2, cycle_head=1, batch_size=16,
                               init="value", init_value=0.006, lr_mask=0.001, alpha=0.001)
    runs = []
    for fold in (False, True):
        splitter = G.GradSplitter(model, 4, cfg, (1, 32, 32), "cpu", fold_norms=fold)
        assert (splitter.folded_norms > 0) == fold
        runs.append(splitter.run(train, val))
    plain, folded = runs
    assert all(torch.equal(plain.masks[k], folded.masks[k]) for k in plain.masks)
    assert [h["krr"] for h in plain.history] == [h["krr"] for h in folded.history]
    assert 0.2 < plain.history[-1]["krr"] < 0.9          # the search did drop kernels, not all of them
    assert folded.val_accuracy == pytest.approx(plain.val_accuracy, abs=1 / len(val.labels))
