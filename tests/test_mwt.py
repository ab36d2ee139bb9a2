"""MwT: gates, losses, modularization metrics, sub-task modules, policies, determinism."""
from __future__ import annotations

import math

import pytest
import torch

from modtools import mwt as W
from modtools import train as T
from modtools.errors import EmptyMaskError, InvalidClassError
from modtools.extract import extract, extraction_error
from modtools.masks import find_maskable_layers, random_masks

from conftest import tiny_model


def _cfg(**kw):
    base = dict(arch="resnet20", width=0.25, dataset="synthetic", epochs=2, batch_size=16, augment=False,
                finetune_epochs=1, threshold=0.5)
    base.update(kw)
    return W.MwTConfig(**base)


def test_gates_shapes_and_open_start():
    model = W.GatedModel(tiny_model("vgg16"))
    assert len(model.layers) == 12  # every conv but the first
    x = torch.rand(4, 3, 32, 32)
    model(x)
    for layer in model.layers:
        g = model.gates.last[layer.name]
        assert g.shape == (4, layer.out_channels) and (g >= 0).all() and (g < 1).all()
    gate = model.gates.nets[model.layers[0].name.replace(".", "__")]
    assert torch.equal(gate.fc2.bias, torch.ones_like(gate.fc2.bias)) and gate.fc1.bias is None
    opened = torch.cat([(model.gates.last[layer.name] > 0).float().flatten() for layer in model.layers]).mean()
    assert opened > 0.8
    assert W.gate_hidden_width(64) == 64 and W.gate_hidden_width(128) == 64 and W.gate_hidden_width(512) == 256


def test_gated_resnet_gates_downsample_and_keeps_stem():
    model = W.GatedModel(tiny_model("resnet20"))
    names = [layer.name for layer in model.layers]
    assert "conv1" not in names and any(n.endswith("downsample.0") for n in names) and len(names) == 20


def test_losses_by_hand():
    g1 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    g2 = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    coh, coup = W.cohesion_coupling_loss([g1, g2], y)
    r = 1 / math.sqrt(2)
    assert float(coh) == pytest.approx((0 + (1 - r)) / 2, abs=1e-6)
    assert float(coup) == pytest.approx((0 + (1 + r) / 2) / 2, abs=1e-6)
    coh, coup = W.cohesion_coupling_loss([g1], torch.tensor([0, 1, 2]))  # no same-class pair
    assert float(coh) == 0.0 and not torch.isnan(coup)
    zero = torch.zeros(3, 2)  # an all-zero gate row stays zero, no NaN
    coh, coup = W.cohesion_coupling_loss([zero], y)
    assert float(coh) == 1.0 and float(coup) == 0.0


def test_pair_sums_equal_the_pairwise_definition():
    """The O(B) class-sum form equals cosines averaged over every pair i < j (zero rows included)."""
    torch.manual_seed(0)
    gates = [torch.relu(torch.randn(40, c)) for c in (4, 8, 16)]
    gates[0][5] = 0.0
    y = torch.randint(0, 6, (40,))
    g = torch.nn.functional.normalize(W.stack_gates(gates), p=2, dim=2)
    sim = torch.bmm(g, g.transpose(1, 2))
    upper = torch.triu(torch.ones(40, 40, dtype=torch.bool), diagonal=1)
    same = y[:, None] == y[None, :]
    coh_ref = (1 - sim[:, same & upper].mean(dim=1)).mean()
    coup_ref = sim[:, ~same & upper].mean(dim=1).mean()
    coh, coup = W.cohesion_coupling_loss(gates, y)
    assert float(coh) == pytest.approx(float(coh_ref), abs=1e-5)
    assert float(coup) == pytest.approx(float(coup_ref), abs=1e-5)
    coh10, coup10 = W.pair_similarity_terms(W.stack_gates(gates), y, num_classes=10)  # unused classes change nothing
    assert float(coh10) == pytest.approx(float(coh), abs=1e-6) and float(coup10) == pytest.approx(float(coup), abs=1e-6)


def test_jaccard_gemm_matches_circular_shift_reference():
    torch.manual_seed(0)
    b = torch.rand(9, 40) > 0.5
    n = len(b)
    ref = []
    for s in range(1, n):
        other = b.roll(-s, 0)
        inter = (b & other).sum(1).float()
        union = (b | other).sum(1).float()
        ref.append((inter / union).mean())
    j = W.pairwise_jaccard(b)
    assert float((j.sum() - j.diagonal().sum()) / (n * (n - 1))) == pytest.approx(float(torch.stack(ref).mean()), abs=1e-6)


def _stats(on, labels, slices):
    labels = torch.as_tensor(labels)
    freq = torch.stack([on[labels == c].float().mean(0) for c in range(int(labels.max()) + 1)])
    return W.GateStats(on, labels, freq, slices)


def test_cohesion_coupling_krr_properties():
    on = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    stats = _stats(on, [0, 0, 1, 1], {"a": (0, 2), "b": (2, 4)})
    u, _ = W.module_masks(stats, 0.9, on_empty="top1")
    assert W.cohesion(stats, u) == 1.0            # identical vectors within each class
    disjoint = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert W.coupling(disjoint) == 0.0
    torch.manual_seed(1)
    rnd = _stats(torch.rand(60, 30) > 0.4, torch.arange(60) % 3, {"a": (0, 10), "b": (10, 30)})
    rates = [W.krr(W.module_masks(rnd, t, "top1")[0]) for t in (0.1, 0.3, 0.5, 0.7, 0.9)]
    assert all(a >= b for a, b in zip(rates, rates[1:])) and all(0 < r <= 1 for r in rates)


