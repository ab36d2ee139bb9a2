"""The model zoo: the CNNs of the four approaches, a registry by name, and torchvision classifiers.

Every zoo model takes ``in_channels``, ``num_classes`` and a ``width`` multiplier, and accepts
28×28 and 32×32 inputs (pools use ``ceil_mode`` so 28×28 inputs reach 1×1 like 32×32 ones; at
32×32 this is exactly the published pooling). :func:`build_model` records the name and keyword
arguments on the model (``model.modtools_config``) so modules can rebuild the architecture.

* ``simcnn``: GradSplitter's SimCNN (13 conv+BN, fc 4096-4096-N); ``batch_norm=False,
  fc_hidden=512, dropout=0.5`` gives CNNSplitter's variant (registered as ``simcnn_cnnsplitter``).
* ``rescnn``: 12 conv, residual adds after conv_3/7/11 (GradSplitter: with BN; CNNSplitter:
  ``rescnn_cnnsplitter``, no BN, dropout 0.4).
* ``incecnn``: GradSplitter's InceCNN with three 1×1/3×3/5×5 inception blocks.
* ``vgg16``: CIFAR VGG16-BN (cfg D, conv bias, classifier 512-512-N), as MwT and SeaM use it.
* ``resnet18``: CIFAR ResNet-18 (3×3 stem, no max-pool), as MwT uses it.
* ``resnet20``: CIFAR ResNet-20 (16/32/64, 1×1 conv+BN shortcuts), as SeaM and GradSplitter's fork.
* ``tv:<name>``: any torchvision classifier (e.g. ``tv:resnet18``), first conv adapted to
  ``in_channels``, random initialisation (no downloads).
"""
from __future__ import annotations

import copy
from typing import Callable

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UnknownNameError

MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, **defaults):
    """Register a builder under ``name`` (with optional default keyword arguments)."""
    def wrap(builder):
        MODEL_REGISTRY[name] = (lambda **kw: builder(**{**defaults, **kw}))
        return builder
    return wrap


def _w(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def _conv_block(cin: int, cout: int, k: int, batch_norm: bool, bias: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=(k - 1) // 2, bias=bias)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    return nn.Sequential(*layers)


def _pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 2, 2, ceil_mode=True)


@register_model("simcnn")
@register_model("simcnn_cnnsplitter", batch_norm=False, fc_hidden=512)
class SimCNN(nn.Module):
    """VGG-16-like: 13 conv (+BN) layers ``conv_0..conv_12``, then ``fc_13``, ``fc_14``, ``fc_15``."""

    WIDTHS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    POOL_AFTER = {1, 3, 6, 9, 12}

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
                 batch_norm: bool = True, fc_hidden: int = 4096, dropout: float = 0.5):
        super().__init__()
        widths = [_w(c, width) for c in self.WIDTHS]
        cin = in_channels
        for i, cout in enumerate(widths):
            setattr(self, f"conv_{i}", _conv_block(cin, cout, 3, batch_norm))
            cin = cout
        hidden = _w(fc_hidden, width)
        self.dropout = nn.Dropout(dropout)
        self.fc_13 = nn.Linear(cin, hidden)
        self.fc_14 = nn.Linear(hidden, hidden)
        self.fc_15 = nn.Linear(hidden, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, (2.0 / (9 * m.out_channels)) ** 0.5)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(13):
            x = F.relu(getattr(self, f"conv_{i}")(x))
            if i in self.POOL_AFTER:
                x = _pool(x)
        x = self.dropout(torch.flatten(x, 1))
        x = self.dropout(F.relu(self.fc_13(x)))
        x = F.relu(self.fc_14(x))
        return self.fc_15(x)


@register_model("rescnn")
@register_model("rescnn_cnnsplitter", batch_norm=False, dropout=0.4)
class ResCNN(nn.Module):
    """12 conv layers; the outputs of conv_1, conv_5, conv_9 are added after conv_3, conv_7, conv_11."""

    CONFIG = [(64, False), (128, True), (128, False), (128, False), (256, True), (512, True),
              (512, False), (512, False), (512, True), (512, True), (512, False), (512, False)]

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
                 batch_norm: bool = True, dropout: float = 0.5):
        super().__init__()
        cin = in_channels
        self.pools = []
        for i, (cout, pool) in enumerate(self.CONFIG):
            cout = _w(cout, width)
            setattr(self, f"conv_{i}", _conv_block(cin, cout, 3, batch_norm))
            self.pools.append(pool)
            cin = cout
        self.dropout = nn.Dropout(dropout)
        self.fc_12 = nn.Linear(cin, num_classes)

    def _block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(getattr(self, f"conv_{i}")(x))
        return _pool(x) if self.pools[i] else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._block(1, self._block(0, x))
        r = out
        out = self._block(3, self._block(2, out)) + r
        out = self._block(5, self._block(4, out))
        r = out
        out = self._block(7, self._block(6, out)) + r
        out = self._block(9, self._block(8, out))
        r = out
        out = self._block(11, self._block(10, out)) + r
        return self.fc_12(self.dropout(torch.flatten(out, 1)))


