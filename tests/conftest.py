"""Shared fixtures: tiny synthetic data, tiny models, and no network."""
from __future__ import annotations

import socket

import pytest
import torch

from modtools import data as D
from modtools.models import build_model

ZOO = ["simcnn", "simcnn_cnnsplitter", "rescnn", "rescnn_cnnsplitter", "incecnn", "vgg16", "resnet18", "resnet20"]
ALL_ARCHS = ZOO + ["tv:resnet18"]


def pytest_collection_modifyitems(config, items):
    """Without ``-m zoo``, the zoo test runs one torchvision model per family (``compat.REPRESENTATIVE``)."""
    if "zoo" in (config.getoption("markexpr") or ""):
        return
    from modtools.compat import REPRESENTATIVE

    keep, drop = [], []
    for item in items:
        name = getattr(getattr(item, "callspec", None), "params", {}).get("name")
        (drop if item.get_closest_marker("zoo") and name not in REPRESENTATIVE else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Tests never reach the network: connecting a socket to a non-loopback address fails."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1")) \
                and self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"network access blocked in tests: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session")
def tiny_data():
    """A 4-class, 16×16, 1-channel synthetic set: train and test."""
    return D.synthetic(4, 24, 16, 1, seed=0), D.synthetic(4, 12, 16, 1, seed=0, split="test")


def tiny_model(arch: str, in_channels: int = 3, num_classes: int = 5, seed: int = 0) -> torch.nn.Module:
    """A narrow model with randomised BN statistics, in eval mode."""
    torch.manual_seed(seed)
    width = 1.0 if arch.startswith("tv:") else (0.25 if arch == "resnet20" else 0.125)
    model = build_model(arch, in_channels=in_channels, num_classes=num_classes, width=width)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()
