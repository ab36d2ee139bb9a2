"""GradSplitter: schedule, batched heads, equivalence of extracted modules, selection, determinism."""
from __future__ import annotations

import pytest
import torch

from modtools import data as D
from modtools import gradsplitter as G
from modtools.errors import InvalidClassError
from modtools.heads import DetectorHead
from modtools.masks import find_maskable_layers, random_masks

from conftest import ALL_ARCHS, tiny_model


def test_phase_sequence_any_length():
    cfg = G.GradSplitterConfig()
    seq = G.phase_sequence(cfg)
    assert len(seq) == 145 and seq[:5] == ["head"] * 5 and seq.count("mask") == 100
    short = G.phase_sequence(G.GradSplitterConfig(first_head_epochs=2, cycle_epochs=10))  # not a multiple of 7
    assert short == ["head"] * 2 + ["mask"] * 5 + ["head"] * 2 + ["mask"] * 3
    assert G.phase_sequence(G.GradSplitterConfig(first_head_epochs=1, cycle_epochs=0)) == ["head"]
    with pytest.raises(ValueError, match="init"):
        G.GradSplitterConfig(init="zeros-ish")


def test_batched_heads_match_detector_heads():
    heads = G.ModuleHeads(3, 5, 4)
    logits = torch.randn(3, 7, 5)
    scores = heads(logits)
    assert scores.shape == (7, 3)
    for i in range(3):
        det = DetectorHead(5, 4)
        det.load_state_dict(heads.head_state(i))
        torch.testing.assert_close(det(logits[i]).squeeze(1), scores[:, i])


def _random_result(model, n, seed=0):
    layers = find_maskable_layers(model)
    masks = {layer.name: torch.stack([random_masks(layers, 0.5, seed=seed + i)[layer.name] for i in range(n)]).bool()
             for layer in layers}
    torch.manual_seed(seed)
    heads = G.ModuleHeads(n, n, 10).state_dict()
    return G.SplitResult(masks, heads, [], 1, 0.0, {}, [layer.name for layer in layers])


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_extracted_module_scores_equal_batched_masked_forward(arch):
    model = tiny_model(arch, num_classes=5)
    result = _random_result(model, 5)
    ds = D.synthetic(5, 2, 32, 3, seed=0)
    scores = G.module_scores(model, result, ds, device="cpu")
    x = ds.float_images()
    for c in (0, 3):
        module = G.to_module(model, result, c, ds)
        torch.testing.assert_close(module(x).squeeze(1), scores[:, c], atol=1e-5, rtol=1e-4)


def test_selection_rule():
    hist = [{"epoch": 1, "val_accuracy": 0.90, "krr": 1.0}, {"epoch": 2, "val_accuracy": 0.895, "krr": 0.4},
            {"epoch": 3, "val_accuracy": 0.85, "krr": 0.2}, {"epoch": 4, "val_accuracy": 0.893, "krr": 0.4}]
    assert G.select_epoch(hist, 0.90, 0.01) == 2           # fewest kernels within 1 point; ties → more accurate
    assert G.select_epoch(hist, 0.99, 0.01) == 1           # none within tolerance → most accurate


def test_short_search_is_seeded_and_uses_only_train_and_val(tiny_data):
    train, test = tiny_data
    model = tiny_model("resnet20", in_channels=1, num_classes=4)
    cfg = G.GradSplitterConfig(first_head_epochs=1, cycle_epochs=3, cycle_mask=2, cycle_head=1, init="value",
                               init_value=0.02, lr_mask=0.05, batch_size=32)
    val, _ = D.train_val_split(test, 0.5, seed=0)
    r1 = G.decompose(model, train, val, cfg, device="cpu")
    r2 = G.decompose(model, train, val, cfg, device="cpu")
    assert all(torch.equal(r1.masks[k], r2.masks[k]) for k in r1.masks)
    assert [h["val_accuracy"] for h in r1.history] == [h["val_accuracy"] for h in r2.history]
    assert [h["phase"] for h in r1.history] == ["head", "mask", "mask", "head"]
    assert r1.history[-1]["krr"] < 1.0                     # the masks moved
    assert all(p.requires_grad for p in model.parameters())  # the model is handed back unfrozen
    assert 1 <= r1.selected_epoch <= 4 and r1.model_val_accuracy >= 0
    report = G.evaluate_modules(model, r1, val, test, device="cpu")
    assert len(report["per_module"]) == 4 and 0 <= report["krr_mean"] <= 1
    assert report["accuracy_loss"] == pytest.approx(report["accuracy_model"] - report["accuracy_composed_modules"])
    with pytest.raises(InvalidClassError, match="out of range"):
        G.to_module(model, r1, 9, train)


