"""Background jobs and the foundry's actions: start, progress, cancel, failure, restart; decompose with
every registered approach, evaluate, compose, patch; bad input rejected before a job starts."""
from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from modtools import foundry, jobs
from modtools.approaches import approach_params, get_approach, list_approaches, make_config
from modtools.errors import (InvalidClassError, JobError, NameConflictError, ParameterError, SourceModelMissingError,
                             UnknownNameError)
from modtools.store import ModuleStore
from modtools.train import FitConfig, ModelSpec, train_cached

from foundry_fixtures import SPEC, foundry_model, make_module  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def store(tmp_path):
    s = ModuleStore(tmp_path / "store")
    yield s
    for rec in jobs.list_jobs(s):          # no job outlives its test
        if rec["status"] in jobs.ACTIVE:
            jobs.cancel_job(s, rec["id"])


def test_job_runs_reports_progress_and_keeps_its_log(store):
    job_id = jobs.start_job(store, "sleep", {"seconds": 2.0})
    seen = []
    while (rec := jobs.job_status(store, job_id))["status"] in jobs.ACTIVE:
        seen.append(rec["progress"])
        time.sleep(0.2)
    assert rec["status"] == "done" and rec["result"] == {"slept": 2.0} and rec["progress"] == 1.0
    assert any(0 < p < 1 for p in seen), seen
    assert "slept 0.1 s" in jobs.job_log(store, job_id) and "done" in jobs.job_log(store, job_id)


def test_failure_is_recorded_with_its_message(store):
    rec = jobs.wait_job(store, jobs.start_job(store, "sleep", {"seconds": 0.2, "fail": "boom at step 3"}), 60)
    assert rec["status"] == "failed" and rec["error"] == "ValueError: boom at step 3"
    assert "Traceback" in jobs.job_log(store, rec["id"])


def test_cancel_stops_the_process_and_marks_the_job(store):
    job_id = jobs.start_job(store, "sleep", {"seconds": 60})
    while jobs.job_status(store, job_id)["status"] != "running":
        time.sleep(0.1)
    pid = jobs.read_job(store, job_id)["pid"]
    rec = jobs.cancel_job(store, job_id)
    assert rec["status"] == "cancelled"
    assert not jobs._alive(pid, job_id)
    assert jobs.cancel_job(store, job_id)["status"] == "cancelled"     # cancelling again changes nothing
    time.sleep(0.5)
    assert jobs.job_status(store, job_id)["status"] == "cancelled"    # the dying process did not overwrite it


def test_a_restart_shows_past_jobs_and_marks_lost_ones(store):
    done = jobs.start_job(store, "sleep", {"seconds": 0.1})
    jobs.wait_job(store, done, 60)
    lost = jobs.start_job(store, "sleep", {"seconds": 60})
    while jobs.job_status(store, lost)["status"] != "running":
        time.sleep(0.1)
    os.killpg(jobs.read_job(store, lost)["pid"], signal.SIGKILL)     # a crash: no record written
    jobs._CHILDREN[lost].wait()
    jobs._CHILDREN.clear()                                          # as after a kernel restart
    again = ModuleStore(store.root)
    listed = {r["id"]: r for r in jobs.list_jobs(again)}
    assert listed[done]["status"] == "done"
    assert listed[lost]["status"] == "failed" and "gone" in listed[lost]["error"]


def test_job_errors(store):
    with pytest.raises(JobError, match="unknown job kind"):
        jobs.start_job(store, "nope", {})
    with pytest.raises(JobError, match="no job"):
        jobs.read_job(store, "missing-job")


def test_two_jobs_cannot_write_one_module_name(store):
    first = jobs.start_job(store, "sleep", {"seconds": 30}, outputs=["same-name"])
    with pytest.raises(NameConflictError, match="already writing a module named 'same-name'"):
        jobs.start_job(store, "sleep", {"seconds": 1}, outputs=["same-name"])
    jobs.cancel_job(store, first)
    jobs.wait_job(store, jobs.start_job(store, "sleep", {"seconds": 0.1}, outputs=["same-name"]), 60)


def test_registry_lists_every_approach_with_checked_parameters():
    assert set(list_approaches()) >= {"baseline", "gradsplitter", "cnnsplitter", "seam", "mwt"}
    for name in list_approaches():
        params = approach_params(name)
        assert params and all(p.name for p in params)
        make_config(name, get_approach(name).quick)                  # the quick settings are valid
    with pytest.raises(ParameterError, match="no parameter 'epochz'"):
        make_config("seam", {"epochz": 3})
    with pytest.raises(ParameterError, match="epochs=0 is out of range"):
        make_config("seam", {"epochs": 0})
    with pytest.raises(ParameterError, match="must be int"):
        make_config("seam", {"epochs": "3"})
    with pytest.raises(ParameterError, match="choose one of"):
        make_config("gradsplitter", {"select": "best"})
    with pytest.raises(UnknownNameError, match="unknown approach"):
        get_approach("nope")


