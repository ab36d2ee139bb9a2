"""Sweeps: a grid of parameter values run with papermill on a dask LocalCluster (smoke profile)."""
from __future__ import annotations

import pytest

from modtools.__main__ import main
from modtools.errors import ParameterError, UnknownNameError
from modtools.sweep import grid, read_sweep, split_values, sweep

pytestmark = pytest.mark.timeout(600)


def test_values_and_grid():
    assert split_values("0.5,0.9") == [0.5, 0.9]
    assert split_values("[1, 2],[3]") == [[1, 2], [3]]
    assert split_values("'a,b',plain") == ["a,b", "plain"]
    with pytest.raises(ParameterError, match="no values"):
        split_values(" , ")
    assert grid({"a": [1, 2], "b": ["x", "y"]}) == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"},
                                                   {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]


def test_unknown_parameter_or_bad_value_is_rejected_before_anything_starts(tmp_path):
    with pytest.raises(UnknownNameError, match="no parameter.*keep_fractionz"):
        sweep("00_quickstart", {"keep_fractionz": [0.5, 0.9]}, "smoke", runs_root=tmp_path)
    with pytest.raises(ParameterError):
        sweep("00_quickstart", {"keep_fraction": [0.5, "lots"]}, "smoke", runs_root=tmp_path)
    assert not any(tmp_path.iterdir())
    assert main(["sweep", "00_quickstart", "-p", "nope", "1,2", "--profile", "smoke"]) == 2


@pytest.mark.slow
def test_sweep_of_two_values_on_a_local_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("MODTOOLS_DOWNLOAD", "0")
    result = sweep("00_quickstart", {"keep_fraction": [0.5, 0.9]}, "smoke", jobs=1, runs_root=tmp_path / "runs")
    assert [r["status"] for r in result.rows] == ["done", "done"], result.rows
    rows = read_sweep(result.folder)
    assert [float(r["keep_fraction"]) for r in rows] == [0.5, 0.9]
    assert all(float(r["accuracy_module"]) >= 0 and float(r["seconds"]) > 0 for r in rows)
    for k in ("run-000", "run-001"):
        assert (result.folder / k / "results.json").is_file() and list((result.folder / k / "figures").glob("*.png"))
    assert (result.folder / "models").resolve() == (tmp_path / "runs" / "models").resolve()
    assert result.folder.parent.name == "00_quickstart" and result.folder.name.startswith("sweep-")


@pytest.mark.slow
def test_a_failed_run_is_recorded_and_the_others_go_on(tmp_path, monkeypatch):
    monkeypatch.setenv("MODTOOLS_DOWNLOAD", "0")
    monkeypatch.setenv("MODTOOLS_DATA", str(tmp_path / "no-data"))    # CIFAR-10 is not there: fails at run time
    result = sweep("00_quickstart", {"dataset": ["cifar10", "synthetic"]}, "smoke", jobs=2, warmup=False,
                   runs_root=tmp_path / "runs")
    by = {r["parameters"]["dataset"]: r for r in result.rows}
    assert by["synthetic"]["status"] == "done"
    assert by["cifar10"]["status"] == "failed" and "failed in cell" in by["cifar10"]["error"]
    assert "DatasetNotFoundError" in read_sweep(result.folder)[0]["error"]
