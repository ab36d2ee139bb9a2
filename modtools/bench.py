"""Benchmarks (``make bench`` / ``python -m modtools.bench``): results go to ``runs/bench/``.

``gradsplitter``: on a SimCNN (¼ width) trained on Fashion-MNIST, batch 64: the batched N-module
search step against N sequential single-module steps; the whole search with the ``paper`` schedule's
shape on a fifth of its cycles, with head-phase caching (``head_phase="cached"``) against head
phases that backpropagate through the CNN as the original code does (target ≤ 0.75× the wall
time); the toolkit's ``fast`` schedule
against the paper's: the steps it needs to reach the paper's selected composed validation accuracy
(within 0.5 point) with no more kernels (target ≤ 1/3 of the paper's steps to its selection); the
peak memory of each run. A figure of accuracy and KRR against steps goes next to the JSON.

``mwt``: seconds per training step of MwT's modular model against the standard model (same
architecture, batch and threads; target ratio ≤ 1.10), with BN and the gate in one step
(``modtools.gated_bn``, the default) and without (``step_ratio_unfused_bn``), the time and memory to
collect the gates of a whole training set, and the cohesion computation for 2,000 samples of one class.

``seam``: seconds per SeaM re-engineering step against a plain training step of the same model
(ResNet-20 and VGG16, batch 64; target ratio ≤ 1.0), and the latency of the original, the zeroed
dense and the extracted model for weight masks that keep 10 % of the weights.

``cnnsplitter``: candidates evaluated per second over whole generations of the search (SimCNN ¼,
200 images, population 100, 10 classes), with successive halving (a quarter of the images first,
half the population on all) and without, against the original's pipeline per candidate (a new
module built with random initialisation and the kept weights copied in, then the validation split
through a data loader; target ≥ 3×) and against our rebuild of each candidate on cached inputs
(stricter); the share of selected parents halving changes; the recorder's seconds per
generation and the peak memory.

``extract``: for each zoo architecture and random kernel masks keeping 25/50/75 % of each layer,
the MAC ratio, parameter ratio, measured CPU latency ratio at batch 64 and batch 1 (extracted /
full), and the max |masked − extracted| output difference. Target: at batch 64 the latency ratio
is within 1.25× of the MAC ratio.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

from .extract import extract, extraction_error
from .io import atomic_write_json
from .masks import find_maskable_layers, random_masks
from .metrics import MAC_UNIT, count_macs, measure_latency
from .models import build_model
from .precision import PRECISIONS, autocast, resolved
from .train import adam

ZOO = ["simcnn", "rescnn", "incecnn", "vgg16", "resnet18", "resnet20", "tv:resnet18"]
TARGET = 1.25


def bench_extract(archs=ZOO, fractions=(0.25, 0.5, 0.75), width: float = 1.0, image_size: int = 32,
                  repeats: int = 5, seed: int = 0, align: int = 8) -> dict:
    """Measure extraction's cost and speed ratios (see the module docstring)."""
    rows = []
    shape = (3, image_size, image_size)
    for arch in archs:
        torch.manual_seed(seed)
        w = 1.0 if arch.startswith("tv:") or arch == "resnet20" else width
        model = build_model(arch, num_classes=10, width=w).eval()
        layers = find_maskable_layers(model)
        full = count_macs(model, shape)
        lat_full = {b: measure_latency(model, shape, b, repeats=repeats)["seconds"] for b in (64, 1)}
        x = torch.rand(8, *shape)
        for keep in fractions:
            masks = random_masks(layers, keep, seed=seed)
            t0 = time.perf_counter()
            small, _ = extract(model, masks, image_size=image_size, align=align)
            seconds = time.perf_counter() - t0
            cut = count_macs(small, shape)
            lat = {b: measure_latency(small, shape, b, repeats=repeats)["seconds"] for b in (64, 1)}
            row = {"arch": arch, "width": w, "keep_fraction": keep, "macs_ratio": cut["macs"] / full["macs"],
                   "params_ratio": cut["params"] / full["params"],
                   "latency_ratio_b64": lat[64] / lat_full[64], "latency_ratio_b1": lat[1] / lat_full[1],
                   "latency_seconds_b64": lat[64], "latency_seconds_b1": lat[1],
                   "max_abs_diff": extraction_error(model, masks, small, x), "extract_seconds": seconds}
            row["latency_over_macs_b64"] = row["latency_ratio_b64"] / row["macs_ratio"]
            row["meets_target"] = row["latency_over_macs_b64"] <= TARGET
            rows.append(row)
            print(f"{arch:12s} keep {keep:.2f}: MACs {row['macs_ratio']:.2f}  params {row['params_ratio']:.2f}  "
                  f"latency b64 {row['latency_ratio_b64']:.2f}  b1 {row['latency_ratio_b1']:.2f}  "
                  f"diff {row['max_abs_diff']:.1e}", flush=True)
    return {"benchmark": "extract", "unit": MAC_UNIT, "align": align, "threads": torch.get_num_threads(), "image_size": image_size,
            "repeats": repeats, "target": f"latency_ratio_b64 <= {TARGET} x macs_ratio", "rows": rows,
            "share_meeting_target": sum(r["meets_target"] for r in rows) / len(rows)}