@register_model("incecnn")
class InceCNN(nn.Module):
    """Three plain convs, then three inception-like blocks of parallel 1×1/3×3/5×5 convs (concatenated)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
                 batch_norm: bool = True, dropout: float = 0.4):
        super().__init__()
        w = lambda c: _w(c, width)  # noqa: E731
        self.conv_0 = _conv_block(in_channels, w(64), 3, batch_norm)
        self.conv_1 = _conv_block(w(64), w(128), 3, batch_norm)
        self.conv_2 = _conv_block(w(128), w(256), 3, batch_norm)
        branches = [(w(256), w(256), w(64)), (w(512), w(512), w(64)), (w(512), w(512), w(64))]
        cin = w(256)
        for b, (c1, c3, c5) in enumerate(branches):
            base = 3 + 3 * b
            setattr(self, f"conv_{base}", _conv_block(cin, c1, 1, batch_norm))
            setattr(self, f"conv_{base + 1}", _conv_block(cin, c3, 3, batch_norm))
            setattr(self, f"conv_{base + 2}", _conv_block(cin, c5, 5, batch_norm))
            cin = c1 + c3 + c5
        self.dropout = nn.Dropout(dropout)
        self.fc_12 = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv_0(x))
        x = F.relu(self.conv_1(x))
        x = _pool(F.relu(self.conv_2(x)))
        for b in range(3):
            base = 3 + 3 * b
            x = torch.cat([F.relu(getattr(self, f"conv_{base + j}")(x)) for j in range(3)], 1)
            if b < 2:
                x = _pool(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc_12(self.dropout(x))


@register_model("vgg16")
class VGG16(nn.Module):
    """CIFAR VGG16-BN (cfg D): ``features`` of conv(bias)+BN+ReLU and max-pools, classifier 512-512-N."""

    CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
                 dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                cout = _w(v, width)
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        hidden = _w(512, width)
        self.classifier = nn.Sequential(
            nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN, plus the identity or a 1×1 conv+BN shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class CifarResNet(nn.Module):
    """A CIFAR-style ResNet: 3×3 stem (stride 1, no max-pool), stages of BasicBlocks, GAP, fc."""

    def __init__(self, widths: list[int], blocks: list[int], in_channels: int = 3, num_classes: int = 10,
                 width: float = 1.0):
        super().__init__()
        widths = [_w(c, width) for c in widths]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for s, (cout, n) in enumerate(zip(widths, blocks)):
            stage = []
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                stage.append(BasicBlock(cin, cout, stride))
                cin = cout
            setattr(self, f"layer{s + 1}", nn.Sequential(*stage))
        self.num_stages = len(widths)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for s in range(self.num_stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model("resnet18")
def resnet18(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-18: stages 64/128/256/512 with 2 BasicBlocks each."""
    return CifarResNet([64, 128, 256, 512], [2, 2, 2, 2], in_channels, num_classes, width)


