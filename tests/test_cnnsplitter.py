"""CNNSplitter: encoding, evaluation equivalence, GA operators, fitness, determinism, resume, modules,
and patching weak models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from modtools import cnnsplitter as C
from modtools import data as D
from modtools import patch as P
from modtools.baseline import kernel_importance
from modtools.cnnsplitter_fitness import cooperative_fitness, pairwise_jaccard, task_sizes, threshold_for
from modtools.errors import CheckpointError, EmptyClassError, InvalidClassError, ModuleMismatchError, ParameterError
from modtools.layers import find_maskable_layers
from modtools.module import Module

from conftest import tiny_model

SMALL = dict(population=6, generations=2, parents_mating=4, keep_parents=2, keep_min=2, keep_max=20,
             confidence=0.0, sensitivity_grid=[0.5, 1.0], chunk=4)


def _importance_in_order(n: int, k: int) -> torch.Tensor:
    return torch.arange(k, 0, -1, dtype=torch.float64).repeat(n, 1)     # kernel 0 most important


def test_encoding_uses_array_split_group_sizes_and_decodes_groups_in_importance_order():
    cfg = C.CNNSplitterConfig()
    enc = C.build_encoding({"a": _importance_in_order(2, 23), "b": _importance_in_order(2, 300)}, [["a"], ["b"]], cfg)
    assert [s["groups"] for s in enc.segments] == [10, 100]
    assert enc.membership[0][0].sum(1).tolist() == [len(p) for p in np.array_split(np.arange(23), 10)]
    assert enc.genes == 110
    bits = torch.zeros(1, enc.genes, dtype=torch.bool)
    bits[0, 0] = bits[0, 3] = True                       # groups 0 and 3 of "a": ranks 0-2 and 9-10
    kept = C.decode(bits, 0, enc)
    assert torch.nonzero(kept[0][0]).flatten().tolist() == [0, 1, 2, 9, 10]
    assert kept[1][0].tolist() == [True] + [False] * 299  # an empty segment keeps its most important kernel
    imp = _importance_in_order(2, 23)
    imp[1] = imp[1].flip(0)                              # class 1 ranks the kernels the other way round
    enc2 = C.build_encoding({"a": imp}, [["a"]], cfg)
    one = torch.zeros(1, 10, dtype=torch.bool)
    one[0, 0] = True
    assert torch.nonzero(C.decode(one, 1, enc2)[0][0]).flatten().tolist() == [20, 21, 22]


def test_residual_stream_layers_share_one_segment_and_its_bits():
    model = tiny_model("resnet20", in_channels=1, num_classes=3)
    layers = find_maskable_layers(model, torch.zeros(1, 1, 16, 16))
    segments = C.coupled_segments(model, layers)
    assert sorted(n for s in segments for n in s) == sorted(layer.name for layer in layers)
    shared = [s for s in segments if len(s) > 1]
    assert shared, "the layers adding into a residual stream form one segment"
    imp = {layer.name: torch.rand(3, layer.out_channels, dtype=torch.float64) for layer in layers}
    enc = C.build_encoding(imp, segments, C.CNNSplitterConfig())
    bits = torch.rand(4, enc.genes, generator=torch.Generator().manual_seed(0)) > 0.5
    masks = C.layer_masks(C.decode(bits, 1, enc), enc)
    for seg in shared:
        for name in seg[1:]:
            assert torch.equal(masks[name], masks[seg[0]])


@pytest.mark.parametrize("arch", ["simcnn", "resnet20"])
def test_masked_candidates_equal_rebuilt_modules(arch, tiny_data):
    train, _ = tiny_data
    model = tiny_model(arch, in_channels=1, num_classes=4)
    cfg = C.CNNSplitterConfig(**SMALL)
    layers = find_maskable_layers(model, torch.zeros(1, 1, 16, 16))
    enc = C.build_encoding(kernel_importance(model, train, layers, device="cpu"), C.coupled_segments(model, layers), cfg)
    bits = torch.rand(3, enc.genes, generator=torch.Generator().manual_seed(1)) > 0.4
    masks = C.layer_masks(C.decode(bits, 2, enc), enc)
    ev = C.Evaluator(model, layers, train.take(range(40)), cfg, "cpu")
    torch.testing.assert_close(ev.masked(2, masks), ev.rebuilt(2, masks), atol=1e-5, rtol=1e-5)


def test_rebuilt_candidates_of_a_grouped_model_come_from_extract(tiny_data):
    """The fast rebuild does not slice grouped convs; the evaluator then extracts each candidate."""
    from test_layers import GroupedCNN

    train, _ = tiny_data
    model = GroupedCNN(classes=4).eval()
    layers = find_maskable_layers(model, torch.zeros(1, 1, 16, 16))
    g = torch.Generator().manual_seed(2)
    masks = {layer.name: (torch.rand(3, layer.out_channels, generator=g) > 0.4).float() for layer in layers}
    ev = C.Evaluator(model, layers, train.take(range(20)), C.CNNSplitterConfig(**SMALL), "cpu")
    torch.testing.assert_close(ev.masked(1, masks), ev.rebuilt(1, masks), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["simcnn", "resnet20", "incecnn"])
def test_sensitivity_with_a_shared_prefix_equals_masking_every_copy(arch, tiny_data):
    """Pruning one segment, the network before it runs once; the curves equal masking all N copies
    from the input (plain, residual and inception paths: a skip around the segment falls back)."""
    train, _ = tiny_data
    model = tiny_model(arch, in_channels=1, num_classes=4).eval()
    cfg = C.CNNSplitterConfig(**SMALL)
    layers = find_maskable_layers(model, torch.zeros(1, 1, 16, 16))
    enc = C.build_encoding(kernel_importance(model, train, layers, device="cpu"), C.coupled_segments(model, layers), cfg)
    ev = C.Evaluator(model, layers, train.take(range(40)), cfg, "cpu")
    n = 4
    for seg, order in zip(enc.segments, enc.order):
        m = torch.zeros(n, seg["kernels"])
        m.scatter_(1, order[:, :max(1, seg["kernels"] // 2)], 1.0)
        masks = {name: m for name in seg["layers"]}
        full = {layer.name: masks.get(layer.name, torch.ones(n, layer.out_channels)) for layer in layers}
        first = min(seg["layers"], key=ev.execution_order().__getitem__)
        torch.testing.assert_close(C._own(ev, masks, n, expand_at=first), C._own(ev, full, n), atol=1e-5, rtol=1e-5)
    assert list(ev.execution_order()) [:1] == [layers[0].name]
    if arch == "simcnn":
        assert not ev.unshared, "a plain network shares the prefix at every segment"
    sens = C.layer_sensitivity(model, layers, enc, ev, [0.5, 1.0])
    assert all(curve[-1] == pytest.approx(sens["unpruned"]) for curve in sens["curves"].values())


def test_evaluator_never_evaluates_a_chromosome_twice(tiny_data):
    train, _ = tiny_data
    model = tiny_model("simcnn", in_channels=1, num_classes=4)
    cfg = C.CNNSplitterConfig(**SMALL, eval_mode="masked")
    layers = find_maskable_layers(model, torch.zeros(1, 1, 16, 16))
    enc = C.build_encoding(kernel_importance(model, train, layers, device="cpu"), C.coupled_segments(model, layers), cfg)
    bits = torch.rand(2, enc.genes, generator=torch.Generator().manual_seed(2)) > 0.5
    bits = torch.cat([bits, bits[:1]])                   # a duplicate
    ev = C.Evaluator(model, layers, train.take(range(20)), cfg, "cpu")
    first = ev.logits(0, bits, C.layer_masks(C.decode(bits, 0, enc), enc))
    assert ev.evaluated == 2 and torch.equal(first[0], first[2])
    ev.logits(0, bits, C.layer_masks(C.decode(bits, 0, enc), enc))
    assert ev.evaluated == 2 and ev.hits == 4


def test_stratified_slice_takes_every_class_in_proportion():
    labels = torch.tensor([0] * 8 + [1] * 4 + [2] * 2)
    first, rest = C.stratified_slice(labels, 0.25)
    assert torch.bincount(labels[first]).tolist() == [2, 1, 1]
    assert sorted(torch.cat([first, rest]).tolist()) == list(range(14))


def test_a_candidate_completed_after_the_first_round_equals_one_scored_at_once(tiny_data):
    train, _ = tiny_data
    model = tiny_model("simcnn", in_channels=1, num_classes=4)
    layers = find_maskable_layers(model, torch.zeros(1, 1, 16, 16))
    enc_cfg = C.CNNSplitterConfig(**SMALL)
    enc = C.build_encoding(kernel_importance(model, train, layers, device="cpu"), C.coupled_segments(model, layers),
                           enc_cfg)
    bits = torch.rand(3, enc.genes, generator=torch.Generator().manual_seed(3)) > 0.5
    masks = C.layer_masks(C.decode(bits, 1, enc), enc)
    val = train.take(range(40))
    halved = C.Evaluator(model, layers, val, C.CNNSplitterConfig(**SMALL, eval_mode="masked", halving=0.25), "cpu")
    whole = C.Evaluator(model, layers, val, C.CNNSplitterConfig(**SMALL, eval_mode="masked"), "cpu")
    first = halved.slice_logits(1, bits[:2], {k: v[:2] for k, v in masks.items()})
    assert first.shape == (2, len(halved.slice_idx)) and halved.evaluated_slice == 2 and halved.evaluated == 0
    ref = whole.logits(1, bits, masks)
    torch.testing.assert_close(first, ref[:2, halved.slice_idx], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(halved.logits(1, bits, masks), ref, atol=1e-5, rtol=1e-5)
    assert halved.evaluated == 3 and halved.evaluated_slice == 0


def test_successive_halving_scores_fewer_candidates_fully_and_keeps_parents_when_all_go_on(tiny_data):
    train, _ = tiny_data
    model = tiny_model("simcnn", in_channels=1, num_classes=4)
    base = dict(SMALL, population=8, parents_mating=4, keep_parents=2, eval_mode="masked")
    val = train.take(range(60))
    plain = C.search(model, train, val, C.CNNSplitterConfig(**base), device="cpu")
    halved = C.search(model, train, val, C.CNNSplitterConfig(**base, halving=0.3, halving_keep=0.5), device="cpu")
    again = C.search(model, train, val, C.CNNSplitterConfig(**base, halving=0.3, halving_keep=0.5), device="cpu")
    def timeless(history):
        return [{k: v for k, v in h.items() if not k.startswith("seconds")} for h in history]

    assert timeless(halved.history) == timeless(again.history)   # seeded and deterministic
    assert all(torch.equal(x[k], y[k]) for x, y in zip(halved.masks, again.masks) for k in x)
    assert halved.evaluation["evaluated"] < plain.evaluation["evaluated"]
    assert all("evaluated_slice_only" in h for h in halved.history)
    # everyone goes on to the full images: the audited full evaluation picks the same parents
    audited = C.search(model, train, val, C.CNNSplitterConfig(**base, halving=0.3, halving_keep=1.0, halving_audit=True),
                       device="cpu")
    assert [h["halving_parents_changed"] for h in audited.history] == [0.0] * len(audited.history)
    with pytest.raises(ValueError, match="halving=1.5"):
        C.CNNSplitterConfig(halving=1.5)
    with pytest.raises(ValueError, match="halving_keep=0"):
        C.CNNSplitterConfig(halving_keep=0)


def test_ga_operators_keep_size_and_elites_and_mutate_the_stated_number_of_genes():
    cfg = C.CNNSplitterConfig(population=10, parents_mating=4, keep_parents=3, mutation_percent=20)
    g = torch.Generator().manual_seed(0)
    pop = torch.rand(10, 30, generator=g) > 0.5
    fitness = torch.arange(10, dtype=torch.float32)
    new = C.next_generation(pop, fitness, cfg, g)
    assert new.shape == pop.shape
    assert torch.equal(new[:3], pop[[9, 8, 7]])          # the fittest, fittest first
    zeros = torch.zeros(10, 30, dtype=torch.bool)
    mutated = C.next_generation(zeros, fitness, cfg, g)[3:]
    assert int(mutated.sum(1).max()) <= 6                # 20 % of 30 genes are redrawn, so at most 6 ones
    assert int(mutated.sum()) > 0
    plain = C.next_generation(pop, fitness, C.CNNSplitterConfig(population=10, parents_mating=4, keep_parents=3,
                                                                mutation_percent=0), g)
    parents = pop[[9, 8, 7, 6]]
    for i, child in enumerate(plain[3:]):                # a single-point crossover of consecutive parents
        a, b = parents[i % 4], parents[(i + 1) % 4]
        assert any(torch.equal(child, torch.cat([a[:p], b[p:]])) for p in range(31))


def test_initial_population_follows_the_ratios():
    enc = C.build_encoding({"a": _importance_in_order(2, 40), "b": _importance_in_order(2, 40)}, [["a"], ["b"]],
                           C.CNNSplitterConfig())
    pop = C.initial_population(enc, [[0.3], [1.0]], C.CNNSplitterConfig(population=8, parents_mating=4, keep_parents=2), torch.Generator().manual_seed(0))
    assert pop.shape == (8, 20)
    assert pop[:, :10].sum(1).tolist() == [3] * 8 and bool(pop[:, 10:].all())


def test_fitness_of_a_hand_made_case():
    labels = torch.tensor([0, 0, 1, 1])
    logits = [torch.tensor([[5., 5, 0, 0], [0, 0, 0, 0]]), torch.tensor([[0., 0, 5, 5], [9, 9, 9, 9]])]
    bits = [torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]).bool(), torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]).bool()]
    # composes (i, j): accuracy 1, .5, .5, .5; diff = 1 − Jaccard: 1, .5, .5, 0; fitness .9 acc + .1 diff
    fit, best = cooperative_fitness(logits, labels, bits, 0.9, 0.9, {2: 0.95}, torch.Generator().manual_seed(0),
                                    keep_min=4, keep_max=10)
    torch.testing.assert_close(fit, torch.tensor([[1.0, 0.5], [1.0, 0.5]]))
    assert best == {"members": {0: 0, 1: 0}, "accuracy": 1.0, "diff": 1.0, "fitness": pytest.approx(1.0)}
    fit1, _ = cooperative_fitness(logits, labels, bits, 0.9, 0.9, {2: 0.95}, torch.Generator().manual_seed(0),
                                  keep_min=1, keep_max=10)    # only the compose above the threshold is kept
    torch.testing.assert_close(fit1, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert task_sizes(10) == [2, 4, 8, 10] and task_sizes(5) == [2, 4, 5]
    assert threshold_for(10, {2: .95, 4: .95, 8: .85, 10: .8}) == .8 and threshold_for(5, {2: .95, 4: .9}) == .9
    torch.testing.assert_close(pairwise_jaccard(bits[0], bits[1]), torch.tensor([[0.0, 0.5], [0.5, 1.0]]))


def test_short_search_is_seeded_deterministic_and_resumes(tiny_data, tmp_path):
    train, test = tiny_data
    model = tiny_model("simcnn", in_channels=1, num_classes=4)
    cfg = C.CNNSplitterConfig(**{**SMALL, "generations": 3})
    a = C.search(model, train, test, cfg, device="cpu")
    b = C.search(model, train, test, cfg, device="cpu")
    assert [h["ensemble_accuracy"] for h in a.history] == [h["ensemble_accuracy"] for h in b.history]
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a.masks, b.masks) for k in x)
    assert len(a.history) == 4 and a.evaluation["chosen"] in ("masked", "rebuild")
    assert set(a.ratios) == {s[0] for s in C.coupled_segments(model, find_maskable_layers(model))}
    first = C.search(model, train, test, C.CNNSplitterConfig(**{**SMALL, "generations": 1}), device="cpu",
                     checkpoint=tmp_path / "ck")
    assert len(first.history) == 2
    resumed = C.search(model, train, test, cfg, device="cpu", checkpoint=tmp_path / "ck")
    assert [h["ensemble_accuracy"] for h in resumed.history] == [h["ensemble_accuracy"] for h in a.history]
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a.masks, resumed.masks) for k in x)


def test_patience_stops_early(tiny_data):
    train, test = tiny_data
    model = tiny_model("simcnn", in_channels=1, num_classes=4)
    res = C.search(model, train, test, C.CNNSplitterConfig(**{**SMALL, "generations": 30, "patience": 1}), device="cpu")
    assert len(res.history) < 31 and len(res.history) - 1 - res.best_generation == 1


def test_hand_given_ratios_skip_the_sensitivity_and_unknown_segments_are_named(tiny_data):
    train, test = tiny_data
    model = tiny_model("simcnn", in_channels=1, num_classes=4)
    name = find_maskable_layers(model)[0].name
    res = C.search(model, train, test, C.CNNSplitterConfig(**{**SMALL, "generations": 0, "ratios": {name: [0.5]}}),
                   device="cpu")
    assert res.sensitivity == {} and res.ratios[name] == [0.5]
    with pytest.raises(ValueError, match="nope"):
        C.search(model, train, test, C.CNNSplitterConfig(**{**SMALL, "ratios": {"nope": [0.5]}}), device="cpu")


def test_ratios_from_sensitivity_rule():
    sens = {"grid": [0.2, 0.4, 0.6, 1.0], "unpruned": 0.9, "curves": {"a": [0.5, 0.895, 0.9, 0.9], "b": [0, 0, 0, 0.9]}}
    ratios, r_min = C.ratios_from_sensitivity(sens, 0.01)
    assert r_min == {"a": 0.4, "b": 1.0} and ratios == {"a": [0.4, 0.5, 0.6], "b": [1.0]}
    lower, _ = C.ratios_from_sensitivity(sens, 0.01, offsets=(-0.4, -0.1, 0.0))
    assert lower == {"a": [0.1, 0.3, 0.4], "b": [0.6, 0.9, 1.0]}      # clipped to 0.1 at the bottom


def test_modules_equal_the_masked_model_and_are_saved(tiny_data, tmp_path):
    train, test = tiny_data
    model = tiny_model("simcnn", in_channels=1, num_classes=4)
    res = C.search(model, train, test, C.CNNSplitterConfig(**SMALL), device="cpu")
    own = C.own_class_logits(model, res, test, device="cpu")
    report = C.evaluate_modules(model, res, test, device="cpu")
    assert 0 < report["krr_mean"] <= 1 and len(report["krr_per_module"]) == 4
    module = C.to_module(model, res, 2, train, metrics={"krr": report["krr_per_module"][2]})
    torch.testing.assert_close(module(test.float_images()).squeeze(1), own[2], atol=1e-5, rtol=1e-5)
    loaded = Module.load(module.save(tmp_path / "m"), model=model)
    assert loaded.approach == "cnnsplitter" and loaded.task["classes"] == [2]
    with pytest.raises(InvalidClassError, match="9"):
        C.to_module(model, res, 9, train)


def test_bad_inputs_raise_typed_errors(tiny_data):
    train, test = tiny_data
    model = tiny_model("simcnn", in_channels=1, num_classes=4)
    with pytest.raises(EmptyClassError, match=r"class \d.*0\.999"):
        C.search(model, train, test, C.CNNSplitterConfig(**{**SMALL, "confidence": 0.999}), device="cpu")
    res = C.search(model, train, test, C.CNNSplitterConfig(**{**SMALL, "confidence": 0.999, "generations": 0,
                                                             "confidence_fallback": "all"}), device="cpu")
    assert len(res.masks) == 4
    for bad in (dict(keep_parents=6), dict(mutation_percent=120), dict(eval_mode="gpu"), dict(alpha=2.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            C.CNNSplitterConfig(**{**SMALL, **bad})


# --------------------------------------------------------------------------------------------
# Patching
# --------------------------------------------------------------------------------------------

class _Bright(nn.Module):
    """Scores class ``c`` by the image's mean brightness (a perfect detector on the data below)."""

    def __init__(self, classes):
        super().__init__()
        self.classes = classes

    def forward(self, x):
        return x.mean((1, 2, 3))[:, None].repeat(1, len(self.classes)) * 10