def _step_seconds(runs: list[tuple[nn.Module, object]], x, y, steps: int, precision: str = "fp32") -> list[float]:
    """Median seconds of a training step for each ``(model, extra_loss)``, steps interleaved so
    that drifts of the machine's speed affect every model alike; forward and loss in ``precision``."""
    import statistics

    import torch.nn.functional as F

    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, nesterov=True) for m, _ in runs]
    times: list[list[float]] = [[] for _ in runs]
    for i in range(steps + 2):
        for k, ((model, extra), opt) in enumerate(zip(runs, opts)):
            model.train()
            t0 = time.perf_counter()
            with autocast(precision, "cpu"):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                if extra is not None:
                    loss = loss + extra(model, x, y, logits)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= 2:
                times[k].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def bench_mwt(arch: str = "resnet20", width: float = 1.0, batch_size: int = 128, steps: int = 10,
              image_size: int = 32, train_size: int = 10_000, cohesion_samples: int = 2_000, seed: int = 0,
              precision: str = "fp32") -> dict:
    """Measure MwT's training-step overhead (both models' steps in ``precision``), gate collection and
    cohesion cost (see the module docstring)."""
    import resource

    from . import data as D
    from . import mwt as W

    torch.manual_seed(seed)
    x = torch.rand(batch_size, 3, image_size, image_size)
    y = torch.randint(0, 10, (batch_size,))
    standard = build_model(arch, num_classes=10, width=width)
    torch.manual_seed(seed)
    gated = W.GatedModel(build_model(arch, num_classes=10, width=width), image_size)
    torch.manual_seed(seed)
    unfused = W.GatedModel(build_model(arch, num_classes=10, width=width), image_size, fuse_batchnorm=False)
    std_s, mod_s, unfused_s = _step_seconds([(standard, None), (gated, W.mwt_loss()), (unfused, W.mwt_loss())],
                                            x, y, steps, precision)
    ds = D.synthetic(10, train_size // 10, image_size, 3, seed=seed)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats = W.collect_gates(gated, ds, batch_size=256, device="cpu")
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    u, _ = W.module_masks(stats, 0.9, "top1")
    on = (torch.rand(cohesion_samples, stats.num_kernels) > 0.5)
    one_class = W.GateStats(on, torch.zeros(cohesion_samples, dtype=torch.long),
                            on.float().mean(0, keepdim=True), stats.slices)
    t0 = time.perf_counter()
    W.cohesion(one_class, torch.ones(1, stats.num_kernels, dtype=torch.bool))
    cohesion_s = time.perf_counter() - t0
    return {"benchmark": "mwt", "arch": arch, "width": width, "batch_size": batch_size,
            "precision": resolved(precision, "cpu"),
            "threads": torch.get_num_threads(), "step_seconds_standard": std_s, "step_seconds_modular": mod_s,
            "step_ratio": mod_s / std_s, "target_step_ratio": 1.10, "meets_target": mod_s / std_s <= 1.10,
            "step_seconds_modular_unfused_bn": unfused_s, "step_ratio_unfused_bn": unfused_s / std_s,
            "gated_kernels": stats.num_kernels, "modularization_samples": train_size,
            "modularization_seconds": stats.seconds, "gate_store_bytes": stats.on.numel(),
            "peak_rss_increase_bytes": max(0, rss1 - rss0) * 1024, "cohesion_samples": cohesion_samples,
            "cohesion_seconds": cohesion_s, "krr_at_0.9": W.krr(u)}


def bench_seam(archs: tuple = (("resnet20", 1.0), ("vgg16", 0.5)), batch_size: int = 64, steps: int = 16,
               image_size: int = 32, seed: int = 0, problems: int = 4, precision: str = "fp32") -> dict:
    """SeaM: seconds per re-engineering step (masked forward, CE + α·WRR, backward into the scores,
    Adam) against a plain training step of the same model (SGD on all weights), interleaved, and the
    latency of the original, zeroed dense and extracted models for masks that keep 10 % of the weights,
    and ``problems`` target problems re-engineered together against one after another. Both steps
    compute in ``precision``. Target: step ratio <= 1.0."""
    import statistics

    import torch.nn.functional as F

    from . import seam as S

    rows = []
    x = torch.rand(batch_size, 3, image_size, image_size)
    y = torch.randint(0, 10, (batch_size,))
    yb = (y == 0).long()
    for arch, width in archs:
        torch.manual_seed(seed)
        plain = build_model(arch, num_classes=10, width=width)
        source = build_model(arch, num_classes=10, width=width).eval()
        problem = S.target_problem(0, [str(i) for i in range(10)])
        engine = S.Reengineer(source, problem, S.SeaMConfig(), (3, image_size, image_size), "cpu")
        opt_plain = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)
        opt_mask = adam([{"params": engine.mask_params, "lr": 0.05},
                         {"params": list(engine.head.parameters()), "lr": 0.1}], lr=0.05)   # as Reengineer.run
        times = {"plain": [], "reengineer": []}
        for i in range(steps + 2):
            t0 = time.perf_counter()
            plain.train()
            with autocast(precision, "cpu"):
                loss = F.cross_entropy(plain(x), y)
            opt_plain.zero_grad(set_to_none=True)
            loss.backward()
            opt_plain.step()
            t1 = time.perf_counter()
            with autocast(precision, "cpu"):
                _reengineer_step(engine, opt_mask, x, yb)
            t2 = time.perf_counter()
            if i >= 2:
                times["plain"].append(t1 - t0)
                times["reengineer"].append(t2 - t1)
        engine.gating.remove()
        plain_s, re_s = statistics.median(times["plain"]), statistics.median(times["reengineer"])
        g = torch.Generator().manual_seed(seed)
        masks = {k: torch.rand(v.shape, generator=g) < 0.1 for k, v in engine.weights.scores().items()}
        result = S.SeaMResult(masks, {"1.weight": torch.zeros(2, 10), "1.bias": torch.zeros(2)}, [{"wrr": 0.1}], 1,
                              True, 0.0, problem, {"kernel_level": False}, 10)
        module = S.to_module(source, result, _shape_only(image_size))
        costs = S.cost_report(source, result, module, (3, image_size, image_size), batch_size, repeats=5)
        together = _seam_problems_together(source, problems, batch_size, image_size, steps)
        rows.append({"arch": arch, "width": width, "step_seconds_plain": plain_s, "step_seconds_reengineer": re_s,
                     "step_ratio": re_s / plain_s, "meets_target": re_s / plain_s <= 1.0,
                     "problems_together": together,
                     "random_10pct_masks": {k: costs[k] for k in ("macs", "latency_seconds", "latency_ratio",
                                                                   "latency_ratio_dense", "macs_ratio_nonzero",
                                                                   "macs_ratio_structured")}})
        print(f"seam {arch} x{width}: re-engineering step {re_s:.3f} s vs plain {plain_s:.3f} s "
              f"({re_s / plain_s:.2f}); 10 % random weights: zeroed dense latency {costs['latency_ratio_dense']:.2f}, "
              f"extracted {costs['latency_ratio']:.2f}; {problems} problems in one vmapped step "
              f"{together['ratio']:.2f}x the sequential steps, keep {together['keep']}", flush=True)
    return {"benchmark": "seam", "batch_size": batch_size, "threads": torch.get_num_threads(), "target_step_ratio": 1.0,
            "precision": resolved(precision, "cpu"),
            "device": "cpu", "rows": rows, "unit": MAC_UNIT}


