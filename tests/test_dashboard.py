"""The dashboard built headless: its buttons call the foundry API and show results and errors."""
from __future__ import annotations

import base64
import io
import zipfile

import pytest

from modtools import dashboard as DB
from modtools import foundry, jobs
from modtools.store import ModuleStore

from foundry_fixtures import foundry_model, make_module  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def board(tmp_path, foundry_model):
    model, rec, data, cache = foundry_model
    store = ModuleStore(tmp_path / "store")
    store.add(make_module(model, data, [1], keep=0.5, accuracy=0.9), "one-module", source_key=rec["key"])
    store.add(make_module(model, data, [2, 3], keep=0.7, accuracy=0.8), "pair-module", source_key=rec["key"])
    d = DB.foundry_dashboard(store, cache=cache, device="cpu", poll=0.2)
    yield d
    for r in jobs.list_jobs(store):
        if r["status"] in jobs.ACTIVE:
            jobs.cancel_job(store, r["id"])


def click(widget_box, css):
    """Click the button with CSS class ``css`` inside ``widget_box``."""
    stack = [widget_box]
    while stack:
        w = stack.pop()
        if css in getattr(w, "_dom_classes", ()):
            w.click()
            return w
        stack.extend(getattr(w, "children", ()))
    raise AssertionError(f"no widget with class {css}")


def test_search_shows_cards_and_empty_search_says_what_exists(board):
    board.q_text.value = "CLASS1"
    click(board.widget, "mt-search-button")
    assert "one-module" in board.results.value and "pair-module" not in board.results.value
    assert list(board.result_pick.options) == ["one-module"]
    board.q_text.value = "trouser"
    click(board.widget, "mt-search-button")
    assert "NoMatchError" in board.message.value and "class1" in board.message.value and "#d62728" in board.message.value


def test_open_card_shows_card_retention_and_code(board):
    board.q_text.value = "class"
    click(board.widget, "mt-search-button")
    board.result_pick.value = "pair-module"
    click(board.widget, "mt-open-card")
    assert board.tabs.selected_index == 1 and "pair-module" in board.card_html.value
    assert "store.load(&#x27;pair-module&#x27;)" in board.code.value or "store.load('pair-module')" in board.code.value
    assert board.retention_plot.value[:4] == b"\x89PNG", "the per-layer retention figure is shown"


def test_parameters_follow_the_approach_config(board):
    board.approach_pick.value = "seam"
    assert "epochs" in board._param_widgets and board._param_widgets["epochs"][1].value == 300
    click(board.widget, "mt-quick")
    assert board.params() == {"epochs": 3, "steps_per_epoch": 20, "precision": "auto"}
    board.approach_pick.value = "gradsplitter"
    assert "cycle_epochs" in board._param_widgets and "epochs" not in board._param_widgets


def test_modularize_starts_a_job_that_lands_in_the_store(board, foundry_model):
    _, rec, _, _ = foundry_model
    assert rec["key"] in [v for _, v in board.model_pick.options]
    board.model_pick.value = rec["key"]
    board.approach_pick.value = "baseline"
    board.classes_text.value = "class0, class3"
    board.name_text.value = "from-dashboard"
    click(board.widget, "mt-modularize")
    (record,) = foundry.jobs(board.store)
    assert board.tabs.selected_index == 3 and record["request"]["classes"] == [0, 3]
    foundry.wait(board.store, record["id"], 120)
    board.refresh_jobs()
    assert "done" in board._job_rows[record["id"]]["label"].value
    assert "from-dashboard" in board.store.names() and "from-dashboard" in board.eval_pick.options


def test_bad_classes_show_a_message_and_start_nothing(board, foundry_model):
    board.model_pick.value = foundry_model[1]["key"]
    board.classes_text.value = "airplane"
    click(board.widget, "mt-modularize")
    assert "InvalidClassError" in board.message.value and "cifar10" in board.message.value
    assert foundry.jobs(board.store) == []


def test_cancel_button_cancels_the_job(board):
    job_id = jobs.start_job(board.store, "sleep", {"seconds": 60}, title="long")
    board.refresh_jobs()
    row = board._job_rows[job_id]
    assert not row["cancel"].disabled
    row["cancel"].click()
    assert jobs.read_job(board.store, job_id)["status"] == "cancelled"
    assert "cancelled" in row["label"].value and row["cancel"].disabled


def test_download_link_holds_the_zip(board):
    board.dl_pick.value = "one-module"
    click(board.widget, "mt-download")
    data = board.dl_link.value.split("base64,")[1].split("'")[0]
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(data))) as zf:
        assert sorted(zf.namelist()) == ["card.json", "weights.safetensors"]


def test_evaluate_compose_and_patch_call_the_api(board, monkeypatch):
    calls = []
    monkeypatch.setattr(foundry, "evaluate", lambda store, name, cache, device: calls.append(("evaluate", name)) or
                        {"name": name, "accuracy": 0.9, "source_accuracy": 0.95, "f1": {"class1": 0.9}})
    monkeypatch.setattr(foundry, "compose", lambda store, names, new, device: calls.append(("compose", names, new)) or
                        {"name": new, "accuracy": 0.8, "macs": 10, "f1": {}})
    monkeypatch.setattr(foundry, "patch", lambda store, name, weak, new, cache, device:
                        calls.append(("patch", name, weak, new)) or
                        {"name": "p", "target_name": "class1", "f1_before": 0.1, "f1_after": 0.5,
                         "other_accuracy_before": 0.9, "other_accuracy_after": 0.88})
    board.eval_pick.value = "one-module"
    click(board.widget, "mt-evaluate")
    assert "0.950" in board.eval_out.value
    board.compose_pick.value = ("one-module", "pair-module")
    board.compose_name.value = "both"
    click(board.widget, "mt-compose")
    board.patch_pick.value = "one-module"
    board.patch_weak.value = board.patch_weak.options[0]
    click(board.widget, "mt-patch")
    assert calls == [("evaluate", "one-module"), ("compose", ["one-module", "pair-module"], "both"),
                     ("patch", "one-module", board.patch_weak.options[0], None)]
    assert "F1 after" in board.reuse_out.value


def test_a_failing_job_shows_its_message(board):
    job_id = jobs.start_job(board.store, "sleep", {"seconds": 0.1, "fail": "out of memory"})
    jobs.wait_job(board.store, job_id, 60)
    board.refresh_jobs()
    assert "failed" in board._job_rows[job_id]["label"].value and "out of memory" in board._job_rows[job_id]["label"].value


def test_search_filters_by_size(board):
    macs = {e.name: e.macs for e in board.store.entries()}
    board.q_max_mmacs.value = min(macs.values()) / 1e6
    click(board.widget, "mt-search-button")
    assert list(board.result_pick.options) == [min(macs, key=macs.get)]


def test_an_unwritable_store_shows_its_message(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    w = DB.foundry_dashboard(blocker / "store")
    assert "StoreNotWritableError" in w.value and "cannot be written" in w.value
