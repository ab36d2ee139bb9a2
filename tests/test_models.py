"""The zoo: shapes, no NaN, gradients reach every parameter, registry errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modtools.errors import UnknownNameError
from modtools.models import build_from_config, build_model, list_models, model_config

from conftest import ALL_ARCHS, ZOO, tiny_model


def test_registry_lists_the_zoo():
    assert set(ZOO) <= set(list_models())


@pytest.mark.parametrize("arch", ALL_ARCHS)
@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3)])
def test_forward_backward(arch, size, channels):
    model = tiny_model(arch, in_channels=channels, num_classes=7).train()
    x = torch.rand(2, channels, size, size)
    y = model(x)
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()
    F.cross_entropy(y, torch.tensor([0, 3])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


def test_width_multiplier_and_config_round_trip():
    small = build_model("vgg16", num_classes=3, width=0.25)
    big = build_model("vgg16", num_classes=3, width=0.5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in big.parameters())
    again = build_from_config(model_config(small))
    assert [p.shape for p in again.parameters()] == [p.shape for p in small.parameters()]


def test_spec_kernel_counts():
    convs = lambda m: sum(c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d))  # noqa: E731
    assert convs(build_model("simcnn")) == 4224
    assert convs(build_model("rescnn")) == 4288
    assert convs(build_model("incecnn")) == 3200


def test_unknown_architecture():
    with pytest.raises(UnknownNameError, match="nope.*available"):
        build_model("nope")
    with pytest.raises(ValueError, match="width"):
        build_model("tv:resnet18", width=0.5)
