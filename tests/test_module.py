"""Module files: round trip, card, corruption, wrong model, safe loading."""
from __future__ import annotations

import json

import pytest
import torch

from modtools.errors import CheckpointError, ModuleMismatchError
from modtools.io import load_tensors, safe_torch_load, save_tensors
from modtools.masks import apply_masks, find_maskable_layers, random_masks
from modtools.module import Module

from conftest import tiny_model


def _module(arch="resnet20", seed=0):
    model = tiny_model(arch, seed=seed)
    masks = random_masks(find_maskable_layers(model), 0.5, seed=1)
    task = {"dataset": "synthetic", "classes": [1, 3], "class_names": ["b", "d"]}
    mod = Module.create(model, masks, task, {"type": "select", "classes": [1, 3]}, approach="test",
                        config={"keep": 0.5}, metrics={"accuracy": 0.5}, lineage=[{"from": "unit test"}])
    return model, masks, mod


@pytest.mark.parametrize("arch", ["resnet20", "incecnn"])
def test_round_trip(tmp_path, arch):
    model, masks, mod = _module(arch)
    x = torch.rand(3, 3, 32, 32)
    with apply_masks(model, masks):
        expected = model(x)[:, [1, 3]]
    torch.testing.assert_close(mod(x), expected, atol=1e-5, rtol=1e-4)
    folder = mod.save(tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "weights.safetensors"]
    again = Module.load(folder, model=model)
    assert torch.equal(again(x), mod(x))
    card = json.loads((folder / "card.json").read_text())
    assert card["library_name"] == "modtools" and card["approach"] == "test"
    assert card["task"]["classes"] == [1, 3] and card["metrics"] == {"accuracy": 0.5}
    assert card["base_model"]["arch"] == arch and len(card["base_model"]["sha256"]) == 64
    assert 0 < card["kernel_retention"] < 1 and card["extraction"]["rule"].startswith("union")
    assert all(torch.equal(again.masks[k], masks[k].bool()) for k in masks)


def test_save_overwrites_atomically(tmp_path):
    _, _, mod = _module()
    mod.save(tmp_path / "m")
    mod.metrics = {"accuracy": 0.75}
    mod.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "card.json").read_text())["metrics"]["accuracy"] == 0.75
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_truncated_and_flipped_files_raise(tmp_path):
    _, _, mod = _module()
    folder = mod.save(tmp_path / "m")
    weights = folder / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted or was changed"):
        Module.load(folder)
    flipped = bytearray(data)
    flipped[len(data) - 10] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=str(weights)):
        Module.load(folder)
    (folder / "card.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Module.load(folder)
    with pytest.raises(CheckpointError, match="not a module folder"):
        Module.load(tmp_path / "missing")


def test_truncated_safetensors_without_hash(tmp_path):
    path = tmp_path / "w.safetensors"
    save_tensors(path, {"a": torch.ones(100)})
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_tensors(path)


def test_wrong_model_raises(tmp_path):
    model, _, mod = _module()
    folder = mod.save(tmp_path / "m")
    with pytest.raises(ModuleMismatchError, match="other weights"):
        Module.load(folder, model=tiny_model("resnet20", seed=5))
    with pytest.raises(ModuleMismatchError, match="first difference: 'arch'"):
        Module.load(folder, model=tiny_model("vgg16"))
    other_classes = tiny_model("resnet20", num_classes=7)
    with pytest.raises(ModuleMismatchError, match="num_classes"):
        Module.load(folder, model=other_classes)


def test_unsafe_pickle_is_refused(tmp_path):
    import datetime

    path = tmp_path / "x.pt"
    torch.save({"obj": datetime.datetime(2026, 1, 1)}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        safe_torch_load(path)
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(safe_torch_load(tmp_path / "ok.pt")["w"], torch.ones(2))


def test_aligned_module_round_trip(tmp_path):
    model = tiny_model("resnet20")
    masks = random_masks(find_maskable_layers(model), 0.5, seed=1)
    mod = Module.create(model, masks, {"classes": [0]}, {"type": "select", "classes": [0]}, align=4)
    again = Module.load(mod.save(tmp_path / "m"), model=model)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(again(x), mod(x)) and again.extraction["align"] == 4
