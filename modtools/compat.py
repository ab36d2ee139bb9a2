"""Which CNNs go through modtools end to end: a check per torchvision classifier, and its table.

:func:`check_torchvision` takes one classifier of ``torchvision.models.list_models()`` at 1 input
channel and 4 classes, with trained-like (random) BN statistics, through the whole path: find the
maskable layers, extract a module under random kernel masks (exact, strictly fewer MACs), run a
two-epoch GradSplitter search on synthetic data, save one of its modules and load it back
(bit-identical outputs). Random BN statistics can make outputs huge (Inception-v3's reach 1e9),
so exactness is measured relative to the largest output magnitude (at least 1). A model the mechanism cannot take apart ends in the typed
:class:`~modtools.errors.UnsupportedModelError`, whose message is recorded. ``python -m
modtools.compat`` writes the table for every classifier (``runs/bench/zoo.json`` and ``zoo.md``).

Inputs are 32×32, except for the models that cannot take so small an input (:data:`MIN_INPUT`).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from . import data as D
from .errors import UnsupportedModelError

#: The input size a model needs at least (alexnet's and inception's pools, MaxViT's and ViT's windows).
MIN_INPUT = {"alexnet": 64, "inception_v3": 75, "maxvit_t": 224}

#: One model per family: what CI runs (``pytest``); ``pytest -m zoo`` runs every classifier.
REPRESENTATIVE = ["alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "googlenet", "inception_v3",
                  "maxvit_t", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf",
                  "regnet_y_400mf", "resnet18", "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_1",
                  "swin_t", "vgg11_bn", "vit_b_32", "efficientnet_v2_s"]

#: Families that modtools does not take apart, and the word their error names.
UNSUPPORTED = {"convnext": "LayerNorm", "shufflenet": "shuffles channels", "swin": "attention",
               "vit": "attention", "maxvit": "attention"}


def family(name: str) -> str:
    """The family of a torchvision classifier name (``resnext50_32x4d`` → ``resnext``)."""
    if name.startswith("wide_resnet"):
        return "resnet"
    for prefix in ("resnext", "regnet_x", "regnet_y", "efficientnet_v2", "mobilenet_v2",
                   "mobilenet_v3", "shufflenet", "squeezenet", "convnext", "densenet", "efficientnet",
                   "googlenet", "inception", "maxvit", "mnasnet", "alexnet", "resnet", "vgg", "vit", "swin"):
        if name.startswith(prefix):
            return prefix
    return name


def classifiers() -> list[str]:
    """Every classification model of torchvision."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters, as a trained model would have (eval mode)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    return model.eval()


def check_torchvision(name: str, seed: int = 0, keep: float = 0.5, search_epochs: int = 2,
                      classes: int = 4) -> dict:
    """Take ``tv:<name>`` through the whole path (see the module docstring); returns one table row.

    ``status`` is ``"ok"`` or ``"unsupported"`` (with the typed error's message as ``reason``).
    Anything else raises: a failure of the toolkit is a bug, not a table entry.
    """
    from . import gradsplitter as G
    from .extract import extract, extraction_error
    from .masks import find_maskable_layers, random_masks
    from .metrics import count_macs
    from .models import build_model
    from .module import Module

    t0 = time.perf_counter()
    size = MIN_INPUT.get(name, 32)
    row = {"model": name, "family": family(name), "input": [1, size, size]}
    torch.manual_seed(seed)
    model = trained_like(build_model(f"tv:{name}", in_channels=1, num_classes=classes), seed)
    shape = (1, size, size)
    try:
        layers = find_maskable_layers(model, torch.zeros(1, *shape))
    except UnsupportedModelError as exc:
        row.update(status="unsupported", reason=str(exc), seconds=time.perf_counter() - t0)
        return row
    masks = random_masks(layers, keep, seed=seed)
    small, report = extract(model, masks, image_size=size)
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(seed))
    full, cut = count_macs(model, shape)["macs"], count_macs(small, shape)["macs"]
    with torch.no_grad():
        scale = max(1.0, float(model(x).abs().max()))
    diff = extraction_error(model, masks, small, x)
    row.update(layers=len(layers), followers=len(layers.followers), excluded=len(layers.excluded),
               max_abs_diff=diff, relative_diff=diff / scale, macs_ratio=cut / full, kept_by_rule=report.kept_by_rule)
    train = D.synthetic(classes, 6, size, 1, seed=seed)
    val = D.synthetic(classes, 3, size, 1, seed=seed, split="test")
    cfg = G.GradSplitterConfig(first_head_epochs=1, cycle_epochs=max(0, search_epochs - 1), cycle_mask=1,
                               cycle_head=0, batch_size=12, seed=seed)
    result = G.decompose(model, train, val, cfg, device="cpu")
    module = G.to_module(model, result, 0, train)
    with tempfile.TemporaryDirectory() as tmp:
        again = Module.load(module.save(Path(tmp) / "module"), model=model)
    with torch.no_grad():
        row["module_roundtrip"] = bool(torch.equal(again(x), module(x)))
    row["module_macs_ratio"] = count_macs(module.network, shape)["macs"] / full
    row.update(status="ok", seconds=time.perf_counter() - t0)
    return row


def markdown_table(rows: list[dict]) -> str:
    """The README's table: one line per family (the first model checked of it)."""
    lines = ["| family | model | status | MACs kept (random 50 % masks) | seconds |", "|---|---|---|---|---|"]
    seen = set()
    for r in rows:
        if r["family"] in seen:
            continue
        seen.add(r["family"])
        if r["status"] == "ok":
            status = f"ok: exact (max diff {r['relative_diff']:.0e} of the output scale), module saved and loaded"
            macs = f"{r['macs_ratio']:.2f}"
        else:
            status = f"UnsupportedModelError ({UNSUPPORTED.get(r['family'], r['reason'][:60])})"
            macs = "—"
        lines.append(f"| {r['family']} | {r['model']} | {status} | {macs} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from .io import atomic_write_bytes, atomic_write_json

    parser = argparse.ArgumentParser(prog="python -m modtools.compat", description=__doc__)
    parser.add_argument("--out", default="runs/bench", help="output folder")
    parser.add_argument("--models", nargs="*", default=None, help="torchvision names (default: all classifiers)")
    parser.add_argument("--representative", action="store_true", help="one model per family only")
    args = parser.parse_args(argv)
    names = args.models or (REPRESENTATIVE if args.representative else classifiers())
    rows = []
    for name in names:
        rows.append(check_torchvision(name))
        r = rows[-1]
        print(f"{name:22s} {r['status']:11s} {r.get('macs_ratio', float('nan')):.2f} {r['seconds']:6.1f} s", flush=True)
    out = Path(args.out)
    atomic_write_json(out / "zoo.json", {"benchmark": "zoo", "rows": rows})
    atomic_write_bytes(out / "zoo.md", markdown_table(rows).encode())
    print(f"wrote {out / 'zoo.json'} and {out / 'zoo.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
