"""Composition of detector modules into a classifier."""
from __future__ import annotations

import pytest
import torch

from modtools import compose as C
from modtools import data as D
from modtools import gradsplitter as G
from modtools import train as T
from modtools.baseline import BaselineConfig, baseline_module
from modtools.metrics import roc_auc
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
    assert G.best_modules([[float("nan"), 0.1], [0.2, float("nan")]]) == [1, 0]   # NaN (undefined) never wins


def test_module_report_has_a_threshold_free_auc(split_model):
    model, result, train, val = split_model
    report = G.evaluate_modules(model, result, val, val, device="cpu")
    scores = G.module_scores(model, result, val, "cpu")
    for m in report["per_module"]:
        assert 0.0 <= m["auc"] <= 1.0
        assert m["auc"] == pytest.approx(roc_auc(scores[:, m["class"]], val.labels == m["class"]))


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


def test_calibration_maps_a_known_score_shift_back():
    """Scores drawn with a known calibration (a = 2, b = -1); the same scores shifted by +1.5 in logit
    space are fitted with b lower by 2 × 1.5, so both calibrate to the same probabilities."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 1, generator=g)
    target = torch.bernoulli(torch.sigmoid(2 * z - 1), generator=g)
    a, b = C.fit_calibration(z, target, steps=800, lr=0.05)
    a2, b2 = C.fit_calibration(z + 1.5, target, steps=800, lr=0.05)
    assert float(a) == pytest.approx(2.0, abs=0.1) and float(b) == pytest.approx(-1.0, abs=0.1)
    assert float(a2) == pytest.approx(float(a), abs=0.05) and float(b2) == pytest.approx(float(b) - 1.5 * float(a), abs=0.1)
    torch.testing.assert_close(torch.sigmoid(a2 * (z + 1.5) + b2), torch.sigmoid(a * z + b), atol=0.02, rtol=0.05)


def test_refit_heads_repairs_modules_that_never_saw_each_others_inputs(split_model):
    """Modules of two 'sources' (class 0 of one, class 1 of a model with other templates): raw scores
    do not compare, a joint head re-fit on the mixed task's training split does."""
    model, result, train, val = split_model
    other_train = D.synthetic(3, 40, 16, 1, seed=5)
    torch.manual_seed(1)
    other = build_model("resnet20", in_channels=1, num_classes=3, width=0.5)
    T.fit(other, other_train, None, T.FitConfig(epochs=6, batch_size=16), device="cpu", progress=False)
    other_result = G.decompose(other, other_train, D.synthetic(3, 10, 16, 1, seed=5, split="test"),
                               G.GradSplitterConfig(first_head_epochs=6, cycle_epochs=0, lr_head=0.05,
                                                    batch_size=16), device="cpu")
    modules = [G.to_module(model, result, 0, train), G.to_module(other, other_result, 1, other_train)]
    task_train = D.mixed_task(train, [0], other_train, [1], "train")
    task_test = D.mixed_task(val, [0], D.synthetic(3, 15, 16, 1, seed=5, split="test"), [1], "test")
    composed = C.ComposedClassifier(modules)
    before = C.evaluate_composed(composed, task_test, device="cpu")["accuracy"]
    head_before = modules[0].head.fc1.weight.clone()
    losses = composed.refit_heads(task_train, epochs=40, lr=0.02)
    after = C.evaluate_composed(composed, task_test, device="cpu")["accuracy"]
    assert losses[-1] < losses[0] and after >= max(before, 0.9)
    assert torch.equal(modules[0].head.fc1.weight, head_before)   # the modules themselves are unchanged
    with pytest.raises(ValueError, match="epochs"):
        composed.refit_heads(task_train, epochs=-1)
