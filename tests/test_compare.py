"""The comparison's configuration checks, its per-task selection and the side-by-side composition."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from modtools import compare as C
from modtools import data as D
from modtools.train import SpecData


def test_config_rejects_unknown_approaches_and_bad_settings_before_any_run():
    with pytest.raises(Exception, match="unknown approach"):
        C.CompareConfig(approaches=["baseline", "magic"])
    with pytest.raises(ValueError, match=r"approach_params for unknown approaches \['magic'\]"):
        C.CompareConfig(approach_params={"magic": {}})
    with pytest.raises(ValueError, match=r"approach_params\['seam'\]\['val_per_class'\]=0; allowed: an integer >= 1"):
        C.CompareConfig(approach_params={"seam": {"val_per_class": 0}})
    with pytest.raises(Exception, match="keep_fraction"):
        C.CompareConfig(approach_params={"baseline": {"keep_fraction": 7.0}})
    cfg = C.CompareConfig(approach_params={"cnnsplitter": {"val_per_class": 5}})   # a data cap is not a config field
    assert cfg.approach_params["cnnsplitter"] == {"val_per_class": 5}
    with pytest.raises(ValueError, match=r"arch_params\['rescnn'\] names unknown approaches \['magic'\]"):
        C.CompareConfig(arch_params={"rescnn": {"magic": {}}})
    with pytest.raises(ValueError, match=r"arch_params\['rescnn'\]\['gradsplitter'\]\['search_per_class'\]=0"):
        C.CompareConfig(arch_params={"rescnn": {"gradsplitter": {"search_per_class": 0}}})
    with pytest.raises(ValueError, match=r"arch_params\['rescnn'\]=3; allowed: a dict"):
        C.CompareConfig(arch_params={"rescnn": 3})
    with pytest.raises(Exception, match="keep_fraction"):
        C.CompareConfig(arch_params={"simcnn": {"baseline": {"keep_fraction": 7.0}}})
    with pytest.raises(ValueError, match=r"unknown architectures \['res_cnn'\]; allowed: .*rescnn"):
        C.CompareConfig(arch_params={"res_cnn": {}}).check_archs(["simcnn"])
    C.CompareConfig(arch_params={"rescnn": {}}).check_archs(["simcnn"])     # a zoo model not run: unused


def test_arch_params_override_approach_params_for_that_architecture_only():
    cfg = C.CompareConfig(approach_params={"gradsplitter": {"alpha": 0.5, "search_per_class": 300, "val_per_class": 100}},
                          arch_params={"rescnn": {"gradsplitter": {"search_per_class": 100, "alpha": 0.7}}})
    cfg.check_archs(["simcnn", "rescnn"])
    plain, plain_caps = C.approach_settings("gradsplitter", cfg, arch="simcnn")
    res, res_caps = C.approach_settings("gradsplitter", cfg, arch="rescnn")
    assert plain_caps == {"search_per_class": 300, "val_per_class": 100} and plain["alpha"] == 0.5
    assert res_caps == {"search_per_class": 100, "val_per_class": 100} and res["alpha"] == 0.7
    assert C.approach_settings("seam", cfg, arch="rescnn") == C.approach_settings("seam", cfg, arch="simcnn")


def test_search_data_caps_train_and_validation_only():
    ds = D.synthetic(4, 30, 8, 1, seed=0)
    test = D.synthetic(4, 10, 8, 1, seed=0, split="test")
    capped = C.search_data(SpecData(ds, ds, test), 5, 2, seed=0)
    assert capped.train.class_counts() == [5] * 4 and capped.val.class_counts() == [2] * 4
    assert capped.test is test
    assert C.search_data(SpecData(ds, ds, test), None, None).train.class_counts() == ds.class_counts()


def test_best_by_picks_per_model_and_task_ignoring_missing_values():
    rows = [{"arch": "a", "classes": [1], "approach": "x", "macs_ratio": 0.5},
            {"arch": "a", "classes": [1], "approach": "y", "macs_ratio": 0.3},
            {"arch": "a", "classes": [1], "approach": "z", "macs_ratio": None},
            {"arch": "b", "classes": [0, 1], "approach": "x", "macs_ratio": 0.9}]
    assert C.best_by(rows, "macs_ratio") == {("a", (1,)): "y", ("b", (0, 1)): "x"}
    assert C.best_by(rows, "macs_ratio", lower=False)[("a", (1,))] == "x"


def test_side_by_side_takes_each_module_first_score():
    class Fixed(nn.Module):
        def __init__(self, v):
            super().__init__()
            self.v = v

        def forward(self, x):
            return torch.full((len(x), 2), float(self.v))

    class Part:
        def __init__(self, v):
            self.v = v

        def as_model(self):
            return Fixed(self.v)

    net = C.SideBySide([Part(1), Part(3), Part(2)])
    out = net(torch.zeros(4, 1, 2, 2))
    assert out.shape == (4, 3) and out.argmax(1).tolist() == [1, 1, 1, 1]


def test_a_row_reuses_a_cached_fp32_search_and_says_so(tmp_path):
    from conftest import tiny_model

    from modtools import gradsplitter as G
    from modtools.approaches import make_config

    train = D.synthetic(4, 24, 8, 1, seed=0)
    val = D.synthetic(4, 8, 8, 1, seed=1)
    test = D.synthetic(4, 8, 8, 1, seed=2, split="test")
    model = tiny_model("simcnn", in_channels=1, num_classes=4).eval()
    settings = {"first_head_epochs": 1, "cycle_epochs": 2, "cycle_mask": 1, "cycle_head": 1, "batch_size": 32}
    cfg = C.CompareConfig(approaches=["gradsplitter"], approach_params={"gradsplitter": settings}, quick_settings=False,
                          search_per_class=None, val_per_class=None, latency_repeats=2, approach_precision="bf16")
    params, _ = C.approach_settings("gradsplitter", cfg)
    exact = G.decompose(model, train, val, make_config("gradsplitter", {**params, "precision": "fp32"}),
                        device="cpu", cache=tmp_path)
    row = C.compare_row("gradsplitter", "simcnn", model, SpecData(train, val, test), [0, 1], cache=tmp_path, cfg=cfg,
                        device="cpu")
    assert row["compute_precision"] == "fp32" and row["config"]["precision"] == "bf16"   # asked bf16, got the exact one
    assert row["seconds_to_module"] >= exact.seconds                                  # counted at its original cost
    assert len(list((tmp_path / "gradsplitter").iterdir())) == 1                      # nothing searched again