@pytest.mark.slow
@pytest.mark.parametrize("approach", ["baseline", "gradsplitter", "cnnsplitter", "seam", "mwt"])
def test_decompose_job_puts_modules_into_the_store(store, foundry_model, approach):
    model, rec, data, cache = foundry_model
    classes = ["class1", "class2"] if approach == "mwt" else ["class1"]
    job_id = foundry.decompose(store, approach, classes, model_key=rec["key"], params=dict(get_approach(approach).quick),
                               cache=cache, device="cpu")
    result = foundry.wait(store, job_id, 300)
    assert result["status"] == "done", foundry.log(store, job_id)
    (name,) = result["result"]["modules"]
    entry = store.search(name)[0]
    assert entry.approach == approach and entry.accuracy is not None and entry.macs > 0
    assert entry.source_key == rec["key"]
    card = store.card(name)
    assert card["lineage"][-1]["step"] == "foundry job" and card["task"]["classes"] == [1, 2][:len(classes)]


def test_decompose_rejects_bad_input_before_a_job_starts(store, foundry_model, tmp_path):
    _, rec, _, cache = foundry_model
    with pytest.raises(InvalidClassError, match="its classes are: class0"):
        foundry.decompose(store, "seam", ["Trouser"], model_key=rec["key"], cache=cache)
    with pytest.raises(ParameterError, match="no parameter"):
        foundry.decompose(store, "seam", ["class1"], model_key=rec["key"], params={"epoch": 1}, cache=cache)
    with pytest.raises(SourceModelMissingError, match="no trained model"):
        foundry.decompose(store, "seam", ["class1"], model_key="rescnn-000000000000", cache=cache)
    with pytest.raises(ParameterError, match="at least 2"):
        foundry.decompose(store, "mwt", ["class1"], model_key=rec["key"], cache=cache)
    assert foundry.jobs(store) == []
    store.add(make_module(foundry_model[0], foundry_model[2], [1]), "taken")
    with pytest.raises(NameConflictError, match="taken"):
        foundry.decompose(store, "seam", ["class1"], model_key=rec["key"], name="taken", cache=cache)


def test_evaluate_compares_with_the_source_model(store, foundry_model, tmp_path):
    model, rec, data, cache = foundry_model
    store.add(make_module(model, data, [1, 2], keep=0.5), "pair", source_key=rec["key"])
    out = foundry.evaluate(store, "pair", cache, device="cpu")
    assert 0 <= out["accuracy"] <= 1 and out["source_accuracy"] > 0.5
    assert 0 < out["macs_ratio"] < 1 and out["latency_s"] > 0 and set(out["f1"]) == {"class1", "class2"}
    assert store.card("pair")["metrics"]["source_accuracy"] == out["source_accuracy"]
    with pytest.raises(SourceModelMissingError):
        foundry.evaluate(store, "pair", tmp_path / "empty-cache", device="cpu")


@pytest.mark.slow
def test_compose_and_patch_save_new_modules_with_lineage(store, foundry_model):
    model, rec, data, cache = foundry_model
    job_id = foundry.decompose(store, "gradsplitter", ["class0", "class1", "class2"], model_key=rec["key"],
                               params={"first_head_epochs": 2, "cycle_epochs": 2}, cache=cache, device="cpu", name="gs")
    names = foundry.wait(store, job_id, 300)["result"]["modules"]
    assert names == ["gs-class0", "gs-class1", "gs-class2"]
    out = foundry.compose(store, names, "composed-3", device="cpu")
    assert out["accuracy"] > 1 / 3 and store.card("composed-3")["lineage"][0]["step"] == "compose"
    rebuilt = foundry.load_composition(store, "composed-3")
    for n in names:
        store.delete(n)                                                # the composition holds its own copy
    assert abs(foundry.evaluate(store, "composed-3")["accuracy"] - out["accuracy"]) < 1e-9
    assert rebuilt(torch.rand(2, 1, 16, 16)).shape == (2, 3)

    weak_spec = ModelSpec(arch="rescnn", width=0.0625, dataset="synthetic", classes=[0, 1, 2],
                          fit=FitConfig(epochs=1, batch_size=16, lr=0.01))
    _, weak_rec = train_cached(weak_spec, cache, device="cpu", progress=False)
    store.add(make_module(model, data, [2], keep=0.8), "one", source_key=rec["key"])
    patched = foundry.patch(store, "one", weak_rec["key"], "patched-one", cache, device="cpu")
    assert {"f1_before", "f1_after", "other_accuracy_after"} <= set(patched)
    card = store.card("patched-one")
    assert card["kind"] == "patched" and card["lineage"][0]["module"] == "one"
    assert store.search("patched-one")[0].approach == "patched"


def test_hidden_config_fields_are_accepted_with_their_type():
    cfg = make_config("cnnsplitter", {"sensitivity_grid": [0.25, 0.5]})
    assert cfg.sensitivity_grid == [0.25, 0.5]
    with pytest.raises(ParameterError, match="must be a list"):
        make_config("cnnsplitter", {"sensitivity_grid": 0.5})
