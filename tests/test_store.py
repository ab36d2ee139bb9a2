"""The module store: add, search, load, delete, index rebuild, path containment, zips, bad input."""
from __future__ import annotations

import json
import zipfile

import pytest
import torch

from modtools import foundry
from modtools.errors import (CorruptCardError, InvalidClassError, InvalidNameError, ModuleNotInStoreError,
                             NameConflictError, NoMatchError, SourceModelMissingError, StoreNotWritableError)
from modtools.store import ModuleStore, check_name, reproduce_code, retention_by_layer

from foundry_fixtures import foundry_model, make_module  # noqa: F401  (fixtures)


@pytest.fixture
def store(tmp_path):
    return ModuleStore(tmp_path / "store")


@pytest.fixture
def filled(store, foundry_model):
    model, rec, data, cache = foundry_model
    a = store.add(make_module(model, data, [1], keep=0.5, accuracy=0.9), "shirt-module", source_key=rec["key"])
    b = store.add(make_module(model, data, [2, 3], keep=0.9, accuracy=0.6), "pair-module", source_key=rec["key"])
    return store, a, b


def test_add_records_costs_and_finds_by_partial_case_insensitive_name(filled):
    store, a, b = filled
    assert a.macs > 0 and a.params > 0 and a.size_bytes > 0 and a.retention_kind == "KRR"
    assert a.macs < b.macs                                   # fewer kernels, fewer MACs
    assert [e.name for e in store.search("CLASS1")] == ["shirt-module"]
    assert {e.name for e in store.search("class")} == {"shirt-module", "pair-module"}
    assert [e.name for e in store.search("ass3")] == ["pair-module"]
    assert [e.name for e in store.search("", min_accuracy=0.8)] == ["shirt-module"]
    assert [e.name for e in store.search("", max_retention=0.6)] == ["shirt-module"]
    assert [e.name for e in store.search("", max_macs=a.macs)] == ["shirt-module"]
    assert len(store.search("", dataset="synthetic", arch="rescnn", approach="baseline")) == 2


def test_empty_search_says_what_exists(filled, tmp_path):
    store, _, _ = filled
    with pytest.raises(NoMatchError, match="classes class1, class2, class3.*synthetic.*rescnn.*baseline"):
        store.search("trouser")
    with pytest.raises(NoMatchError, match="is empty"):
        ModuleStore(tmp_path / "empty").search("x")


def test_load_round_trip_equals_the_module(filled, foundry_model):
    store, _, _ = filled
    model, rec, data, _ = foundry_model
    original = make_module(model, data, [1], keep=0.5, accuracy=0.9)
    loaded = store.load("shirt-module", model=model)
    x = data.test.float_images()[:8]
    assert torch.allclose(loaded(x), original(x), atol=1e-6)
    assert loaded.name == "shirt-module"


def test_name_conflict_and_overwrite(filled, foundry_model):
    store, _, _ = filled
    model, rec, data, _ = foundry_model
    with pytest.raises(NameConflictError, match="shirt-module"):
        store.add(make_module(model, data, [0]), "shirt-module")
    store.add(make_module(model, data, [0]), "shirt-module", overwrite=True)
    assert store.card("shirt-module")["task"]["classes"] == [0]


@pytest.mark.parametrize("bad", ["../escape", "a/b", "..", "", ".hidden", "x" * 200, "a\\b", "/abs"])
def test_names_cannot_escape_the_store(store, bad):
    with pytest.raises(InvalidNameError):
        store.folder(bad)
    with pytest.raises(InvalidNameError):
        check_name(bad)


def test_paths_outside_are_refused(store, tmp_path):
    with pytest.raises(InvalidNameError, match="outside the store"):
        store.inside(tmp_path / "elsewhere")
    (store.modules_dir / "link").symlink_to(tmp_path)
    with pytest.raises(InvalidNameError, match="outside the store"):
        store.folder("link")