class _Perfect:
    """A module stand-in: the patching code needs only a task, a name, an approach and a call."""

    def __init__(self, target):
        self.task, self.name, self.approach, self.net = {"classes": [target]}, "perfect", "test", _Bright([target])

    def to(self, device):
        return self

    def __call__(self, x):
        return self.net(x)


def _images(brightness):
    return torch.tensor(brightness, dtype=torch.uint8)[:, None, None, None].expand(-1, 1, 4, 4).contiguous()


def test_patching_with_a_perfect_module_lifts_the_target_recall_to_one():
    # source classes 0..3; the weak task is [1, 3] with the TC 3 last; the weak model always says class 1
    cal = D.ImageDataset(_images([150, 200, 10, 20]), torch.tensor([3, 3, 1, 0]), ["a", "b", "c", "d"], "toy")
    test = D.ImageDataset(_images([220, 240, 30, 40, 50]), torch.tensor([1, 1, 0, 0, 0]), ["b", "d"], "toy")
    weak = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        weak[1].weight.zero_()
        weak[1].bias.copy_(torch.tensor([1.0, 0.0]))
    r = P.patch(weak, [1, 3], _Perfect(3), cal, test, target_class=3, device="cpu")
    assert r["recall_before"] == 0.0 and r["f1_before"] == 0.0 and r["precision_before"] == 0.0
    assert r["recall_after"] == 1.0 and r["precision_after"] == 1.0 and r["f1_after"] == 1.0
    assert r["other_accuracy_before"] == 1.0 and r["other_accuracy_after"] == 1.0
    assert r["calibration"]["kind"] == "minmax" and r["calibration"]["samples"] == 2
    assert r["calibration"]["low"] == pytest.approx(150 / 255 * 10)
    assert r["calibration"]["high"] == pytest.approx(200 / 255 * 10)