@pytest.mark.parametrize("mode", ["recompute", "backprop"])
def test_head_phase_modes_give_the_same_search(tiny_data, mode):
    """Cached head-phase features (train and validation) change nothing against recomputing them
    every step or backpropagating through the CNN as the original does."""
    train, test = tiny_data
    model = tiny_model("vgg16", in_channels=1, num_classes=4)
    base = dict(first_head_epochs=2, cycle_epochs=5, cycle_mask=1, cycle_head=2, batch_size=32, init="value",
                init_value=0.01, lr_mask=0.01)
    a = G.decompose(model, train, test, G.GradSplitterConfig(head_phase="cached", **base), device="cpu")
    b = G.decompose(model, train, test, G.GradSplitterConfig(head_phase=mode, **base), device="cpu")
    assert [h["phase"] for h in a.history] == ["head"] * 2 + ["mask", "head", "head", "mask", "head"]
    assert min(h["krr"] for h in a.history) < 1.0      # the masks moved, so the caches were refreshed
    for ha, hb in zip(a.history, b.history):
        assert ha["krr"] == hb["krr"] and ha["val_accuracy"] == pytest.approx(hb["val_accuracy"], abs=1e-6)
    for k in a.masks:
        assert torch.equal(a.masks[k], b.masks[k])
    for k in a.heads:
        torch.testing.assert_close(a.heads[k], b.heads[k], atol=1e-4, rtol=1e-3)


def test_unknown_head_phase_is_rejected():
    with pytest.raises(ValueError, match="head_phase='fast'"):
        G.GradSplitterConfig(head_phase="fast")


def test_schedule_presets():
    fast = G.GradSplitterConfig.preset("fast", seed=3)
    assert fast.schedule == "fast" and fast.seed == 3 and fast.init == "value"
    paper = G.GradSplitterConfig.preset("paper")
    assert paper == G.GradSplitterConfig(schedule="paper")
    assert len(G.phase_sequence(fast)) * 3 <= len(G.phase_sequence(paper))
    with pytest.raises(ValueError, match="schedule='slow' is not a preset"):
        G.GradSplitterConfig.preset("slow")


def test_cached_logits_recompute_only_changed_modules(tiny_data):
    train, _ = tiny_data
    model = tiny_model("rescnn", in_channels=1, num_classes=4)
    splitter = G.GradSplitter(model, 4, G.GradSplitterConfig(), train.shape, "cpu")
    cache: dict = {}
    first = splitter.cached_logits(train, cache).clone()
    assert cache["recomputed"] == 4 and first.shape == (4, len(train), 4)
    splitter.cached_logits(train, cache)
    assert cache["recomputed"] == 4                     # nothing moved, nothing recomputed
    layer = next(iter(splitter.scores))
    with torch.no_grad():
        splitter.scores[layer][2, :2] = -1.0            # module 2 drops two kernels
    again = splitter.cached_logits(train, cache)
    assert cache["recomputed"] == 5
    torch.testing.assert_close(again, splitter.all_logits(train), atol=1e-5, rtol=1e-4)
    assert torch.equal(again[[0, 1, 3]], first[[0, 1, 3]]) and not torch.allclose(again[2], first[2])


def test_per_module_selection_picks_each_modules_own_epoch():
    """Three epochs, two modules, four validation samples (labels 0, 0, 1, 1). Module 0 can drop to
    epoch 2's small masks without hurting the composition; module 1's epoch 2 would, so it stays."""
    labels = torch.tensor([0, 0, 1, 1])
    good = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8]])
    scores = torch.stack([good, good, good.clone()])          # (E, V, N)
    scores[2, :, 1] = torch.tensor([0.95, 0.95, 0.3, 0.3])    # module 1 at epoch 3: fires on class 0
    krr = torch.tensor([[1.0, 1.0], [0.5, 0.8], [0.2, 0.3]])  # (E, N)
    assert G.select_per_module(scores, krr, labels, target=0.99, start=0) == [2, 1]
    # the bar is the start's accuracy when the target cannot be met
    assert G.select_per_module(scores, krr, labels, target=1.5, start=0) == [2, 1]
    # a hand-made history where module 1's small epoch is fine too: both move
    scores[2, :, 1] = good[:, 1]
    assert G.select_per_module(scores, krr, labels, target=0.99, start=0) == [2, 2]