def test_delete_removes_module_and_index_entry(filled):
    store, _, _ = filled
    store.export_zip("shirt-module")
    store.delete("shirt-module")
    assert "shirt-module" not in store.names() and not store.folder("shirt-module").exists()
    assert not (store.root / "downloads" / "shirt-module.zip").exists()
    with pytest.raises(ModuleNotInStoreError, match="pair-module"):
        store.card("shirt-module")


def test_index_is_rebuilt_after_corruption_or_loss(filled):
    store, _, _ = filled
    store.index_path.write_text("{not json")
    assert set(store.names()) == {"shirt-module", "pair-module"}
    store.index_path.unlink()
    assert len(store.entries()) == 2 and json.loads(store.index_path.read_text())["version"] == 1


def test_corrupt_card_is_reported_not_fatal(filled):
    store, _, _ = filled
    (store.folder("pair-module") / "card.json").write_text("{broken")
    index = store.rebuild_index()
    assert "pair-module" in index["corrupt"] and store.names() == ["shirt-module"]
    with pytest.raises(CorruptCardError, match="not valid JSON"):
        store.card("pair-module")
    with pytest.raises(CorruptCardError):
        store.load("pair-module")
    (store.folder("shirt-module") / "card.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(CorruptCardError, match="lacks"):
        store.card("shirt-module")


def test_damaged_weights_raise_corrupt_card(filled):
    store, _, _ = filled
    w = store.folder("shirt-module") / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CorruptCardError, match="damaged"):
        store.load("shirt-module")


def test_unwritable_store_raises_typed_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreNotWritableError, match="cannot be written"):
        ModuleStore(blocker / "store")


def test_zip_holds_card_and_weights_and_imports_back(filled, tmp_path):
    store, _, _ = filled
    path = store.export_zip("shirt-module")
    assert path.parent == store.root / "downloads"
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["card.json", "weights.safetensors"]
        assert json.loads(zf.read("card.json"))["name"] == "shirt-module"
    other = ModuleStore(tmp_path / "other")
    other.import_zip(path)
    assert other.names() == ["shirt-module"]
    x = torch.rand(2, 1, 16, 16)
    assert torch.allclose(other.load("shirt-module")(x), store.load("shirt-module")(x))


def test_source_model_is_found_or_reported_missing(filled, foundry_model, tmp_path):
    store, _, _ = filled
    model, _, _, cache = foundry_model
    src = store.source_model("shirt-module", cache)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), model.state_dict().values()))
    with pytest.raises(SourceModelMissingError, match="missing"):
        store.source_model("shirt-module", tmp_path / "no-cache")


def test_card_helpers(filled):
    store, _, _ = filled
    card = store.card("shirt-module")
    ret = retention_by_layer(card)
    assert ret and all(0 < v <= 1 for v in ret.values())
    code = reproduce_code(card, store.root)
    compile(code, "<card>", "exec")
    assert "store.load('shirt-module')" in code and "foundry.decompose" in code


def test_class_names_are_checked_against_the_data_set():
    names = ["T-shirt/top", "Trouser", "Pullover"]
    assert foundry.resolve_classes(["trouser", 0], names, "fashion-mnist") == [1, 0]
    with pytest.raises(InvalidClassError, match="its classes are: T-shirt/top, Trouser, Pullover"):
        foundry.resolve_classes(["jacket"], names, "fashion-mnist")
    with pytest.raises(InvalidClassError, match="'airplane' is a class of cifar10"):
        foundry.resolve_classes(["airplane"], names, "fashion-mnist")
    with pytest.raises(InvalidClassError, match="out of range"):
        foundry.resolve_classes([7], names, "fashion-mnist")
    with pytest.raises(InvalidClassError, match="twice"):
        foundry.resolve_classes(["Trouser", 1], names, "fashion-mnist")
    with pytest.raises(InvalidClassError, match="no target class"):
        foundry.resolve_classes([], names, "fashion-mnist")