def test_platt_fit_recovers_a_known_logistic_and_maps_a_score_shift_back():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(20000, generator=g) * 4 - 2
    y = torch.rand(20000, generator=g) < torch.sigmoid(2.0 * s - 1.0)
    slope, intercept = P.fit_platt(s, y)
    assert slope == pytest.approx(2.0, abs=0.15) and intercept == pytest.approx(-1.0, abs=0.1)
    slope5, intercept5 = P.fit_platt(s + 5.0, y)             # the same scores shifted by 5
    assert slope5 == pytest.approx(slope, rel=1e-6) and intercept5 == pytest.approx(intercept - 5.0 * slope, abs=1e-5)


def test_platt_calibration_keeps_other_classes_that_min_max_lets_in():
    # TC 3 has one hard sample (brightness 40) that stretches the min-max range down; the weak task
    # [0, 1, 3] has an unsure weak model (equal logits: 1/3 each), and the other classes score 60-120
    tc, negatives = [40, 150, 200, 180, 170, 160], [60, 70, 80, 90, 95, 100, 105, 110, 115, 120, 100, 95]
    cal = D.ImageDataset(_images(tc + negatives), torch.tensor([3] * 6 + [0, 1] * 6), ["a", "b", "c", "d"], "toy")
    test = D.ImageDataset(_images([100, 102, 98, 180, 190]), torch.tensor([0, 0, 0, 2, 2]), ["a", "b", "d"], "toy")
    weak = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        weak[1].weight.zero_()
        weak[1].bias.zero_()
    minmax = P.patch(weak, [0, 1, 3], _Perfect(3), cal, test, target_class=3, device="cpu")
    platt = P.patch(weak, [0, 1, 3], _Perfect(3), cal, test, target_class=3, device="cpu", calibration="platt")
    assert minmax["other_accuracy_before"] == 1.0 and minmax["other_accuracy_after"] < 0.5   # min-max lets them in
    assert platt["other_accuracy_after"] == 1.0 and platt["recall_after"] == 1.0
    assert platt["calibration"]["kind"] == "platt" and platt["calibration"]["negatives"] == 12
    with pytest.raises(ValueError, match="calibration='sigmoid'"):
        P.patch(weak, [0, 1, 3], _Perfect(3), cal, test, target_class=3, device="cpu", calibration="sigmoid")
    with pytest.raises(ValueError, match="calibration='sigmoid'.*minmax"):
        P.calibrate(_Perfect(3), cal, 3, device="cpu", method="sigmoid")
    assert P.check_calibration("percentile") == "percentile"


