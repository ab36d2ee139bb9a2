"""Training: seeded determinism, history, the config-hash cache, devices."""
from __future__ import annotations

import pytest
import torch

from modtools import train as T
from modtools.models import build_model


def _fit(tiny_data, seed=0):
    train, test = tiny_data
    torch.manual_seed(123)
    model = build_model("resnet20", in_channels=1, num_classes=4, width=0.25)
    hist = T.fit(model, train, test, T.FitConfig(epochs=2, batch_size=16, seed=seed, augment=True), device="cpu",
                 progress=False)
    return model, hist


def test_fit_is_seeded_and_records_history(tiny_data):
    m1, h1 = _fit(tiny_data)
    m2, h2 = _fit(tiny_data)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert [h["train_loss"] for h in h1] == [h["train_loss"] for h in h2]
    assert set(h1[0]) >= {"epoch", "lr", "train_loss", "train_accuracy", "val_accuracy", "seconds"}
    assert all(0 <= h["val_accuracy"] <= 1 for h in h1)


def test_fit_learns_separable_data(tiny_data):
    train, test = tiny_data
    model = build_model("simcnn", in_channels=1, num_classes=4, width=0.125)
    T.fit(model, train, None, T.FitConfig(epochs=6, batch_size=16, lr=0.05), device="cpu", progress=False)
    assert T.evaluate(model, test, device="cpu")["accuracy"] >= 0.9


def test_extra_loss_terms_are_logged(tiny_data):
    train, _ = tiny_data
    model = build_model("resnet20", in_channels=1, num_classes=4, width=0.25)
    extra = lambda m, x, y, logits: (0.1 * logits.pow(2).mean(), {"l2_logits": float(logits.pow(2).mean())})  # noqa: E731
    hist = T.fit(model, train, None, T.FitConfig(epochs=1, batch_size=32), device="cpu", progress=False,
                 extra_loss=extra)
    assert hist[0]["l2_logits"] > 0


def test_cache_trains_once(tmp_path, tiny_data):
    spec = T.ModelSpec(arch="resnet20", width=0.25, dataset="synthetic", fit=T.FitConfig(epochs=1, batch_size=16))
    m1, r1 = T.train_cached(spec, cache=tmp_path, device="cpu", progress=False)
    m2, r2 = T.train_cached(spec, cache=tmp_path, device="cpu", progress=False)
    assert not r1["cached"] and r2["cached"] and r1["key"] == r2["key"] == spec.key()
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    other = T.ModelSpec(arch="resnet20", width=0.25, dataset="synthetic", fit=T.FitConfig(epochs=2, batch_size=16))
    assert other.key() != spec.key()
    assert T.ModelSpec.from_dict(spec.to_dict()).key() == spec.key()


def test_checkpoint_written(tmp_path, tiny_data):
    train, test = tiny_data
    model = build_model("resnet20", in_channels=1, num_classes=4, width=0.25)
    T.fit(model, train, test, T.FitConfig(epochs=1, batch_size=32), device="cpu", progress=False,
          checkpoint=tmp_path / "ck.safetensors")
    from modtools.io import load_tensors
    state = load_tensors(tmp_path / "ck.safetensors")
    assert set(state) == set(model.state_dict())


def test_devices():
    assert T.resolve_device("cpu").type == "cpu"
    assert T.resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available.*available"):
            T.resolve_device("cuda")
    with pytest.raises(ValueError, match="optimizer"):
        T.FitConfig(optimizer="lbfgs")


def test_spec_models_start_from_the_seed(tiny_data):
    spec = T.ModelSpec(arch="resnet20", width=0.25, dataset="synthetic", fit=T.FitConfig(seed=3))
    train, _ = tiny_data
    a = T.build_for(spec, train)
    torch.rand(100)  # unrelated draws must not change the initial weights
    b = T.build_for(spec, train)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_the_dirichlet_draw_is_of_the_capped_training_set():
    # GradSplitter draws its imbalanced subset from the whole training set; with a per-class cap, the
    # cap is that set, so exactly one class (the one with the largest share) keeps all it had
    for seed in range(3):
        data = T.spec_data(T.ModelSpec(dataset="synthetic", per_class=16, dirichlet_alpha=5.0, data_seed=seed))
        counts = [a + b for a, b in zip(data.train.class_counts(), data.val.class_counts())]
        assert max(counts) == 16 and counts.count(16) == 1 and min(counts) >= 10, counts
    capped = T.ModelSpec(dataset="synthetic", per_class=30)
    assert T.ModelSpec(dataset="synthetic", per_class=30, dirichlet_alpha=5.0).key() != capped.key()
