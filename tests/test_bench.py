"""The extraction benchmark writes its fields (no timing assertions)."""
from __future__ import annotations

import json

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
                              cohesion_samples=50)
    assert results["step_seconds_modular"] > 0 and results["step_seconds_standard"] > 0
    assert results["gated_kernels"] > 0 and results["modularization_samples"] == 40
    assert 0 <= results["krr_at_0.9"] <= 1 and results["cohesion_seconds"] >= 0


def test_bench_gradsplitter_fields():
    results = bench.bench_gradsplitter(width=0.125, batch_size=8, steps=1, search_samples=16, paper_cycle_epochs=2)
    assert results["step_seconds_batched"] > 0 and results["step_seconds_sequential"] > 0
    assert set(results["runs"]) == {"paper_cached", "paper_uncached", "fast_cached"}
    for run in results["runs"].values():
        assert run["steps"] > 0 and 0 <= run["val_accuracy"] <= 1 and run["peak_rss_bytes"] > 0
    assert {"steps_ratio", "meets_target"} <= set(results["fast_vs_paper"])
