"""Maskable layers of any CNN: BN pairing, followers, grouped convs, exclusions, typed errors, own models."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

from modtools import baseline as B
from modtools import data as D
from modtools import gradsplitter as G
from modtools.errors import UnknownNameError, UnsupportedModelError
from modtools.extract import extract, extraction_error
from modtools.masks import apply_masks, batched_forward, find_maskable_layers, random_masks
from modtools.metrics import count_macs
from modtools.module import Module


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters (a zero channel then becomes a non-zero constant)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


def assert_exact_and_smaller(model, masks, shape=(1, 16, 16)):
    small, report = extract(model, masks, image_size=shape[-1])
    assert extraction_error(model, masks, small, torch.rand(3, *shape)) <= 1e-5
    assert count_macs(small, shape)["macs"] < count_macs(model, shape)["macs"]
    return small, report


class SeparableCNN(nn.Module):
    """conv → BN → ReLU → depthwise conv → BN → ReLU → pointwise conv → BN → GAP → linear."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(8, 12, 1), nn.BatchNorm2d(12), nn.ReLU())
        self.fc = nn.Linear(12, classes)

    def forward(self, x):
        return self.fc(self.pw(self.dw(self.stem(x))).mean((2, 3)))


class GroupedCNN(nn.Module):
    """A ResNeXt-like block: 1×1 conv, grouped 3×3 conv (4 groups), 1×1 conv, plus the identity."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.stem(x)
        return self.fc(torch.relu(self.c(self.b(self.a(x))) + x).mean((2, 3)))


class MyCNN(nn.Module):
    """A user's own CNN (not a zoo or torchvision name)."""

    def __init__(self, classes: int = 4, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1),
                                      nn.BatchNorm2d(2 * width), nn.ReLU())
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def test_densenet_pairs_each_conv_with_its_own_bn_and_extracts_exactly():
    model = trained_like(torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16,
                                                     bn_size=2, num_classes=3))
    model.features.conv0 = nn.Conv2d(1, 16, 7, 2, 3, bias=False)
    layers = find_maskable_layers(model, torch.zeros(1, 1, 32, 32))
    for layer in layers:
        assert layer.norm is None or layer.norm.num_features == layer.out_channels
    by_name = {layer.name: layer for layer in layers}
    first = by_name["features.denseblock1.denselayer1.conv1"]
    assert first.norm_name == "features.denseblock1.denselayer1.norm2"   # the BN that reads conv1's output
    assert by_name["features.denseblock1.denselayer1.conv2"].norm is None  # its output is concatenated first
    masks = random_masks(layers, 0.5, seed=3)
    small, report = assert_exact_and_smaller(model, masks, (1, 32, 32))
    assert report.kept_by_rule["bn_after_merge"] > 0   # concatenated channels read by a later BN stay


def test_conv_classifier_is_excluded_and_said_so():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 5, 1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    layers = find_maskable_layers(model, torch.zeros(1, 1, 16, 16))
    assert [layer.name for layer in layers] == ["0"]
    assert "output" in layers.excluded["3"]
    with pytest.raises(UnknownNameError, match="output"):
        extract(model, {"3": torch.ones(5)}, image_size=16)
    small, _ = assert_exact_and_smaller(model, random_masks(layers, 0.5))
    assert small(torch.rand(2, 1, 16, 16)).shape == (2, 5)   # every class is still there


def test_depthwise_conv_follows_the_conv_that_feeds_it():
    model = trained_like(SeparableCNN())
    layers = find_maskable_layers(model, torch.zeros(1, 1, 16, 16))
    assert [layer.name for layer in layers] == ["stem.0", "pw.0"]
    assert layers.followers == {"dw.0": "stem.0"} and layers[0].followers[0].norm_name == "dw.1"
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1.0])
    x = torch.rand(2, 1, 16, 16)
    seen = {}
    hook = model.dw[2].register_forward_hook(lambda m, i, o: seen.setdefault("dw", o))  # after the gate
    with torch.no_grad(), apply_masks(model, {"stem.0": mask}, layers):
        model(x)
    hook.remove()
    assert (seen["dw"][:, mask == 0] == 0).all()   # the follower's channels are gated too
    small, report = assert_exact_and_smaller(model, {"stem.0": mask, "pw.0": torch.ones(12)})
    assert small.dw[0].out_channels == small.dw[0].groups == 5
    stacked = {"stem.0": torch.stack([mask, torch.ones(8)]), "pw.0": torch.ones(2, 12)}
    with torch.no_grad():
        both = batched_forward(model, x, stacked, layers, share_first=True)
        torch.testing.assert_close(both[0], small(x), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(both[1], model(x), atol=1e-5, rtol=1e-4)


def test_grouped_conv_loses_the_same_number_of_channels_per_group():
    model = trained_like(GroupedCNN())
    layers = find_maskable_layers(model, torch.zeros(1, 1, 16, 16))
    assert {layer.name: layer.groups for layer in layers}["b.0"] == 4
    masks = random_masks(layers, 0.5, seed=1)
    masks["b.0"] = torch.tensor([0, 0, 0, 1] * 4, dtype=torch.float)  # one kernel per group
    masks["a.0"] = torch.tensor([1, 0, 0, 0] * 2 + [0, 0, 0, 0] * 2, dtype=torch.float)
    small, report = assert_exact_and_smaller(model, masks)
    b = small.b[0]
    assert b.groups == 4 and b.out_channels % 4 == 0 and b.in_channels % 4 == 0 and b.out_channels == 4
    assert report.kept_by_rule["grouped_even"] > 0   # groups 3 and 4 keep a zeroed input channel


def test_channel_shuffle_gives_a_typed_error():
    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            x = self.a(x)
            n, c, h, w = x.shape
            x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
            return self.fc(self.b(x).mean((2, 3)))

    with pytest.raises(UnsupportedModelError, match="shuffle"):
        find_maskable_layers(Shuffle(), torch.zeros(1, 1, 16, 16))


def test_models_that_are_not_cnns_give_typed_errors():
    with pytest.raises(UnsupportedModelError, match="no Conv2d"):
        find_maskable_layers(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)))

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(1, 8, 4, 4), nn.BatchNorm2d(8))
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            t = self.conv(x).flatten(2).transpose(1, 2)
            return self.fc(self.attn(t, t, t)[0].mean(1))

    with pytest.raises(UnsupportedModelError, match="attention"):
        find_maskable_layers(Attention(), torch.zeros(1, 1, 16, 16))

    class LayerNormed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3)
            self.norm = nn.GroupNorm(2, 8)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(self.norm(self.conv(x)).mean((2, 3)))

    with pytest.raises(UnsupportedModelError, match="GroupNorm"):
        find_maskable_layers(LayerNormed(), torch.zeros(1, 1, 16, 16))


