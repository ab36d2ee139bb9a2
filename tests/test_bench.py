"""The extraction benchmark writes its fields (no timing assertions)."""
from __future__ import annotations

import json

import pytest
import torch

from modtools import bench


def test_bench_extract_writes_results(tmp_path):
    assert bench.main(["--out", str(tmp_path), "--archs", "resnet20", "--repeats", "1", "--width", "0.5",
                       "--only", "extract"]) == 0
    results = json.loads((tmp_path / "extract.json").read_text())
    rows = results["rows"]
    assert [r["keep_fraction"] for r in rows] == [0.25, 0.5, 0.75]
    for r in rows:
        assert 0 < r["macs_ratio"] < 1 and r["max_abs_diff"] <= 1e-5
        assert {"params_ratio", "latency_ratio_b64", "latency_ratio_b1", "meets_target"} <= set(r)
    assert (tmp_path / "bench_extract.png").stat().st_size > 1000


def test_bench_mwt_fields():
    results = bench.bench_mwt("resnet20", width=0.25, batch_size=8, steps=1, image_size=16, train_size=40,
                              cohesion_samples=50, precision="bf16")
    assert results["precision"] == "bf16"
    assert results["step_seconds_modular"] > 0 and results["step_seconds_standard"] > 0
    assert results["step_seconds_modular_unfused_bn"] > 0
    assert results["step_ratio_unfused_bn"] == results["step_seconds_modular_unfused_bn"] / results["step_seconds_standard"]
    assert results["gated_kernels"] > 0 and results["modularization_samples"] == 40
    assert 0 <= results["krr_at_0.9"] <= 1 and results["cohesion_seconds"] >= 0


def test_bench_gradsplitter_fields():
    runs = ("paper_cached", "paper_backprop", "paper_recompute", "fast_cached")
    results = bench.bench_gradsplitter(width=0.125, batch_size=8, steps=1, dataset="synthetic", per_class=32,
                                       search_samples=16, paper_cycle_epochs=2, runs=runs)
    assert results["step_seconds_batched"] > 0 and results["step_seconds_sequential"] > 0
    assert set(results["runs"]) == set(runs) | {"paper_cached_short"} and results["modules"] == 4
    assert results["runs"]["paper_backprop"]["config"]["cycle_epochs"] == results["head_phase_schedule"]["cycle_epochs"]
    for run in results["runs"].values():
        assert run["steps"] == run["epochs"] * run["steps_per_epoch"] == len(run["history"]) * 2
        assert 0 <= run["val_accuracy"] <= 1 and run["peak_rss_bytes"] > 0
    assert results["caching_time_ratio"] > 0 and results["caching_vs_recompute_ratio"] > 0
    assert {"steps_ratio", "meets_target", "fast_steps_to_target"} <= set(results["fast_vs_paper"])
    fig = bench.plot_gradsplitter(results)
    assert len(fig.axes) == 3 and len(fig.axes[0].lines) >= len(runs)
    with pytest.raises(ValueError, match="unknown runs"):
        bench.bench_gradsplitter(width=0.125, batch_size=8, steps=0, dataset="synthetic", per_class=8,
                                 search_samples=8, runs=("paper_fast",))


def test_bench_cnnsplitter_fields():
    r = bench.bench_cnnsplitter(width=0.125, image_size=16, val_images=20, population=4, generations=1,
                                baseline_candidates=2, precision="bf16")
    assert r["precision"] == "bf16"
    assert r["candidates"] == 4 * 10 * 2 and r["candidates_per_second"] > 0
    assert r["candidates_per_second_without_halving"] > 0 and r["original_seconds_per_candidate"] > 0
    rounds = r["original_seconds_per_candidate_rounds"]           # three rounds between the searches, the median
    assert len(rounds) == 3 and r["original_seconds_per_candidate"] == sorted(rounds)[1]
    assert len(r["rebuild_seconds_per_candidate_rounds"]) == 3 and r["rebuild_seconds_per_candidate"] > 0
    assert r["speedup_vs_original"] == pytest.approx(r["candidates_per_second"] * r["original_seconds_per_candidate"])
    assert r["speedup_vs_rebuild_cached_inputs"] == pytest.approx(
        r["candidates_per_second"] * r["rebuild_seconds_per_candidate"])
    h = r["successive_halving"]
    assert 0 <= h["parents_changed"] <= 1 and h["audited_generations"] == 1 and h["keep"] == 0.5