def _reengineer_step(engine, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    """One joint (masks + head) step of a SeaM :class:`~modtools.seam.Reengineer`, as its run does it (α = 1)."""
    engine.step(x, y, opt)


def _seam_problems_together(source: nn.Module, problems: int, batch_size: int, image_size: int, steps: int) -> dict:
    """Seconds for one optimiser step of ``problems`` binary target problems: K :class:`~modtools.seam.Reengineer`
    steps one after another (what the library does) against one step of all K through
    :func:`~modtools.seam.stacked_forward` (``torch.func.vmap`` over stacked scores), interleaved.
    ``keep`` names the faster on this device; the library keeps the sequential engine unless the
    stacked step is faster by more than 5 %."""
    import statistics

    import torch.nn.functional as F

    from . import seam as S

    names = [str(i) for i in range(10)]
    x = torch.rand(problems, batch_size, 3, image_size, image_size)
    y = torch.randint(0, 2, (problems, batch_size))
    engines = [S.Reengineer(source, S.target_problem(k, names), S.SeaMConfig(), (3, image_size, image_size), "cpu")
               for k in range(problems)]
    opts = [adam([{"params": e.mask_params, "lr": 0.05}, {"params": list(e.head.parameters()), "lr": 0.1}], lr=0.05)
            for e in engines]
    frozen = copy.deepcopy(source).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    scores, weight, bias = S.stacked_problems(frozen, problems)
    opt = adam([{"params": list(scores.values()), "lr": 0.05}, {"params": [weight, bias], "lr": 0.1}], lr=0.05)
    times = {"sequential": [], "stacked": []}
    for i in range(steps + 2):
        t0 = time.perf_counter()
        for k, (engine, o) in enumerate(zip(engines, opts)):
            _reengineer_step(engine, o, x[k], y[k])
        t1 = time.perf_counter()
        logits, wrr = S.stacked_forward(frozen, scores, weight, bias, x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / batch_size + wrr.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if i >= 2:
            times["sequential"].append(t1 - t0)
            times["stacked"].append(t2 - t1)
    for engine in engines:
        engine.gating.remove()
    seq, stacked = statistics.median(times["sequential"]), statistics.median(times["stacked"])
    return {"problems": problems, "seconds_sequential": seq, "seconds_stacked": stacked, "ratio": stacked / seq,
            "keep": "stacked" if stacked < 0.95 * seq else "sequential"}


@torch.no_grad()
def original_pipeline(model: nn.Module, val, masks: dict[str, torch.Tensor], c: int,
                      batch_size: int = 256) -> torch.Tensor:
    """CNNSplitter's original evaluation of candidates (spec §5.4), one by one: a new smaller network with
    random initialisation, the kept weights copied into it, then a pass over the validation split
    through a data loader that converts every image again (the original keeps no input cache).
    Returns the candidates' class-``c`` logits, like ``Evaluator.rebuilt``."""
    from torch.utils.data import DataLoader

    rows = []
    size = int(val.images.shape[-1])
    for i in range(next(iter(masks.values())).shape[0]):
        sliced, _ = extract(model, {k: v[i] for k, v in masks.items()}, on_empty="keep_one", image_size=size,
                            verify=False)
        net = copy.deepcopy(sliced)
        for m in net.modules():                       # the original builds the module anew: random init ...
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        net.load_state_dict(sliced.state_dict())      # ... then copies the kept weights in
        net.eval()
        rows.append(torch.cat([net(x)[:, c] for x, _ in DataLoader(val, batch_size=batch_size, shuffle=False)]))
    return torch.stack(rows)


def bench_cnnsplitter(width: float = 0.25, image_size: int = 32, val_images: int = 200, population: int = 100,
                      generations: int = 1, baseline_candidates: int = 8, halving: float = 0.25,
                      halving_keep: float = 0.5, seed: int = 0, precision: str = "fp32") -> dict:
    """CNNSplitter: candidates evaluated per second over whole generations of the search (masked or
    rebuilt, whichever the calibration picks; cached inputs; elites and duplicates never evaluated
    again), with and without successive halving, against the original's way; how often halving changes the selected
    parents (an audited generation); the recorder's (fitness) seconds per generation; peak memory.
    The original's way is :func:`original_pipeline` (its per-candidate module construction and data
    loading); the JSON also gives the ratio against our rebuild on cached inputs, the stricter one.
    Ours evaluates in ``precision``, the original's way in float32, timed in three rounds between the
    searches (median). Target ≥ 3×."""
    from dataclasses import replace

    from . import cnnsplitter as C
    from . import data as D
    from .layers import find_maskable_layers

    torch.manual_seed(seed)
    model = build_model("simcnn", num_classes=10, width=width).eval()
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (val_images, 3, image_size, image_size), generator=g, dtype=torch.uint8)
    val = D.ImageDataset(images, torch.arange(val_images) % 10, [str(i) for i in range(10)], "random")
    layers = find_maskable_layers(model, torch.zeros(1, 3, image_size, image_size))
    ratios = {seg[0]: [0.5, 0.7, 0.9] for seg in C.coupled_segments(model, layers)}
    cfg = C.CNNSplitterConfig(population=population, generations=generations, parents_mating=population // 2,
                              keep_parents=population // 5, ratios=ratios, confidence=0.0, seed=seed,
                              precision=precision)
    candidates = population * 10 * (generations + 1)

    def run(c):
        result, peak = _measured(C.search, model, val, val, c, "cpu")
        return result, peak, candidates / sum(h["seconds_evaluate"] for h in result.history)

    ev = C.Evaluator(model, layers, val, replace(cfg, precision="fp32"), "cpu")   # the original computes in float32
    ours_ev = C.Evaluator(model, layers, val, cfg, "cpu")
    enc_masks = {layer.name: (torch.rand(baseline_candidates, layer.out_channels, generator=g) < 0.7).float()
                 for layer in layers}
    rounds: dict[str, list[float]] = {"original": [], "rebuild": [], "masked": []}

    def baseline_round():
        """The original's pipeline, our rebuild of it on cached inputs, and our masked pass on the same
        candidates, timed between the searches, so that a drift of the machine's speed touches all."""
        t0 = time.perf_counter()
        original_pipeline(model, val, enc_masks, 0)
        t1 = time.perf_counter()
        ev.rebuilt(0, enc_masks)
        t2 = time.perf_counter()
        ours_ev.masked(0, enc_masks)
        t3 = time.perf_counter()
        rounds["original"].append((t1 - t0) / baseline_candidates)
        rounds["rebuild"].append((t2 - t1) / baseline_candidates)
        rounds["masked"].append((t3 - t2) / baseline_candidates)

    baseline_round()
    full, peak, full_rate = run(cfg)
    baseline_round()
    halved_cfg = replace(cfg, halving=halving, halving_keep=halving_keep)
    halved, peak_h, ours = run(halved_cfg)
    baseline_round()
    audited = C.search(model, val, val, replace(halved_cfg, generations=0, halving_audit=True), "cpu")
    changed = [h["halving_parents_changed"] for h in audited.history]
    original_each = statistics.median(rounds["original"])
    rebuild_each, masked_each = statistics.median(rounds["rebuild"]), statistics.median(rounds["masked"])
    recorder = [h["seconds_fitness"] for h in halved.history]
    out = {"benchmark": "cnnsplitter", "arch": "simcnn", "width": width, "image_size": image_size,
           "val_images": val_images, "population": population, "classes": 10, "generations": generations + 1,
           "precision": resolved(precision, "cpu"),
           "threads": torch.get_num_threads(), "candidates": candidates,
           "evaluated": halved.evaluation["evaluated"], "skipped_as_seen": halved.evaluation["cache_hits"],
           "chosen_mode": halved.evaluation.get("chosen"),
           "calibration_seconds_per_candidate": halved.evaluation.get("seconds_per_candidate"),
           "candidates_per_second": ours, "candidates_per_second_without_halving": full_rate,
           "original_seconds_per_candidate": original_each, "original_seconds_per_candidate_rounds": rounds["original"],
           "rebuild_seconds_per_candidate": rebuild_each, "rebuild_seconds_per_candidate_rounds": rounds["rebuild"],
           "masked_seconds_per_candidate_uncached": masked_each,
           "speedup_vs_original": ours * original_each, "speedup_without_halving": full_rate * original_each,
           "speedup_vs_rebuild_cached_inputs": ours * rebuild_each,
           "target_speedup": 3.0, "recorder_seconds_per_generation": sum(recorder) / len(recorder),
           "peak_rss_bytes": max(peak, peak_h),
           "successive_halving": {"first_round_fraction": halving, "keep": halving_keep,
                                  "parents_changed": sum(changed) / len(changed),
                                  "audited_generations": len(changed),
                                  "best_ensemble_accuracy": max(h["ensemble_accuracy"] for h in halved.history),
                                  "best_ensemble_accuracy_without": max(h["ensemble_accuracy"] for h in full.history)}}
    print(f"cnnsplitter simcnn x{width}: {ours:.2f} candidates/s over whole generations with successive halving "
          f"({full_rate:.2f} without) vs the original's {1 / original_each:.2f} ({out['speedup_vs_original']:.2f}x, "
          f"target 3x; {out['speedup_vs_rebuild_cached_inputs']:.2f}x against its rebuild on cached inputs); "
          f"halving changes {100 * out['successive_halving']['parents_changed']:.0f} % of the parents; "
          f"recorder {out['recorder_seconds_per_generation']:.2f} s per generation", flush=True)
    return out


def _shape_only(image_size: int):
    from . import data as D

    return D.ImageDataset(torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8), torch.zeros(1), ["0"],
                          "random")