def test_percentile_calibration_is_not_stretched_by_one_hard_target_sample():
    # the same data: one hard TC sample (40) sets the min-max low end; the 10th percentile ignores it
    tc, negatives = [40, 150, 200, 180, 170, 160], [60, 70, 80, 90, 95, 100, 105, 110, 115, 120, 100, 95]
    cal = D.ImageDataset(_images(tc + negatives), torch.tensor([3] * 6 + [0, 1] * 6), ["a", "b", "c", "d"], "toy")
    c = P.calibrate(_Perfect(3), cal, 3, device="cpu", method="percentile")
    scores = torch.tensor(tc, dtype=torch.float64) / 255 * 10
    assert c.kind == "percentile" and c.samples == 6
    assert c.low == pytest.approx(float(torch.quantile(scores, 0.1))) and c.low > 40 / 255 * 10 + 1.0
    assert c.high == pytest.approx(float(torch.quantile(scores, 0.9))) and c.high < 200 / 255 * 10
    assert float(c.normalise(torch.tensor([c.low, c.high])).sub(torch.tensor([0.0, 1.0])).abs().max()) < 1e-6
    test = D.ImageDataset(_images([100, 102, 98, 180, 190]), torch.tensor([0, 0, 0, 2, 2]), ["a", "b", "d"], "toy")
    weak = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        weak[1].weight.zero_()
        weak[1].bias.zero_()
    r = P.patch(weak, [0, 1, 3], _Perfect(3), cal, test, target_class=3, device="cpu", calibration="percentile")
    assert r["other_accuracy_after"] == 1.0 and r["recall_after"] == 1.0 and r["calibration"]["kind"] == "percentile"
    wide = P.calibrate(_Perfect(3), cal, 3, device="cpu", method="percentile", percentiles=(0.0, 1.0))
    assert (wide.low, wide.high) == pytest.approx((float(scores.min()), float(scores.max())))   # 0 and 1: min-max
    fences = P.calibrate(_Perfect(3), cal, 3, device="cpu", method="outlier")
    assert fences.kind == "outlier" and fences.low > float(scores.min())
    assert fences.high == pytest.approx(float(scores.max()))
    for bad in [(0.9, 0.1), (0.1,), (-0.1, 0.5), "low"]:
        with pytest.raises(ValueError, match="percentiles="):
            P.patch(weak, [0, 1, 3], _Perfect(3), cal, test, target_class=3, device="cpu", calibration="percentile",
                    percentiles=bad)