def test_original_pipeline_gives_the_evaluators_logits():
    from modtools import cnnsplitter as C
    from modtools import data as D
    from modtools.masks import find_maskable_layers
    from modtools.models import build_model

    torch.manual_seed(0)
    model = build_model("simcnn", num_classes=10, width=0.125).eval()
    val = D.synthetic(10, 3, 16, 3, seed=0)
    layers = find_maskable_layers(model, torch.zeros(1, 3, 16, 16))
    g = torch.Generator().manual_seed(1)
    masks = {layer.name: (torch.rand(3, layer.out_channels, generator=g) < 0.6).float() for layer in layers}
    cfg = C.CNNSplitterConfig(population=3, generations=0, parents_mating=2, keep_parents=1, confidence=0.0,
                              ratios={})
    ev = C.Evaluator(model, layers, val, cfg, "cpu")
    torch.testing.assert_close(bench.original_pipeline(model, val, masks, 4), ev.rebuilt(4, masks), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bench.original_pipeline(model, val, masks, 4), ev.masked(4, masks), atol=1e-4, rtol=1e-3)


def test_time_to_target_takes_the_first_epoch_meeting_both():
    history = [{"epoch": 1, "val_accuracy": 0.90, "krr": 0.9}, {"epoch": 2, "val_accuracy": 0.80, "krr": 0.5},
               {"epoch": 3, "val_accuracy": 0.896, "krr": 0.6}, {"epoch": 4, "val_accuracy": 0.95, "krr": 0.4}]
    assert bench.time_to_target(history, 10, val_accuracy=0.90, krr=0.6) == 30
    assert bench.time_to_target(history, 10, val_accuracy=0.99, krr=0.6) is None


def test_bench_summary_is_built_from_the_files_and_flags_misses(tmp_path):
    from modtools.bench_summary import TARGETS, build_summary, summary_figure
    from modtools.io import atomic_write_json

    atomic_write_json(tmp_path / "extract.json", {"rows": [{"latency_over_macs_b64": 1.1}, {"latency_over_macs_b64": 1.8}],
                                                  "share_meeting_target": 0.5})
    atomic_write_json(tmp_path / "mwt.json", {"step_ratio": 1.05})
    atomic_write_json(tmp_path / "cnnsplitter.json", {"speedup_vs_original": 1.25})
    atomic_write_json(tmp_path / "seam.json", {"rows": [{"step_ratio": 0.8}, {"step_ratio": 0.9}]})
    summary = build_summary(tmp_path)                        # gradsplitter.json is missing
    rows = {r["measure"]: r for r in summary["rows"]}
    assert len(rows) == len(TARGETS) and (tmp_path / "summary.json").is_file()
    worst = next(r for m, r in rows.items() if m.startswith("extracted-module"))
    assert worst["value"] == 1.8 and not worst["meets"] and worst["status"] == "MISSES TARGET"
    assert next(r for m, r in rows.items() if m.startswith("MwT"))["meets"]
    cnn = next(r for m, r in rows.items() if m.startswith("CNNSplitter"))
    assert cnn["value"] == 1.25 and not cnn["meets"] and cnn["measure"] in summary["flagged"]
    assert all(r["value"] is None and r["status"] == "missing" for m, r in rows.items() if m.startswith("GradSplitter"))
    assert summary["met"] == 2 and len(summary["missing"]) == 2
    summary_figure(summary)


def test_bench_seam_fields_and_problems_together():
    results = bench.bench_seam(archs=(("resnet20", 0.25),), batch_size=4, steps=1, image_size=16, problems=2,
                               precision="bf16")
    (row,) = results["rows"]
    assert results["precision"] == "bf16"
    assert row["step_seconds_plain"] > 0 and row["step_ratio"] > 0
    together = row["problems_together"]
    assert together["problems"] == 2 and together["seconds_sequential"] > 0 and together["seconds_stacked"] > 0
    assert together["keep"] in ("sequential", "stacked")
    assert together["keep"] == ("stacked" if together["ratio"] < 0.95 else "sequential")
