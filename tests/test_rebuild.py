"""The fast rebuild: many masks of one model, each giving what extraction gives (same widths, same
outputs), from a structure analysed once."""
from __future__ import annotations

import pytest
import torch
from test_layers import GroupedCNN, SeparableCNN

from modtools.errors import EmptyMaskError, MaskShapeError, UnknownNameError, UnsupportedModelError
from modtools.extract import extract
from modtools.masks import apply_masks, find_maskable_layers, random_masks
from modtools.rebuild import Rebuilder

from conftest import ALL_ARCHS, tiny_model


def _same_network(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(sa[k].shape == sb[k].shape for k in sa), "the widths differ from extraction's"
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), atol=1e-6)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_each_mask_gives_what_extract_gives(arch):
    model = tiny_model(arch)
    layers = find_maskable_layers(model)
    rebuilder = Rebuilder(model)
    x = torch.rand(3, 3, 32, 32)
    for seed, keep in enumerate((0.3, 0.8, 0.5)):       # one rebuilder, several masks in a row
        masks = random_masks(layers, keep, seed=seed)
        _same_network(extract(model, masks)[0], rebuilder.build(masks), x)


def test_all_ones_mask_changes_nothing_and_the_source_stays():
    model = tiny_model("rescnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rebuilder = Rebuilder(model)
    layers = find_maskable_layers(model)
    rebuilder.build(random_masks(layers, 0.4, seed=1))            # a smaller one first
    net = rebuilder.build({layer.name: torch.ones(layer.out_channels) for layer in layers})
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_residual_union_and_masked_model_agree():
    model = tiny_model("rescnn")
    c = find_maskable_layers(model)[1].out_channels
    a, b = torch.ones(c), torch.ones(c)
    a[[0, 1]] = 0
    b[[1, 2]] = 0
    masks = {"conv_1.0": a, "conv_3.0": b}
    net = Rebuilder(model).build(masks)
    assert net.conv_1[0].out_channels == c - 1 and net.conv_3[0].out_channels == c - 1   # only channel 1 goes
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad(), apply_masks(model, masks):
        want = model(x)
    with torch.no_grad():
        assert torch.allclose(net(x), want, atol=1e-5)


def test_depthwise_followers_shrink_with_their_leader():
    model = SeparableCNN().eval()
    layers = find_maskable_layers(model, torch.zeros(1, 1, 16, 16))
    masks = {layers[0].name: torch.tensor([1., 0, 1, 0, 1, 0, 1, 1])}
    net = Rebuilder(model, image_size=16).build(masks)
    assert net.dw[0].groups == net.dw[0].out_channels == 5
    _same_network(extract(model, masks, image_size=16)[0], net, torch.rand(2, 1, 16, 16))


def test_empty_layer_policy_and_bad_masks():
    model = tiny_model("simcnn")
    layers = find_maskable_layers(model)
    rebuilder = Rebuilder(model)
    masks = random_masks(layers, 0.5, seed=0)
    masks[layers[2].name] = torch.zeros(layers[2].out_channels)
    with pytest.raises(EmptyMaskError, match=layers[2].name):
        rebuilder.build(masks, on_empty="raise")
    _same_network(extract(model, masks, on_empty="keep_one")[0], rebuilder.build(masks), torch.rand(2, 3, 32, 32))
    with pytest.raises(UnknownNameError, match="nope"):
        rebuilder.build({"nope": torch.ones(3)})
    with pytest.raises(MaskShapeError, match=layers[0].name):
        rebuilder.build({layers[0].name: torch.ones(layers[0].out_channels + 1)})


def test_grouped_convs_are_left_to_extract():
    with pytest.raises(UnsupportedModelError, match="grouped conv"):
        Rebuilder(GroupedCNN().eval(), image_size=16)