def test_patching_rejects_mismatched_classes():
    cal = D.ImageDataset(_images([150, 10]), torch.tensor([3, 1]), ["a", "b", "c", "d"], "toy")
    test = D.ImageDataset(_images([220, 30]), torch.tensor([1, 0]), ["b", "d"], "toy")
    weak = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with pytest.raises(ModuleMismatchError, match=r"target class 2 .*\[1, 3\]"):
        P.patch(weak, [1, 3], _Perfect(2), cal, test, target_class=2, device="cpu")
    with pytest.raises(ModuleMismatchError, match="3 outputs"):
        P.patch(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), [1, 3], _Perfect(3), cal, test, 3, device="cpu")
    with pytest.raises(InvalidClassError, match="target class 3 is not a class of module"):
        P.patch(weak, [1, 3], _Perfect(1), cal, test, target_class=3, device="cpu")
    with pytest.raises(InvalidClassError, match="out of range"):
        P.calibrate(_Perfect(7), cal, 7, device="cpu")
    with pytest.raises(EmptyClassError, match="target class 0"):
        P.calibrate(_Perfect(0), cal, 0, device="cpu")


def test_class_metrics_and_degenerate_calibration():
    m = P.class_metrics(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 1, 0]), 1)
    assert (m["precision"], m["recall"], m["f1"]) == (0.5, 0.5, 0.5)
    assert P.class_metrics(torch.tensor([0, 0]), torch.tensor([0, 0]), 1)["f1"] == 0.0   # no division by zero
    torch.testing.assert_close(P.Calibration(2.0, 2.0, 1).normalise(torch.tensor([2.0, 1.0])), torch.tensor([1.0, 0.0]))


