"""Metrics: classification numbers, retention rates, MACs, latency."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from modtools.metrics import (MAC_UNIT, accuracy, classification_report, confusion_matrix, count_macs,
                              kernel_retention, measure_latency, roc_auc, weight_retention)


def test_confusion_and_report_by_hand():
    pred = torch.tensor([0, 1, 1, 2, 2, 2])
    true = torch.tensor([0, 1, 2, 2, 2, 0])
    conf = confusion_matrix(pred, true, 3)
    assert conf.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]
    rep = classification_report(pred, true, 3, ["a", "b", "c"])
    assert rep["accuracy"] == pytest.approx(4 / 6)
    c = rep["per_class"][2]
    assert c["precision"] == pytest.approx(2 / 3) and c["recall"] == pytest.approx(2 / 3) and c["support"] == 3
    b = rep["per_class"][1]
    assert b["precision"] == pytest.approx(0.5) and b["f1"] == pytest.approx(2 / 3)
    assert accuracy(pred, true) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="empty"):
        accuracy(torch.tensor([]), torch.tensor([]))


def test_kernel_retention_properties():
    ones = {"a": torch.ones(4), "b": torch.ones(6)}
    assert kernel_retention(ones)["rate"] == 1.0
    half = {"a": torch.tensor([1, 0, 1, 0]), "b": torch.zeros(6)}
    r = kernel_retention(half, widths={"c": 10})
    assert r["rate"] == pytest.approx(12 / 20) and r["per_layer"]["b"] == 0.0
    scores = torch.rand(50)
    rates = [kernel_retention({"a": (scores >= t).float()})["rate"] for t in torch.linspace(0, 1, 11)]
    assert all(0 <= x <= 1 for x in rates) and all(a >= b for a, b in zip(rates, rates[1:]))
    assert weight_retention({"w": torch.tensor([[1.0, 0.0], [1.0, 1.0]])})["rate"] == 0.75


def test_macs_match_analytic_count():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 10 * 10, 5, bias=False))
    out = count_macs(model, (3, 10, 10))
    assert out["macs"] == 8 * 10 * 10 * 3 * 9 + 800 * 5
    assert out["flops"] == 2 * out["macs"] and out["unit"] == MAC_UNIT
    assert out["params"] == 8 * 27 + 800 * 5


def test_latency_reports_context():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    lat = measure_latency(model, (1, 8, 8), batch_size=2, repeats=3, warmup=1, threads=1)
    assert lat["seconds"] > 0 and lat["threads"] == 1 and lat["batch_size"] == 2 and lat["repeats"] == 3


def test_roc_auc_counts_ordered_pairs_and_half_ties():
    y = torch.tensor([1, 1, 0, 0, 0], dtype=torch.bool)
    assert roc_auc(torch.tensor([0.9, 0.8, 0.1, 0.2, 0.3]), y) == 1.0
    assert roc_auc(torch.tensor([0.1, 0.2, 0.9, 0.8, 0.7]), y) == 0.0
    # pairs (pos, neg): 0.5 beats 0.3 and 0.4 and ties 0.5 (one half); 0.3 beats nothing, ties 0.3 (one half)
    s = torch.tensor([0.5, 0.3, 0.5, 0.3, 0.4])
    assert roc_auc(s, y) == pytest.approx((2 + 0.5 + 0 + 0.5) / 6)
    g = torch.Generator().manual_seed(0)
    r, lab = torch.rand(300, generator=g), torch.rand(300, generator=g) < 0.3
    brute = ((r[lab][:, None] > r[~lab][None]).double() + 0.5 * (r[lab][:, None] == r[~lab][None]).double()).mean()
    assert roc_auc(r, lab) == pytest.approx(float(brute))
    assert roc_auc(3 * r - 1, lab) == pytest.approx(roc_auc(r, lab))     # only the order counts


def test_roc_auc_rejects_one_sided_labels():
    with pytest.raises(ValueError, match="0 negative"):
        roc_auc(torch.tensor([0.1, 0.2]), torch.tensor([True, True]))
    with pytest.raises(ValueError, match="3 scores, 2 labels"):
        roc_auc(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([True, False]))
