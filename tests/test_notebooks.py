"""Every notebook runs with papermill in the smoke profile and writes its results and figures."""
from __future__ import annotations

import json

import pytest

from modtools import runner
from modtools.store import ModuleStore

REQUIRED = {"00_quickstart": ["accuracy_model", "accuracy_module", "macs_ratio", "latency_ratio_b64", "sweep"],
            "10_train_models": ["models", "per_class", "accuracy"],
            "30_gradsplitter_modularize": ["krr_mean", "accuracy_model", "accuracy_composed_modules", "per_module"],
            "31_gradsplitter_compose": ["accuracy_single_models", "accuracy_best_single", "accuracy_composed"],
            "32_gradsplitter_new_task": ["tasks"],
            "40_mwt_modular_training": ["accuracy_modular", "accuracy_standard", "seconds_per_epoch_modular",
                                        "seconds_per_epoch_standard"],
            "41_mwt_threshold_sweep": ["thresholds", "krr", "cohesion", "coupling", "reuse_krr", "reuse_accuracy"],
            "42_mwt_subtask_reuse": ["subtasks"],
            "50_seam_binary": ["classes"],
            "51_seam_multiclass": ["groups"],
            "52_seam_defect_inheritance": ["thresholds", "dir_standard", "dir_seam", "accuracy_standard",
                                           "accuracy_seam"]}


STORE_NOTEBOOKS = ("00_quickstart", "20_cnnsplitter_modularize", "30_gradsplitter_modularize", "42_mwt_subtask_reuse",
                   "50_seam_binary", "51_seam_multiclass")


@pytest.mark.notebook
@pytest.mark.parametrize("name", runner.list_notebooks())
def test_notebook_smoke(tmp_path, name, monkeypatch):
    monkeypatch.setenv("MODTOOLS_DOWNLOAD", "0")
    result = runner.run_notebook(name, "smoke", run_dir=tmp_path / "runs" / name, figures_dir=tmp_path / "figures")
    results = json.loads((tmp_path / "runs" / name / "results.json").read_text())
    assert results["notebook"] == name and results["profile"] == "smoke"
    assert results["wall_seconds"] > 0 and results["versions"]["torch"].startswith("2.14")
    assert results["seed"] == 0 and results["device"] in ("cpu", "cuda")
    for key in REQUIRED.get(name, []):
        assert key in results, key
    if name == "41_mwt_threshold_sweep":
        n = len(results["thresholds"])
        assert all(len(results[k]) == n for k in ("krr", "cohesion", "coupling", "reuse_krr", "reuse_accuracy"))
    if name == "32_gradsplitter_new_task":
        for task in results["tasks"]:
            assert {"accuracy_composed", "accuracy_scratch", "seconds_composed", "seconds_scratch"} <= set(task)
    if name == "42_mwt_subtask_reuse":
        for task in results["subtasks"]:
            assert {"classes", "krr", "macs_ratio", "accuracy_module", "accuracy_standard"} <= set(task)
            assert 0 < task["macs_ratio"] < 1.05 and 0 <= task["accuracy_module"] <= 1  # the head adds a little
    if name == "50_seam_binary":
        assert all({"accuracy_original", "accuracy_reengineered", "wrr"} <= set(c) for c in results["classes"])
    if name == "51_seam_multiclass":
        for g in results["groups"]:
            assert {"accuracy_original", "accuracy_reengineered", "wrr", "macs_ratio_structured",
                    "latency_ratio"} <= set(g)
    if name == "52_seam_defect_inheritance":
        n = len(results["thresholds"])
        assert all(len(results[k]) == n for k in ("dir_standard", "dir_seam", "accuracy_standard", "accuracy_seam"))
    if name in STORE_NOTEBOOKS:   # the modules also went into the store next to run_dir, with their accuracy
        entries = ModuleStore(tmp_path / "runs" / "store").entries()
        assert entries and all(e.accuracy is not None for e in entries), name
    if name == "60_compare_approaches":   # a row per (architecture, sub-task, approach), every approach there
        rows = results["rows"]
        assert {r["approach"] for r in rows} == {"baseline", "cnnsplitter", "gradsplitter", "mwt", "seam"}
        assert len(rows) == len(results["parameters"]["archs"]) * len(results["tasks"]) * 5
        keys = {"approach", "arch", "classes", "accuracy", "accuracy_loss", "retention", "macs_ratio",
                "latency_ratio", "seconds_to_module"}
        assert all(keys <= set(r) for r in rows)
        measured = [r for r in rows if r["accuracy"] is not None]
        assert all(r["macs_ratio"] > 0 and r["seconds_to_module"] >= 0 and 0 <= r["accuracy"] <= 1 for r in measured)
        assert all(r["approach"] == "mwt" and len(r["classes"]) == 1 for r in rows if r["accuracy"] is None)
    if name == "90_module_foundry":
        assert results["modules"] >= 2 and all(j["status"] == "done" for j in results["jobs"])
        assert set(results["approaches"]) >= {"baseline", "gradsplitter", "cnnsplitter", "seam", "mwt"}
    figures = list((tmp_path / "figures").glob(f"{name}_*.png"))
    assert figures and all(f.stat().st_size > 1000 for f in figures)
    assert (tmp_path / "runs" / name / f"{name}.ipynb").is_file() and result.seconds > 0


def test_failing_notebook_names_the_cell(tmp_path, monkeypatch):
    monkeypatch.setenv("MODTOOLS_DOWNLOAD", "0")
    monkeypatch.setenv("MODTOOLS_DATA", str(tmp_path / "no-data"))   # CIFAR-10 is not there: fails at run time
    with pytest.raises(runner.NotebookFailed, match=r"failed in cell \d+.*DatasetNotFoundError"):
        runner.run_notebook("00_quickstart", "smoke", {"dataset": "cifar10"}, run_dir=tmp_path / "r",
                            figures_dir=tmp_path / "f")


@pytest.mark.notebook
def test_seam_defect_paper_profile_says_where_the_weights_go(tmp_path, monkeypatch):
    """52's published setting reuses torchvision's ImageNet ResNet-18; without its file nothing is downloaded."""
    monkeypatch.setenv("MODTOOLS_DOWNLOAD", "0")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(runner.NotebookFailed, match=r"WeightsNotFoundError.*resnet18-f37072fd\.pth.*No download"):
        runner.run_notebook("52_seam_defect_inheritance", "paper", run_dir=tmp_path / "r", figures_dir=tmp_path / "f")
    assert not list((tmp_path / "f").glob("*.png")) and not (tmp_path / "r" / "results.json").exists()


def test_notebooks_match_their_percent_sources():
    """Each .ipynb is its paired .py (jupytext percent) without outputs; one cell is tagged parameters."""
    import jupytext

    for name in runner.list_notebooks():
        py = runner.notebooks_dir() / f"{name}.py"
        a, b = jupytext.read(py), jupytext.read(py.with_suffix(".ipynb"))
        assert [(c.cell_type, c.source.strip()) for c in a.cells] == \
               [(c.cell_type, c.source.strip()) for c in b.cells], f"{name}: run `make notebooks`"
        tagged = [c for c in b.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        assert all(not c.get("outputs") for c in b.cells if c.cell_type == "code"), f"{name} has outputs"


def test_every_parameter_line_is_understood_by_papermill():
    import re

    import jupytext

    for name in runner.list_notebooks():
        nb = jupytext.read(runner.notebooks_dir() / f"{name}.ipynb")
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        declared = re.findall(r"^([A-Za-z_]\w*)\s*=", cell.source, re.M)
        assert list(runner.notebook_parameters(name)) == declared, name