def test_weak_specs_describe_three_kinds():
    from modtools.train import ModelSpec

    specs = P.weak_specs(ModelSpec(arch="simcnn", width=0.25), [1, 3, 5], per_class=50)
    assert set(specs) == set(P.WEAK_KINDS)
    assert specs["simple"].width < 0.25 and specs["overfit"].fit.epochs > specs["underfit"].fit.epochs
    assert specs["overfit"].fit.select_best is False and specs["overfit"].fit.augment is False
    assert all(s.classes == [1, 3, 5] for s in specs.values())
    assert len({s.key() for s in specs.values()}) == 3
    assert specs["overfit"].arch == specs["underfit"].arch == "simcnn"
    other = P.weak_specs(ModelSpec(arch="rescnn", width=0.25), [1, 3, 5], per_class=50, poor_arch="simcnn")
    assert other["overfit"].arch == other["underfit"].arch == "simcnn" and other["overfit"].width == 0.25
    assert other["overfit"].key() == specs["overfit"].key()       # the same weak model as a SimCNN strong model's
    for bad in (0, 40, 41):                                         # an underfit checkpoint after the overfit one
        with pytest.raises(ValueError, match="underfit_epochs"):
            P.weak_specs(ModelSpec(arch="simcnn", width=0.25), [1, 3, 5], overfit_epochs=40, underfit_epochs=bad)