def test_a_model_that_fails_on_the_example_input_says_so():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 2))
    with pytest.raises(UnsupportedModelError, match=r"example input of shape \(1, 3, 32, 32\)"):
        find_maskable_layers(model)


def test_module_of_a_users_own_model_round_trip(tmp_path, tiny_data):
    torch.manual_seed(0)
    model = trained_like(MyCNN())
    train, test = tiny_data
    module = B.baseline_module(model, train, [1, 2], B.BaselineConfig(keep_fraction=0.5), device="cpu")
    assert module.source["arch"] == f"python:{__name__}:MyCNN" and "init_args" not in module.source["config"]
    folder = module.save(tmp_path / "mine")
    with pytest.raises(UnknownNameError, match="model=") as info:
        Module.load(folder)
    assert "constructor arguments were not recorded" in str(info.value)
    again = Module.load(folder, model=model)
    x = torch.rand(3, 1, 16, 16)
    assert torch.equal(again(x), module(x))
    assert again.extraction["removed"] == module.extraction["removed"]
    other = trained_like(MyCNN(), seed=5)
    with torch.no_grad():
        other.fc.bias.add_(1)
    from modtools.errors import ModuleMismatchError
    with pytest.raises(ModuleMismatchError, match="SHA-256"):
        Module.load(folder, model=other)
    # with its constructor arguments recorded, a module rebuilds without the instance
    model.modtools_init_args = {"classes": 4, "width": 8}
    recorded = B.baseline_module(model, train, [0], B.BaselineConfig(keep_fraction=0.5), device="cpu")
    alone = Module.load(recorded.save(tmp_path / "recorded"))
    assert torch.equal(alone(x), recorded(x))


def test_gradsplitter_runs_on_a_users_own_model(tiny_data):
    train, _ = tiny_data
    model = trained_like(SeparableCNN(classes=4))
    tr, va = D.train_val_split(train, 0.25, seed=0)
    cfg = G.GradSplitterConfig(first_head_epochs=1, cycle_epochs=1, cycle_mask=1, cycle_head=0, batch_size=16)
    result = G.decompose(model, tr, va, cfg, device="cpu")
    assert set(result.masks) == {"stem.0", "pw.0"}
    module = G.to_module(model, result, 1, tr)
    assert module.source["arch"].endswith(":SeparableCNN") and module.extraction["layers"]["followers"]


def test_mwt_gates_a_depthwise_separable_network():
    from modtools import mwt as W
    from modtools.models import build_model

    torch.manual_seed(0)
    gated = W.GatedModel(trained_like(build_model("tv:mobilenet_v3_small", in_channels=1, num_classes=4)))
    layers = find_maskable_layers(gated.plain_backbone(), torch.zeros(1, 1, 32, 32))
    assert [layer.name for layer in gated.layers] == [layer.name for layer in layers][1:]
    assert any(layer.followers for layer in gated.layers)
    gated.train()
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    logits = gated(x)
    extra, parts = W.mwt_loss()(gated, x, y, logits)
    (torch.nn.functional.cross_entropy(logits, y) + extra).backward()
    assert all(p.grad is not None for p in gated.gates.parameters())
    follower_layer = next(layer for layer in gated.layers if layer.followers)
    seen = {}
    hook = follower_layer.followers[0].output_module.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    gated.eval()
    with torch.no_grad():
        gated.gates.nets[follower_layer.name.replace(".", "__")].fc2.bias.fill_(-100.0)   # close every gate
        gated(x)
    hook.remove()
    assert (gated.gates.last[follower_layer.name] == 0).all()
    assert (seen["out"] == 0).all()   # the closed gates also zero the follower's output (after its BN)
    backbone = gated.plain_backbone()
    masks = random_masks(gated.layers, 0.5, seed=2)
    small, _ = extract(backbone, masks)
    assert extraction_error(backbone, masks, small, torch.rand(2, 1, 32, 32)) <= 1e-5