@register_model("resnet20")
def resnet20(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-20: stages 16/32/64 with 3 BasicBlocks each."""
    return CifarResNet([16, 32, 64], [3, 3, 3], in_channels, num_classes, width)


def _torchvision_model(name: str, in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
                       **kwargs) -> nn.Module:
    import torchvision
    if name in ("googlenet", "inception_v3"):  # plain classifiers: no auxiliary heads, no init warning
        kwargs = {"aux_logits": False, "init_weights": True, **kwargs}
    if width != 1.0:
        raise ValueError(f"torchvision model {name!r} has no width multiplier; got width={width}, allowed: 1.0")
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except ValueError as exc:
        raise UnknownNameError(f"unknown torchvision model {name!r}: {exc}") from None
    if in_channels != 3:
        for parent in model.modules():
            for child_name, child in parent.named_children():
                if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                    new = nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride,
                                    child.padding, child.dilation, child.groups, child.bias is not None)
                    setattr(parent, child_name, new)
                    break
            else:
                continue
            break
    return model


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """``(x − mean) / std`` per channel: lets a model trained on normalised inputs take ``[0, 1]`` images."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def pretrained(name: str, weights: str = "IMAGENET1K_V1", download: bool | None = None) -> nn.Module:
    """A torchvision classifier (``"tv:resnet18"`` or ``"resnet18"``) with its published ImageNet
    weights, ImageNet normalisation inside, so that it takes ``[0, 1]`` images like every zoo model.

    The weights are read from torch's hub cache (``$TORCH_HOME/hub/checkpoints``). They are downloaded
    only when ``download=True`` or ``MODTOOLS_DOWNLOAD=1``; otherwise a missing file raises
    :class:`~modtools.errors.WeightsNotFoundError` naming the file and where to get it.
    """
    import os

    import torchvision
    from torch.hub import get_dir

    from .data import downloads_allowed
    from .errors import WeightsNotFoundError

    tv_name = name[3:] if name.startswith("tv:") else name
    try:
        enum = torchvision.models.get_model_weights(tv_name)
    except (ValueError, KeyError) as exc:
        raise UnknownNameError(f"no torchvision weights for model {name!r}: {exc}") from None
    try:
        chosen = enum[weights] if isinstance(weights, str) else enum(weights)
    except (KeyError, ValueError):
        raise UnknownNameError(f"unknown weights {weights!r} for {tv_name}; available: "
                               f"{', '.join(w.name for w in enum)}") from None
    path = Path(get_dir()) / "checkpoints" / os.path.basename(chosen.url)
    if not path.is_file() and not downloads_allowed(download):
        raise WeightsNotFoundError(
            f"the {chosen} weights of {tv_name} are not at {path}. No download was attempted. Put the file "
            f"{chosen.url} there (or set TORCH_HOME to a folder whose hub/checkpoints has it), or allow a "
            "download with download=True / MODTOOLS_DOWNLOAD=1.")
    net = torchvision.models.get_model(tv_name, weights=None)
    net.load_state_dict(chosen.get_state_dict(progress=False, check_hash=True))
    return nn.Sequential(Normalize(), net)


def list_models() -> list[str]:
    """Names of the zoo architectures (torchvision ones are built as ``tv:<name>``)."""
    return sorted(MODEL_REGISTRY)


def build_model(name: str, **kwargs) -> nn.Module:
    """Build an architecture by name with random weights.

    Args:
        name: a zoo name from :func:`list_models` or ``"tv:<torchvision name>"``.
        **kwargs: ``in_channels``, ``num_classes``, ``width`` and architecture options.
    """
    if name.startswith("tv:"):
        model = _torchvision_model(name[3:], **kwargs)
    elif name in MODEL_REGISTRY:
        model = MODEL_REGISTRY[name](**kwargs)
    else:
        raise UnknownNameError(f"unknown architecture {name!r}; available: {', '.join(list_models())} "
                               "or 'tv:<torchvision model name>'")
    model.modtools_config = {"arch": name, **kwargs}
    return model


PYTHON_PREFIX = "python:"


def build_from_config(config: dict) -> nn.Module:
    """Rebuild an architecture from the ``{"arch": name, **kwargs}`` that :func:`architecture` returns.

    A user's own class (``"arch": "python:package.module:Class"``) is imported and called with its
    recorded ``init_args``; when none were recorded it cannot be rebuilt, and
    :class:`~modtools.errors.UnknownNameError` says to pass the model instance instead.
    """
    arch = config["arch"]
    if arch.startswith(PYTHON_PREFIX):
        init_args = config.get("init_args")
        if init_args is None:
            raise UnknownNameError(
                f"architecture {arch!r} is a model class of your own whose constructor arguments were not recorded "
                "(set model.modtools_init_args = {...} before making modules to record them); pass the source "
                "model instance, e.g. Module.load(folder, model=YourCNN(...))")
        import importlib

        module_name, _, qualname = arch[len(PYTHON_PREFIX):].partition(":")
        try:
            obj = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise UnknownNameError(f"cannot import the model class of architecture {arch!r} ({exc}); pass the "
                                   "source model instance to Module.load(folder, model=...)") from None
        model = obj(**init_args)
        model.modtools_init_args = dict(init_args)
        return model
    kwargs = {k: v for k, v in config.items() if k != "arch"}
    return build_model(arch, **kwargs)


def architecture(model: nn.Module) -> dict:
    """What can be recorded of a model's architecture: ``{"arch": name, **kwargs}`` for a model built by
    :func:`build_model`; for any other ``nn.Module``, its class's import path
    (``"python:module:Class"``) and, when the model carries ``modtools_init_args``, its constructor
    arguments."""
    cfg = getattr(model, "modtools_config", None)
    if cfg is not None:
        return copy.deepcopy(cfg)
    cls = type(model)
    out = {"arch": f"{PYTHON_PREFIX}{cls.__module__}:{cls.__qualname__}"}
    init_args = getattr(model, "modtools_init_args", None)
    if init_args is not None:
        out["init_args"] = copy.deepcopy(dict(init_args))
    return out


def model_config(model: nn.Module) -> dict:
    """The ``{"arch": name, **kwargs}`` a zoo model was built with (raises if it was not built here)."""
    cfg = getattr(model, "modtools_config", None)
    if cfg is None:
        raise UnknownNameError(f"{type(model).__name__} was not built with modtools.build_model; "
                               "its architecture cannot be recorded")
    return copy.deepcopy(cfg)
