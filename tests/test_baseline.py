"""The baseline modularizer: importance in one pass, top-fraction masks, modules."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modtools import baseline as B
from modtools.errors import InvalidClassError
from modtools.masks import ChannelGating, find_maskable_layers
from modtools.report import module_vs_model

from conftest import tiny_model


def test_importance_equals_per_class_means(tiny_data):
    train, _ = tiny_data
    model = tiny_model("resnet20", in_channels=1, num_classes=4)
    imp = B.kernel_importance(model, train, batch_size=7, device="cpu")
    layers = find_maskable_layers(model, torch.zeros(1, 1, 16, 16))
    assert set(imp) == {layer.name for layer in layers}
    # reference: one class at a time, whole class in one batch
    layer = layers[5]
    acts = {}
    gate = lambda lay, out, x: (acts.__setitem__("a", F.relu(out).mean((2, 3))), out)[1]  # noqa: E731
    with ChannelGating(model, [layer], gate), torch.no_grad():
        for c in range(4):
            model(train.float_images()[train.labels == c])
            torch.testing.assert_close(imp[layer.name][c], acts["a"].mean(0), atol=1e-5, rtol=1e-4)


def test_top_fraction_masks_count():
    imp = {"a": torch.rand(3, 10), "b": torch.rand(3, 7)}
    masks = B.top_fraction_masks(imp, [0, 2], 0.3)
    assert int(masks["a"].sum()) == 3 and int(masks["b"].sum()) == 3
    assert int(B.top_fraction_masks(imp, [1], 0.01)["a"].sum()) == 1


def test_modules_select_and_logistic(tiny_data):
    train, test = tiny_data
    model = tiny_model("simcnn", in_channels=1, num_classes=4)
    imp = B.kernel_importance(model, train, device="cpu")
    sub = B.baseline_module(model, train, [2, 0], B.BaselineConfig(keep_fraction=0.5), importance=imp, device="cpu")
    assert sub(torch.rand(3, 1, 16, 16)).shape == (3, 2)
    det = B.baseline_module(model, train, [1], B.BaselineConfig(keep_fraction=0.5, head="logistic", head_epochs=3),
                            importance=imp, device="cpu")
    scores = det(torch.rand(3, 1, 16, 16))
    assert scores.shape == (3, 1) and ((scores > 0) & (scores < 1)).all()
    cmp = module_vs_model(model, det, test, batch_sizes=(2,), latency_repeats=2, device="cpu")
    assert 0 <= cmp["module"]["accuracy"] <= 1 and cmp["ratios"]["macs"] < 1
    with pytest.raises(InvalidClassError, match="out of range"):
        B.baseline_module(model, train, [9], importance=imp)
    with pytest.raises(ValueError, match="one-class"):
        B.baseline_module(model, train, [0, 1], B.BaselineConfig(head="logistic"), importance=imp)
    with pytest.raises(ValueError, match="keep_fraction"):
        B.BaselineConfig(keep_fraction=0)