def test_a_finished_checkpoint_is_reused_and_a_changed_config_is_refused(tiny_data, tmp_path):
    from modtools.errors import CheckpointError

    train, test = tiny_data
    model = tiny_model("simcnn", in_channels=1, num_classes=4)
    cfg = C.CNNSplitterConfig(**SMALL)
    a = C.search(model, train, test, cfg, device="cpu", checkpoint=tmp_path / "ck")
    again = C.search(model, train, test, cfg, device="cpu", checkpoint=tmp_path / "ck")   # nothing left to run
    assert again.history == a.history and again.sensitivity == a.sensitivity
    assert again.evaluation == a.evaluation                      # counts and the measured choice carry over
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a.masks, again.masks) for k in x)
    with pytest.raises(CheckpointError, match="alpha"):
        C.search(model, train, test, C.CNNSplitterConfig(**{**SMALL, "alpha": 0.5}), device="cpu",
                 checkpoint=tmp_path / "ck")
    # fewer generations than the checkpoint holds: a search of its own, the checkpoint untouched
    fewer = C.CNNSplitterConfig(**{**SMALL, "generations": SMALL["generations"] - 1})
    saved = (tmp_path / "ck" / "state.json").read_bytes()
    with pytest.warns(UserWarning, match=f"has run {SMALL['generations']} generations, more than generations=1"):
        short = C.search(model, train, test, fewer, device="cpu", checkpoint=tmp_path / "ck")
    alone = C.search(model, train, test, fewer, device="cpu")
    assert len(short.history) == fewer.generations + 1 == len(alone.history)
    assert [h["ensemble_fitness"] for h in short.history] == [h["ensemble_fitness"] for h in alone.history]
    assert (tmp_path / "ck" / "state.json").read_bytes() == saved


