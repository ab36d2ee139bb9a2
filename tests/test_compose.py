"""Composition of detector modules into a classifier."""
from __future__ import annotations

import pytest
import torch

from modtools import compose as C
from modtools import data as D
from modtools import gradsplitter as G
from modtools import train as T
from modtools.baseline import BaselineConfig, baseline_module
from modtools.errors import ModuleMismatchError
from modtools.models import build_model


@pytest.fixture(scope="module")
def split_model():
    train = D.synthetic(3, 40, 16, 1, seed=0)
    val = D.synthetic(3, 15, 16, 1, seed=0, split="test")
    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=1, num_classes=3, width=0.5)
    T.fit(model, train, None, T.FitConfig(epochs=6, batch_size=16), device="cpu", progress=False)
    cfg = G.GradSplitterConfig(first_head_epochs=6, cycle_epochs=0, lr_head=0.05, batch_size=16)
    result = G.decompose(model, train, val, cfg, device="cpu")
    return model, result, train, val


def test_composed_scores_follow_module_order(split_model):
    model, result, train, val = split_model
    modules = [G.to_module(model, result, c, train) for c in range(3)]
    composed = C.ComposedClassifier(modules)
    x = val.float_images()[:5]
    scores = composed(x)
    assert scores.shape == (5, 3)
    torch.testing.assert_close(scores, G.module_scores(model, result, val.take(range(5)), device="cpu"),
                               atol=1e-5, rtol=1e-4)
    reordered = C.ComposedClassifier([modules[2], modules[0]])
    torch.testing.assert_close(reordered(x), scores[:, [2, 0]])
    assert composed.class_names == train.class_names


def test_composition_learns_separable_task_and_calibrates(split_model):
    model, result, train, val = split_model
    composed = C.ComposedClassifier([G.to_module(model, result, c, train) for c in range(3)])
    assert C.evaluate_composed(composed, val, device="cpu")["accuracy"] >= 0.9
    composed.calibrate(val)
    assert composed.calibrated and C.evaluate_composed(composed, val, device="cpu")["accuracy"] >= 0.9
    first = composed.scale.clone(), composed.shift.clone()
    composed.calibrate(val)  # again: fitted on the raw scores, so the same calibration
    torch.testing.assert_close((composed.scale, composed.shift), first)


def test_best_module_choice():
    assert G.best_modules([[0.9, 0.1, 0.5], [0.8, 0.7, 0.5]]) == [0, 1, 0]


def test_mismatched_modules_are_refused(split_model):
    model, result, train, _ = split_model
    good = G.to_module(model, result, 0, train)
    with pytest.raises(ModuleMismatchError, match="at least one"):
        C.ComposedClassifier([])
    subtask = baseline_module(model, train, [0, 1], BaselineConfig(keep_fraction=0.9))
    with pytest.raises(ModuleMismatchError, match="not a detector"):
        C.ComposedClassifier([good, subtask])
    rgb = D.synthetic(3, 10, 16, 3, seed=0)
    other_model = build_model("resnet20", in_channels=3, num_classes=3, width=0.5)
    other = G.to_module(other_model, G.SplitResult({k: v for k, v in result.masks.items()}, result.heads, [], 1, 0.0,
                                                   {}), 1, rgb)
    with pytest.raises(ModuleMismatchError, match="reads inputs of shape"):
        C.ComposedClassifier([good, other])
