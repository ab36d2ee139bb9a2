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


def test_pretrained_reads_the_hub_cache_and_normalises_inside(tmp_path, monkeypatch):
    import torchvision

    from modtools.errors import UnknownNameError, WeightsNotFoundError
    from modtools.models import IMAGENET_MEAN, IMAGENET_STD, pretrained

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("MODTOOLS_DOWNLOAD", raising=False)
    with pytest.raises(WeightsNotFoundError, match=r"No download was attempted.*resnet18-f37072fd\.pth") as err:
        pretrained("tv:resnet18")
    assert str(tmp_path / "hub" / "checkpoints") in str(err.value)
    with pytest.raises(UnknownNameError, match="available: IMAGENET1K_V1"):
        pretrained("tv:resnet18", weights="IMAGENET9K")
    with pytest.raises(UnknownNameError, match="no torchvision weights"):
        pretrained("tv:not_a_model")
    # a stand-in for the published file, where torch's hub cache keeps it
    torch.manual_seed(0)
    reference = torchvision.models.resnet18().eval()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model = pretrained("resnet18").eval()
    x = torch.rand(2, 3, 64, 64)
    expected = reference((x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5)
