"""Extraction: the smaller network computes exactly what the masked model computes."""
from __future__ import annotations

import pytest
import torch

from modtools.errors import EmptyMaskError
from modtools.extract import extract, extraction_error
from modtools.masks import find_maskable_layers, random_masks
from modtools.metrics import count_macs

from conftest import ALL_ARCHS, tiny_model


@pytest.mark.parametrize("arch", ALL_ARCHS)
@pytest.mark.parametrize("keep", [0.3, 0.7])
def test_masked_equals_extracted_with_fewer_macs(arch, keep):
    model = tiny_model(arch)
    layers = find_maskable_layers(model)
    masks = random_masks(layers, keep, seed=int(keep * 10))
    small, report = extract(model, masks)
    x = torch.rand(4, 3, 32, 32)
    assert extraction_error(model, masks, small, x) <= 1e-5
    full, cut = count_macs(model, (3, 32, 32)), count_macs(small, (3, 32, 32))
    assert cut["macs"] < full["macs"] and cut["params"] < full["params"]
    assert set(report.kept) == {layer.name for layer in layers}
    # the source model is untouched
    assert all(p.shape == q.shape for p, q in zip(model.parameters(), tiny_model(arch).parameters()))


def test_28x28_inputs():
    model = tiny_model("simcnn", in_channels=1)
    masks = random_masks(find_maskable_layers(model, torch.zeros(1, 1, 28, 28)), 0.5)
    small, _ = extract(model, masks, image_size=28)
    assert extraction_error(model, masks, small, torch.rand(3, 1, 28, 28)) <= 1e-5


def test_residual_union_rule():
    """Coupled convs of a residual stream keep the union of their channels; a channel that
    every member drops is removed, one that any member keeps stays (others contribute 0)."""
    model = tiny_model("rescnn")
    layers = {layer.name: layer for layer in find_maskable_layers(model)}
    c = layers["conv_1.0"].out_channels
    a, b = torch.ones(c), torch.ones(c)
    a[[0, 1]] = 0       # conv_1 drops 0 and 1
    b[[1, 2]] = 0       # conv_3 drops 1 and 2 (its output is added to conv_1's)
    masks = {"conv_1.0": a, "conv_3.0": b}
    small, report = extract(model, masks)
    assert small.conv_1[0].out_channels == c - 1   # only channel 1 is dropped by both
    assert small.conv_3[0].out_channels == c - 1
    assert report.coupled_kept["conv_1.0"] == 1 and report.coupled_kept["conv_3.0"] == 1
    assert "union" in report.rule
    assert extraction_error(model, masks, small, torch.rand(2, 3, 32, 32)) <= 1e-5


def test_empty_layer_raises_unless_policy():
    model = tiny_model("resnet20")
    layers = find_maskable_layers(model)
    masks = random_masks(layers, 0.5)
    name = layers[3].name
    masks[name] = torch.zeros(layers[3].out_channels)
    with pytest.raises(EmptyMaskError, match=name.replace(".", r"\.") + ".*keep_one"):
        extract(model, masks)
    small, report = extract(model, masks, on_empty="keep_one")
    assert report.empty_layers == [name] and report.on_empty == "keep_one"
    assert extraction_error(model, masks, small, torch.rand(2, 3, 32, 32)) <= 1e-5
    with pytest.raises(ValueError, match="on_empty"):
        extract(model, masks, on_empty="lower_threshold")


def test_aligned_widths_stay_exact():
    model = tiny_model("resnet18")
    layers = find_maskable_layers(model)
    masks = random_masks(layers, 0.4, seed=2)
    small, report = extract(model, masks, align=8)
    assert report.align == 8
    widths = [m.out_channels for m in small.modules() if isinstance(m, torch.nn.Conv2d)]
    originals = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w % 8 == 0 or w == o for w, o in zip(widths, originals))
    assert extraction_error(model, masks, small, torch.rand(2, 3, 32, 32)) <= 1e-5
    with pytest.raises(ValueError, match="align"):
        extract(model, masks, align=0)


def test_extracted_networks_are_freed_when_dropped():
    """The layer cache must not keep throw-away copies alive (a search rebuilds thousands of them)."""
    import gc
    import weakref

    from modtools.extract import extract
    from modtools.masks import find_maskable_layers, random_masks

    from conftest import tiny_model

    model = tiny_model("resnet20", in_channels=1, num_classes=3)
    masks = random_masks(find_maskable_layers(model, torch.zeros(1, 1, 16, 16)), 0.5, seed=0)
    net, _ = extract(model, masks, image_size=16)
    ref = weakref.ref(net)
    del net
    gc.collect()
    assert ref() is None