def test_a_checkpoint_saved_before_the_precision_setting_resumes_as_fp32(tiny_data, tmp_path):
    from modtools.errors import CheckpointError
    from modtools.io import atomic_write_json, read_json

    train, test = tiny_data
    model = tiny_model("simcnn", in_channels=1, num_classes=4)
    cfg = C.CNNSplitterConfig(**SMALL)
    a = C.search(model, train, test, cfg, device="cpu", checkpoint=tmp_path / "ck")
    state = read_json(tmp_path / "ck" / "state.json")
    state["config"].pop("precision")                             # as older code wrote it
    atomic_write_json(tmp_path / "ck" / "state.json", state)
    again = C.search(model, train, test, cfg, device="cpu", checkpoint=tmp_path / "ck")
    assert again.history == a.history
    with pytest.raises(CheckpointError, match="precision='fp32', this call has precision='bf16'"):
        C.search(model, train, test, C.CNNSplitterConfig(**{**SMALL, "precision": "bf16"}), device="cpu",
                 checkpoint=tmp_path / "ck")


def test_a_selection_subset_picks_the_best_generation_by_its_own_accuracy(tiny_data):
    train, test = tiny_data
    model = tiny_model("simcnn", in_channels=1, num_classes=4)
    search_val, select = D.disjoint_per_class(test, 6, None, seed=0)
    cfg = C.CNNSplitterConfig(**{**SMALL, "generations": 3})
    plain = C.search(model, train, search_val, cfg, device="cpu")
    held = C.search(model, train, search_val, cfg, device="cpu", select=select)
    # the same search (selection only reads), but each generation's ensemble is also scored on ``select``
    assert [h["ensemble_accuracy"] for h in held.history] == [h["ensemble_accuracy"] for h in plain.history]
    assert "selection_accuracy" not in plain.history[0]
    for h in held.history:
        assert h["ensemble_fitness"] == pytest.approx(cfg.alpha * h["selection_accuracy"] + (1 - cfg.alpha) * h["ensemble_diff"])
    best = max(range(len(held.history)), key=lambda g: (held.history[g]["ensemble_fitness"], -g))
    assert held.best_generation == best
    # the chosen modules' accuracy on ``select`` is what the history says of their generation
    own = C.own_class_logits(model, held, select, device="cpu")
    assert C.composed_accuracy(own, select.labels) == pytest.approx(held.history[best]["selection_accuracy"])
    assert held.evaluation["evaluated"] == plain.evaluation["evaluated"]
    with pytest.raises(ParameterError, match="select must hold images of the model's 4 classes, got 0 images"):
        C.search(model, train, search_val, cfg, device="cpu", select=select.take(torch.zeros(0, dtype=torch.long)))


def test_a_checkpoint_remembers_what_picked_its_best_generation(tiny_data, tmp_path):
    train, test = tiny_data
    model = tiny_model("simcnn", in_channels=1, num_classes=4)
    search_val, select = D.disjoint_per_class(test, 6, None, seed=0)
    one, three = (C.CNNSplitterConfig(**{**SMALL, "generations": g}) for g in (1, 3))
    C.search(model, train, search_val, one, device="cpu", checkpoint=tmp_path / "ck", select=select)
    resumed = C.search(model, train, search_val, three, device="cpu", checkpoint=tmp_path / "ck", select=select)
    alone = C.search(model, train, search_val, three, device="cpu", select=select)
    assert [h["selection_accuracy"] for h in resumed.history] == [h["selection_accuracy"] for h in alone.history]
    assert resumed.best_generation == alone.best_generation
    with pytest.raises(CheckpointError, match="picked its best generation on other held-out images"):
        C.search(model, train, search_val, three, device="cpu", checkpoint=tmp_path / "ck", select=select.take(range(4)))
    with pytest.raises(CheckpointError, match="this call on its search images"):
        C.search(model, train, search_val, three, device="cpu", checkpoint=tmp_path / "ck")


@pytest.mark.parametrize("search, select", [(None, 10), (20, 0), (20, -5)])
def test_prepare_search_refuses_a_selection_subset_it_cannot_draw_before_training(search, select, tmp_path):
    params = {"seed": 0, "arch": "simcnn", "width": 0.125, "dataset": "synthetic", "per_class": None,
              "test_per_class": None, "epochs": 1, "lr": 0.05, "augment": False,
              "search_val_per_class": search, "select_val_per_class": select}
    with pytest.raises(ParameterError, match=f"select_val_per_class={select!r} needs a positive value"):
        C.prepare_search(params, tmp_path, device="cpu")
    assert not any(tmp_path.iterdir())          # nothing trained or written
