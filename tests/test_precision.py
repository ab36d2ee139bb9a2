"""Mixed precision: the setting, its resolution per device, and the loops that use it."""
from __future__ import annotations

import json

import pytest
import torch

from modtools import data as D
from modtools import gradsplitter as G
from modtools import precision as PR
from modtools import seam as S
from modtools import train as T
from modtools.io import config_hash
from modtools.profiles import PROFILE_VALUES
from modtools.runner import notebook_parameters, write_results

from conftest import tiny_model


def test_bad_precision_names_the_value_and_the_choices():
    with pytest.raises(ValueError, match=r"precision='half'.*fp32.*bf16.*auto"):
        PR.check_precision("half")
    for make in (lambda: T.FitConfig(precision="fp16"), lambda: G.GradSplitterConfig(precision="fp16"),
                 lambda: S.SeaMConfig(precision="fp16")):
        with pytest.raises(ValueError, match="precision='fp16'"):
            make()


def test_auto_means_bf16_only_where_the_device_is_fast(monkeypatch):
    assert PR.resolved("fp32", "cpu") == "fp32" and PR.resolved("bf16", "cpu") == "bf16"
    monkeypatch.setattr(PR, "fast_bf16", lambda device: True)
    assert PR.resolved("auto", "cpu") == "bf16"
    monkeypatch.setattr(PR, "fast_bf16", lambda device: False)
    assert PR.resolved("auto", "cpu") == "fp32"
    conv = torch.nn.Conv2d(1, 2, 3)
    x = torch.randn(1, 1, 5, 5)
    with PR.autocast("auto", "cpu"):          # fp32 here: a no-op
        assert conv(x).dtype == torch.float32
    with PR.autocast("bf16", "cpu"):
        assert conv(x).dtype == torch.bfloat16


def test_float32_cache_keys_are_those_from_before_the_field():
    spec = T.ModelSpec(arch="simcnn", fit=T.FitConfig(epochs=2))
    d = spec.to_dict()
    del d["fit"]["precision"]
    assert spec.key() == f"simcnn-{config_hash(d)}"           # caches made before the field still hit
    mixed = T.ModelSpec(arch="simcnn", fit=T.FitConfig(epochs=2, precision="bf16"))
    assert mixed.key() != spec.key()


def test_bf16_training_learns_and_keeps_float32_weights(tiny_data):
    train, test = tiny_data
    histories = {}
    for precision in ("fp32", "bf16"):
        model = tiny_model("simcnn", in_channels=1, num_classes=4)
        histories[precision] = T.fit(model, train, None, T.FitConfig(epochs=4, batch_size=16, precision=precision),
                                     device="cpu", progress=False)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert T.predict(model, test, device="cpu").dtype == torch.float32     # reported outputs are float32
    loss = [h["train_loss"] for h in histories["bf16"]]
    assert loss[-1] < loss[0]
    assert abs(histories["bf16"][-1]["train_loss"] - histories["fp32"][-1]["train_loss"]) < 0.25


def test_bf16_gradsplitter_search_gives_float32_scores_and_its_own_cache_entry(tiny_data, tmp_path):
    train, test = tiny_data
    model = tiny_model("resnet20", in_channels=1, num_classes=4)
    val, _ = D.train_val_split(test, 0.5, seed=0)
    base = dict(first_head_epochs=1, cycle_epochs=2, cycle_mask=1, cycle_head=1, init="value", init_value=0.02,
                lr_mask=0.05, batch_size=32)
    bf16 = G.decompose(model, train, val, G.GradSplitterConfig(**base, precision="bf16"), device="cpu", cache=tmp_path)
    assert not bf16.from_cache and bf16.config["precision"] == "bf16"
    assert all(v.dtype == torch.bool for v in bf16.masks.values())
    assert all(v.dtype == torch.float32 for v in bf16.heads.values())
    again = G.decompose(model, train, val, G.GradSplitterConfig(**base, precision="bf16"), device="cpu", cache=tmp_path)
    assert again.from_cache and all(torch.equal(again.masks[k], bf16.masks[k]) for k in bf16.masks)
    fp32 = G.decompose(model, train, val, G.GradSplitterConfig(**base), device="cpu", cache=tmp_path)
    assert not fp32.from_cache and len(list((tmp_path / "gradsplitter").iterdir())) == 2
    assert fp32.masks.keys() == bf16.masks.keys()


def test_bf16_seam_is_deterministic_and_its_module_runs_in_float32(tiny_data):
    train, test = tiny_data
    model = tiny_model("simcnn", in_channels=1, num_classes=4)
    T.fit(model, train, None, T.FitConfig(epochs=3, batch_size=16), device="cpu", progress=False)
    p = S.target_problem(1, train.class_names)
    tr, va = p.data(train, "train"), p.data(test, "validation")
    cfg = S.SeaMConfig(lr_mask=0.2, alpha=2.0, epochs=3, init_value=0.5, augment=False, batch_size=16,
                       precision="bf16")
    r1, r2 = S.reengineer(model, p, tr, va, cfg, device="cpu"), S.reengineer(model, p, tr, va, cfg, device="cpu")
    assert all(torch.equal(r1.masks[k], r2.masks[k]) for k in r1.masks)
    module = S.to_module(model, r1, tr)
    assert module(tr.float_images()[:4]).dtype == torch.float32


def test_compare_runs_approaches_in_its_own_precision():
    from modtools.compare import CompareConfig, approach_settings
    with pytest.raises(ValueError, match="precision='half'"):
        CompareConfig(approach_precision="half")
    spec = T.ModelSpec(arch="simcnn", fit=T.FitConfig(epochs=2))
    params, _ = approach_settings("seam", CompareConfig(approach_precision="bf16"), spec)
    assert params["precision"] == "bf16"
    params, _ = approach_settings("seam", CompareConfig(), spec)          # as the model was trained
    assert params["precision"] == "fp32"
    params, _ = approach_settings("seam", CompareConfig(approach_precision="bf16",
                                                        approach_params={"seam": {"precision": "fp32"}}), spec)
    assert params["precision"] == "fp32"                                   # an explicit override wins
    params, _ = approach_settings("baseline", CompareConfig(approach_precision="bf16"), spec)
    assert "precision" not in params                                        # no such field


def test_results_say_what_precision_meant_and_the_paper_profile_is_float32(tmp_path, monkeypatch):
    monkeypatch.setattr(PR, "fast_bf16", lambda device: True)
    path = write_results(tmp_path, "x", {"precision": "auto", "seed": 0}, {"accuracy": 0.5}, device="cpu")
    assert json.loads(path.read_text())["compute_precision"] == "bf16"
    for notebook, values in PROFILE_VALUES.items():
        if "precision" in notebook_parameters(notebook):
            assert values["paper"]["precision"] == "fp32", notebook
            assert notebook_parameters(notebook)["precision"]["default"] in ("fp32", "auto"), notebook