def test_per_module_selection_and_head_refit_in_a_search(tiny_data):
    train, test = tiny_data
    model = tiny_model("simcnn", in_channels=1, num_classes=4)
    val, _ = D.train_val_split(test, 0.5, seed=0)
    cfg = G.GradSplitterConfig(first_head_epochs=1, cycle_epochs=3, cycle_mask=2, cycle_head=1, init="value",
                               init_value=0.02, lr_mask=0.05, batch_size=32, select="per_module",
                               refit_head_epochs=5, select_tolerance=0.5)
    r = G.decompose(model, train, val, cfg, device="cpu")
    assert len(r.selected_epochs) == 4 and all(1 <= e <= 4 for e in r.selected_epochs)
    for k, v in r.masks.items():      # each module's masks are those of its own epoch
        assert v.shape[0] == 4
    assert r.refit["epochs"] == 5 and r.refit["val_accuracy_after"] >= 0
    assert r.val_accuracy >= r.refit["val_accuracy_before"]   # a re-fit is kept only when it does not hurt
    report = G.evaluate_modules(model, r, val, test, device="cpu")
    composed_val = float((G.module_scores(model, r, val, device="cpu").argmax(1) == val.labels).float().mean())
    assert composed_val == pytest.approx(r.val_accuracy, abs=1e-6)
    assert 0 <= report["krr_mean"] <= 1
    with pytest.raises(ValueError, match="select='best'"):
        G.GradSplitterConfig(select="best")


def _short_search(tiny_data, arch: str):
    """A tiny model, its search data and a two-cycle search config, for the cache tests."""
    train, test = tiny_data
    cfg = G.GradSplitterConfig(first_head_epochs=1, cycle_epochs=2, cycle_mask=1, cycle_head=1, init="value",
                               init_value=0.02, lr_mask=0.05, batch_size=32)
    return tiny_model(arch, in_channels=1, num_classes=4), train, D.train_val_split(test, 0.5, seed=0)[0], cfg


def test_cached_search_is_returned_again_only_for_the_same_model_data_and_settings(tiny_data, tmp_path):
    model, train, val, cfg = _short_search(tiny_data, "resnet20")
    first = G.decompose(model, train, val, cfg, device="cpu", cache=tmp_path)
    again = G.decompose(model, train, val, G.GradSplitterConfig(**{**cfg.__dict__, "schedule": "quick"}),
                        device="cpu", cache=tmp_path)   # the schedule label is not part of the key
    assert not first.from_cache and again.from_cache and again.seconds == first.seconds
    assert all(torch.equal(first.masks[k], again.masks[k]) and again.masks[k].dtype == torch.bool for k in first.masks)
    assert all(torch.equal(first.heads[k], again.heads[k]) for k in first.heads)
    assert again.history == first.history and again.selected_epochs == first.selected_epochs
    assert len(list((tmp_path / "gradsplitter").iterdir())) == 1
    # other settings, other data or other weights: a new search
    assert not G.decompose(model, train, val, G.GradSplitterConfig(**{**cfg.__dict__, "alpha": 0.3}), device="cpu",
                           cache=tmp_path).from_cache
    assert not G.decompose(model, train.take(range(len(train) - 1)), val, cfg, device="cpu", cache=tmp_path).from_cache
    folder = G.search_cache_folder(tmp_path, model, train, val, cfg, torch.device("cpu"))
    (folder / "result.safetensors").write_bytes(b"broken")      # a damaged entry is searched again and replaced
    redone = G.decompose(model, train, val, cfg, device="cpu", cache=tmp_path)
    assert not redone.from_cache and G.decompose(model, train, val, cfg, device="cpu", cache=tmp_path).from_cache


def test_a_cached_fp32_search_serves_a_bf16_request_but_not_the_reverse(tiny_data, tmp_path):
    model, train, val, cfg = _short_search(tiny_data, "simcnn")
    bf16 = G.GradSplitterConfig(**{**cfg.__dict__, "precision": "bf16"})
    first = G.decompose(model, train, val, cfg, device="cpu", cache=tmp_path)
    served = G.decompose(model, train, val, bf16, device="cpu", cache=tmp_path)
    assert served.from_cache and served.config["precision"] == "fp32"
    assert all(torch.equal(first.masks[k], served.masks[k]) for k in first.masks)
    # a bf16 search is not the exact work an fp32 request asks for: it is searched anew
    other = tmp_path / "other"
    G.decompose(model, train, val, bf16, device="cpu", cache=other)
    assert not G.decompose(model, train, val, cfg, device="cpu", cache=other).from_cache
