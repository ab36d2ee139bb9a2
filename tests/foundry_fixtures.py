"""Fixtures of the Module Foundry tests: a small model trained on the synthetic set, in a temporary cache."""
from __future__ import annotations

import pytest

from modtools.baseline import BaselineConfig, baseline_module
from modtools.train import FitConfig, ModelSpec, spec_data, train_cached

SPEC = ModelSpec(arch="rescnn", width=0.125, dataset="synthetic", fit=FitConfig(epochs=10, batch_size=16, lr=0.05))


@pytest.fixture(scope="session")
def foundry_model(tmp_path_factory):
    """(model, record, data, cache): a rescnn that learns the 4-class synthetic set."""
    cache = tmp_path_factory.mktemp("cache")
    data = spec_data(SPEC)
    model, record = train_cached(SPEC, cache, device="cpu", progress=False, data=data)
    return model, record, data, cache


def make_module(model, data, classes, keep: float = 0.5, accuracy: float | None = None):
    module = baseline_module(model, data.train, classes, BaselineConfig(keep_fraction=keep), device="cpu")
    if accuracy is not None:
        module.metrics["accuracy"] = accuracy
    return module
