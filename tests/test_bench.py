"""The extraction benchmark writes its fields (no timing assertions)."""
from __future__ import annotations

import json

from modtools import bench


def test_bench_extract_writes_results(tmp_path):
    assert bench.main(["--out", str(tmp_path), "--archs", "resnet20", "--repeats", "1", "--width", "0.5"]) == 0
    results = json.loads((tmp_path / "extract.json").read_text())
    rows = results["rows"]
    assert [r["keep_fraction"] for r in rows] == [0.25, 0.5, 0.75]
    for r in rows:
        assert 0 < r["macs_ratio"] < 1 and r["max_abs_diff"] <= 1e-5
        assert {"params_ratio", "latency_ratio_b64", "latency_ratio_b1", "meets_target"} <= set(r)
    assert (tmp_path / "bench_extract.png").stat().st_size > 1000