def test_empty_layer_policies():
    on = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 0], [1, 0, 1, 0]], dtype=torch.bool)
    stats = _stats(on, [0, 0, 0], {"a": (0, 2), "b": (2, 4)})
    with pytest.raises(EmptyMaskError, match="layer a keeps no kernel for class 0"):
        W.module_masks(stats, 0.9, "raise")
    u, dec = W.module_masks(stats, 0.9, "top1")
    assert u[0, :2].tolist() == [True, False] and dec == [{"class": 0, "layer": "a", "policy": "top1", "threshold": 0.9}]
    u, dec = W.module_masks(stats, 0.9, "lower")
    assert dec[0]["policy"] == "lower" and dec[0]["threshold"] == pytest.approx(0.65)
    assert u[0, :2].tolist() == [True, False]
    with pytest.raises(ValueError, match="on_empty"):
        W.module_masks(stats, 0.9, "silently")


@pytest.mark.parametrize("arch", ["vgg16", "resnet18", "rescnn"])
def test_extracted_subtask_module_equals_constant_gates(arch):
    gated = W.GatedModel(tiny_model(arch))
    backbone = gated.plain_backbone()
    masks = random_masks(gated.layers, 0.4, seed=3)
    first = gated.layers[2].name
    masks[first] = torch.zeros_like(masks[first])
    masks[first][0] = 1                                   # a layer that keeps a single kernel
    small, _ = extract(backbone, masks)
    assert extraction_error(backbone, masks, small, torch.rand(3, 3, 32, 32)) <= 1e-5


def test_short_run_is_deterministic_and_modules_work(tmp_path):
    cfg = _cfg()
    data = T.spec_data(cfg.spec(True))
    m1, r1 = W.train_mwt(cfg, cache=tmp_path / "a", data=data, device="cpu", progress=False)
    m2, _ = W.train_mwt(cfg, cache=tmp_path / "b", data=data, device="cpu", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    hist = r1["history"][-1]
    assert {"cohesion_loss", "coupling_loss", "kernel_rate"} <= set(hist)
    s1, s2 = W.collect_gates(m1, data.train), W.collect_gates(m2, data.train)
    assert torch.equal(s1.on, s2.on)
    u, decisions = W.module_masks(s1, cfg.threshold, cfg.on_empty)
    module, report = W.subtask_module(m1, s1, u, [0, 2], data, cfg, decisions, device="cpu")
    assert module(torch.rand(2, 1, 16, 16)).shape == (2, 2)
    assert 0 <= report["accuracy"] <= 1 and report["krr"] == pytest.approx(float(u[[0, 2]].any(0).float().mean()))
    card = module.card()
    assert card["approach"] == "mwt" and card["lineage"][1]["on_empty"] == cfg.on_empty
    with pytest.raises(InvalidClassError, match="out of range"):
        W.subtask_module(m1, s1, u, [0, 7], data, cfg)
    with pytest.raises(InvalidClassError, match="twice"):
        W.subtask_module(m1, s1, u, [1, 1], data, cfg)


def test_bypassable_layers_are_residual_branches_not_plain_paths():
    from modtools.masks import bypassable_layers

    res = W.GatedModel(tiny_model("resnet20")).plain_backbone()
    layers = find_maskable_layers(res)[1:]
    names = bypassable_layers(res, layers, (3, 32, 32))
    # in a ResNet every gated conv has a parallel path: the identity, or the other branch of a
    # downsampling block (its 1×1 shortcut conv and its conv1 → conv2 run side by side)
    assert names == [layer.name for layer in layers]
    plain = tiny_model("vgg16")
    assert bypassable_layers(plain, find_maskable_layers(plain), (3, 32, 32)) == []


def test_an_empty_residual_branch_is_bypassed_and_a_plain_one_is_not(tmp_path):
    # class 0 never opens layer "b"'s gates: on a residual branch it is bypassed, on a plain path not
    on = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    stats = _stats(on, [0, 1, 0], {"a": (0, 2), "b": (2, 4)})
    stats.bypassable = ["b"]
    u, dec = W.module_masks(stats, 0.9, "lower")
    assert dec == [{"class": 0, "layer": "b", "policy": "bypass", "threshold": 0.9}] and not u[0, 2:].any()
    stats.bypassable = []
    with pytest.raises(EmptyMaskError, match="plain path"):
        W.module_masks(stats, 0.9, "lower")
    u, dec = W.module_masks(stats, 0.9, "top1")
    assert dec[0]["policy"] == "top1" and u[0, 2:].sum() == 1


def test_training_figure_draws_a_continued_modular_model_after_the_standard_one():
    import matplotlib
    matplotlib.use("Agg")
    from modtools import mwt_plots

    row = {"train_loss": 1.0, "cohesion_loss": 0.1, "coupling_loss": 0.5, "val_accuracy": 0.8, "kernel_rate": 0.6}
    results = {"arch": "vgg16", "dataset": "fashion-mnist", "accuracy_modular": 0.8, "accuracy_standard": 0.8,
               "history_modular": [{"epoch": e, **row} for e in (1, 2)],
               "history_standard": [{"epoch": e, "train_loss": 1.0, "val_accuracy": 0.7} for e in (1, 2, 3)]}
    for init_from, first in (("scratch", 1), ("standard", 4)):
        fig = mwt_plots.training_figure({**results, "init_from": init_from})
        modular_line = fig.axes[2].get_lines()[0]          # the kernel-rate panel draws only the modular model
        assert list(modular_line.get_xdata()) == [first, first + 1]
        assert (len(fig.axes[1].get_lines()) == 3) == (init_from == "standard")   # the hand-over line
        matplotlib.pyplot.close(fig)