def _peak_rss_bytes(reset: bool = False) -> int:
    """This process's peak resident memory (VmHWM); ``reset`` starts a new peak (Linux >= 4.0)."""
    from pathlib import Path as _P

    if reset:
        try:
            _P("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
    for line in _P("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _measured(fn, *args):
    """Run ``fn(*args)``; return its result and the peak resident memory reached meanwhile (bytes)."""
    _peak_rss_bytes(reset=True)
    out = fn(*args)
    return out, _peak_rss_bytes()


def _search(model, train, val, cfg):
    from . import gradsplitter as G

    t0 = time.perf_counter()
    result = G.decompose(model, train, val, cfg, device="cpu")
    seconds = time.perf_counter() - t0
    per_epoch = -(-len(train) // cfg.batch_size)
    sel = result.history[result.selected_epoch - 1]
    return {"seconds": seconds, "epochs": len(result.history), "steps_per_epoch": per_epoch,
            "steps": per_epoch * len(result.history), "selected_epoch": result.selected_epoch,
            "steps_to_selected": per_epoch * result.selected_epoch, "val_accuracy": sel["val_accuracy"],
            "krr": sel["krr"], "model_val_accuracy": result.model_val_accuracy,
            "history": [{k: h[k] for k in ("epoch", "phase", "val_accuracy", "krr", "seconds")} for h in result.history]}


GRADSPLITTER_RUNS = ("paper_cached", "paper_backprop", "paper_recompute", "fast_cached")
#: the head-phase comparison (cached vs backprop vs recompute) runs on this share of the paper's cycle
#: epochs (same schedule shape), so that the original's slow head phases do not run 140 epochs
HEAD_PHASE_SHARE = 0.2


def time_to_target(history: list[dict], steps_per_epoch: int, val_accuracy: float, krr: float,
                   tolerance: float = 0.005) -> int | None:
    """Steps until an epoch reaches ``val_accuracy - tolerance`` with a KRR no higher than ``krr``."""
    for h in history:
        if h["val_accuracy"] >= val_accuracy - tolerance and h["krr"] <= krr:
            return h["epoch"] * steps_per_epoch
    return None


def _bench_model(arch, width, dataset, per_class, search_samples, seed):
    """A model trained on a seeded subset of ``dataset``; the search uses part of its own training
    split (as GradSplitter does) and a held-out validation split a quarter of that size."""
    from . import data as D
    from .train import FitConfig, fit, seed_everything

    full = D.load_dataset(dataset, "train", seed=seed)
    train, val = D.train_val_split(D.limit_per_class(full, per_class, seed=seed), 0.2, seed=seed)
    seed_everything(seed)
    model = build_model(arch, in_channels=full.shape[0], num_classes=full.num_classes, width=width)
    fit(model, train, None, FitConfig(epochs=3, batch_size=64, seed=seed), device="cpu", progress=False)
    search_train = train.take(range(min(search_samples, len(train))))
    search_val = val.take(range(min(max(1, search_samples // 4), len(val))))
    return model.eval(), search_train, search_val


def _step_times(model, ds, batch_size: int, steps: int) -> tuple[float, float, dict]:
    """Median seconds of the batched N-module search step and of N sequential single-module steps
    (interleaved, so that drifts of the machine hit both alike), and the peak memory of each."""
    import statistics

    from . import gradsplitter as G
    from .masks import batched_forward, binarize_ste

    n = ds.num_classes
    splitter = G.GradSplitter(model, n, G.GradSplitterConfig(), ds.shape, "cpu")
    x, y = ds.float_images()[:batch_size], ds.labels[:batch_size]

    def batched_step():
        masks = {k: binarize_ste(v) for k, v in splitter.scores.items()}
        loss = torch.nn.functional.cross_entropy(splitter.heads(splitter.module_logits(x, masks)), y)
        loss.backward()

    def sequential_step():
        scores = []
        for i in range(n):
            masks = {k: binarize_ste(v[i:i + 1]) for k, v in splitter.scores.items()}
            logits = batched_forward(splitter.model, x, masks, splitter.layers, binary=False)
            h = torch.relu(torch.relu(logits[0]) @ splitter.heads.w1[i].T + splitter.heads.b1[i])
            scores.append(torch.sigmoid(h @ splitter.heads.w2[i].T + splitter.heads.b2[i]))
        torch.nn.functional.cross_entropy(torch.cat(scores, 1), y).backward()

    times: dict[str, list[float]] = {"batched": [], "sequential": []}
    peaks: dict[str, int] = {}
    for i in range(steps + 1):
        for name, fn in (("batched", batched_step), ("sequential", sequential_step)):
            _peak_rss_bytes(reset=True)
            t0 = time.perf_counter()
            fn()
            if i:
                times[name].append(time.perf_counter() - t0)
            peaks[name] = max(peaks.get(name, 0), _peak_rss_bytes())
    for p in model.parameters():
        p.requires_grad_(True)
    return statistics.median(times["batched"]), statistics.median(times["sequential"]), peaks


def bench_gradsplitter(arch: str = "simcnn", width: float = 0.25, batch_size: int = 64, steps: int = 5,
                       dataset: str = "fashion-mnist", per_class: int = 600, search_samples: int = 1280,
                       seed: int = 0, paper_cycle_epochs: int = 140, runs: tuple = ("paper_cached", "paper_backprop",
                                                                                       "fast_cached")) -> dict:
    """Measure GradSplitter's search costs (see the module docstring)."""
    from dataclasses import asdict, replace

    from . import gradsplitter as G
    from .masks import channels_last_on_cpu

    unknown = sorted(set(runs) - set(GRADSPLITTER_RUNS))
    if unknown:
        raise ValueError(f"unknown runs {unknown}; available: {list(GRADSPLITTER_RUNS)}")
    model, search_train, val = _bench_model(arch, width, dataset, per_class, search_samples, seed)
    n = search_train.num_classes
    with channels_last_on_cpu(model, "cpu"):   # as decompose() runs the search
        t_batched, t_seq, peaks = _step_times(model, search_train, batch_size, steps)
    paper = G.GradSplitterConfig(seed=seed, cycle_epochs=paper_cycle_epochs, batch_size=batch_size)
    cycle = paper.cycle_mask + paper.cycle_head
    short = replace(paper, cycle_epochs=min(paper_cycle_epochs,
                                              max(cycle, round(paper_cycle_epochs * HEAD_PHASE_SHARE / cycle) * cycle)))
    configs = {"paper_cached": paper, "paper_backprop": replace(short, head_phase="backprop"),
               "paper_recompute": replace(short, head_phase="recompute"),
               "fast_cached": G.GradSplitterConfig.preset("fast", seed=seed, batch_size=batch_size)}
    head_runs = [r for r in runs if r in ("paper_backprop", "paper_recompute")]
    if head_runs:   # the cached head phases on the same short schedule, to compare like with like
        configs["paper_cached_short"] = short
        runs = tuple(runs) + ("paper_cached_short",)
    results = {}
    for name in runs:
        out, peak = _measured(_search, model, search_train, val, configs[name])
        results[name] = {**out, "peak_rss_bytes": peak, "config": asdict(configs[name])}
        print(f"gradsplitter {name}: {out['seconds']:.1f} s, {out['steps']} steps, selected epoch "
              f"{out['selected_epoch']}: val {out['val_accuracy']:.3f}, KRR {out['krr']:.3f}", flush=True)
    summary = {"benchmark": "gradsplitter", "arch": arch, "width": width, "dataset": dataset, "batch_size": batch_size,
               "threads": torch.get_num_threads(), "modules": n, "search_samples": len(search_train),
               "val_samples": len(val), "step_seconds_batched": t_batched, "step_seconds_sequential": t_seq,
               "step_ratio": t_batched / t_seq, "peak_rss_bytes_batched_step": peaks["batched"],
               "peak_rss_bytes_sequential_step": peaks["sequential"], "runs": results,
               "note": "the batched step runs all modules in one pass, the sequential one runs them one by one "
                       "(a GPU gains more from batching than this CPU); 'backprop' head phases do what the "
                       "original does (full forward and backward through the CNN)"}
    if {"paper_cached_short", "paper_backprop"} <= set(results):
        summary["caching_time_ratio"] = (results["paper_cached_short"]["seconds"]
                                         / results["paper_backprop"]["seconds"])
        summary["caching_target"] = 0.75
        summary["head_phase_schedule"] = {"cycle_epochs": short.cycle_epochs, "share_of_paper": HEAD_PHASE_SHARE,
                                          "note": "the head-phase comparison runs the paper schedule's shape "
                                                  "(first head phase, cycles of mask and head epochs) on fewer "
                                                  "cycles; the mask phases are the same in every run"}
    if {"paper_cached_short", "paper_recompute"} <= set(results):
        summary["caching_vs_recompute_ratio"] = (results["paper_cached_short"]["seconds"]
                                                 / results["paper_recompute"]["seconds"])
    if {"paper_cached", "fast_cached"} <= set(results):
        p_run, f_run = results["paper_cached"], results["fast_cached"]
        reach = time_to_target(f_run["history"], f_run["steps_per_epoch"], p_run["val_accuracy"], p_run["krr"])
        summary["fast_vs_paper"] = {
            "paper_steps_to_selected": p_run["steps_to_selected"], "fast_steps_to_target": reach,
            "steps_ratio": None if reach is None else reach / p_run["steps_to_selected"],
            "fast_selected": {"steps": f_run["steps_to_selected"], "val_accuracy": f_run["val_accuracy"],
                              "krr": f_run["krr"]},
            "meets_target": reach is not None and reach <= p_run["steps_to_selected"] / 3,
            "rule": "the fast schedule's first epoch with composed validation accuracy >= the paper's selected "
                    "one - 0.5 point and a KRR no higher"}
    return summary


def plot_extract(results: dict):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for arch in dict.fromkeys(r["arch"] for r in results["rows"]):
        rows = [r for r in results["rows"] if r["arch"] == arch]
        ax.plot([r["macs_ratio"] for r in rows], [r["latency_ratio_b64"] for r in rows], "o-", label=arch)
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="latency = MACs")
    ax.plot([0, 1 / TARGET], [0, 1], "k--", lw=0.8, label=f"{TARGET}× MACs (target bound)")
    ax.set(xlabel="extracted / full MACs", ylabel="extracted / full latency (batch 64, CPU)",
           title=f"extraction speed-up ({results['threads']} threads)", xlim=(0, 1.05), ylim=(0, 1.3))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_gradsplitter(results: dict):
    """Validation accuracy and KRR against search steps for each run, and the runs' wall times."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, run in results["runs"].items():
        steps = [h["epoch"] * run["steps_per_epoch"] for h in run["history"]]
        style = "--" if "backprop" in name or "recompute" in name else "-"
        axes[0].plot(steps, [h["val_accuracy"] for h in run["history"]], style, label=name)
        axes[1].plot(steps, [h["krr"] for h in run["history"]], style, label=name)
        for ax, key in ((axes[0], "val_accuracy"), (axes[1], "krr")):
            ax.plot(run["steps_to_selected"], run[key], "k*", ms=9)
    axes[0].axhline(next(iter(results["runs"].values()))["model_val_accuracy"], color="grey", lw=0.8, ls=":",
                    label="model")
    axes[0].set(xlabel="search steps (batch %d)" % results["batch_size"], ylabel="composed validation accuracy",
                title="accuracy (★ selected epoch)")
    axes[1].set(xlabel="search steps", ylabel="kept-kernel rate (KRR)", title="kernels kept")
    names = list(results["runs"])
    axes[2].barh(names, [results["runs"][n]["seconds"] for n in names], color="tab:blue")
    axes[2].set(xlabel=f"wall seconds ({results['threads']} CPU threads)", title="whole search")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"GradSplitter search, {results['arch']} ×{results['width']} on {results['dataset']}, "
                 f"{results['search_samples']} samples")
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modtools.bench", description=__doc__)
    parser.add_argument("--out", default="runs/bench", help="output folder")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier of the zoo models")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--archs", nargs="*", default=ZOO)
    parser.add_argument("--align", type=int, default=8, help="extract with widths aligned to this multiple")
    parser.add_argument("--only", choices=("extract", "mwt", "gradsplitter", "seam", "cnnsplitter"), default=None,
                        help="run one benchmark")
    parser.add_argument("--mwt-arch", default="resnet20", help="architecture of the MwT benchmark")
    parser.add_argument("--mwt-steps", type=int, default=10, help="timed training steps per model")
    parser.add_argument("--mwt-train-size", type=int, default=10_000, help="samples whose gates are collected")
    parser.add_argument("--gs-dataset", default="fashion-mnist", help="data set of the GradSplitter benchmark")
    parser.add_argument("--gs-samples", type=int, default=1280, help="GradSplitter search samples (batch 64)")
    parser.add_argument("--quick", action="store_true",
                        help="every benchmark in a few minutes: fewer models, repeats, steps and epochs "
                             "(ratios are rougher; the files record profile=quick)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="arithmetic of the MwT, SeaM and CNNSplitter loops (default fp32, as their notebooks "
                             "20, 40 and 50-52; auto: bf16 where the CPU is fast at it, as the approaches of 60)")
    parser.add_argument("--summary-only", action="store_true", help="only rebuild summary.json from the files")
    args = parser.parse_args(argv)
    from .allocator import tune_allocator

    tune_allocator()   # as the notebooks' kernels run (modtools.allocator)
    out = Path(args.out)
    if args.summary_only:
        return _summary(out)
    q = args.quick
    tag = {"profile": "quick" if q else "full"}
    if args.only in (None, "extract"):
        results = {**bench_extract(("simcnn", "resnet20") if q else args.archs, width=args.width,
                                   repeats=2 if q else args.repeats, align=args.align), **tag}
        atomic_write_json(out / "extract.json", results)
        from .plots import save_figure
        save_figure(plot_extract(results), out, "bench", "extract")
        print(f"wrote {out / 'extract.json'}; {results['share_meeting_target']:.0%} of rows meet the latency target")
    if args.only in (None, "gradsplitter"):
        results = {**bench_gradsplitter(dataset=args.gs_dataset, search_samples=320 if q else args.gs_samples,
                                        paper_cycle_epochs=14 if q else 140, steps=2 if q else 5), **tag}
        atomic_write_json(out / "gradsplitter.json", results)
        from .plots import save_figure
        save_figure(plot_gradsplitter(results), out, "bench", "gradsplitter")
        ratio = results["fast_vs_paper"]["steps_ratio"]
        reach = "never" if ratio is None else f"in {ratio:.0%} of its steps"
        print(f"wrote {out / 'gradsplitter.json'}: batched/sequential step {results['step_ratio']:.2f}, "
              f"caching time ratio {results['caching_time_ratio']:.2f} (target <= 0.75), fast schedule "
              f"reaches the paper's selection {reach} (target <= 1/3)")
    if args.only in (None, "mwt"):
        results = {**bench_mwt(args.mwt_arch, width=0.5 if q else 1.0, steps=3 if q else args.mwt_steps,
                               train_size=1000 if q else args.mwt_train_size, cohesion_samples=500 if q else 2000,
                               precision=args.precision),
                   **tag}
        atomic_write_json(out / "mwt.json", results)
        print(f"wrote {out / 'mwt.json'}: step ratio {results['step_ratio']:.2f} (target <= 1.10; "
              f"{results['step_ratio_unfused_bn']:.2f} without the fused BN), "
              f"gates of {results['modularization_samples']} samples in {results['modularization_seconds']:.1f} s, "
              f"cohesion of {results['cohesion_samples']} samples in {results['cohesion_seconds']:.2f} s")
    if args.only in (None, "cnnsplitter"):
        results = {**(bench_cnnsplitter(population=20, val_images=100, baseline_candidates=4, precision=args.precision)
                      if q else bench_cnnsplitter(precision=args.precision)), **tag}
        atomic_write_json(out / "cnnsplitter.json", results)
        print(f"wrote {out / 'cnnsplitter.json'}")
    if args.only in (None, "seam"):
        results = {**(bench_seam(archs=(("resnet20", 0.5),), steps=3, precision=args.precision) if q
                      else bench_seam(precision=args.precision)), **tag}
        atomic_write_json(out / "seam.json", results)
        print(f"wrote {out / 'seam.json'}")
    return _summary(out)


def _summary(out: Path) -> int:
    from .bench_summary import build_summary, summary_figure
    from .plots import save_figure

    summary = build_summary(out)
    save_figure(summary_figure(summary), out, "bench", "summary")
    for r in summary["rows"]:
        shown = "not run" if r["value"] is None else f"{r['value']:.3f}"
        print(f"{r['status']:>15s}  {r['measure']}: {shown} (target {r['op']} {r['target']:.3f})")
    print(f"wrote {out / 'summary.json'}: {summary['met']} of {summary['targets']} targets met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
