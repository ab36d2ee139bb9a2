"""CNNSplitter (Qi et al., ASE 2022): per-class modules of a trained CNN by a genetic search over
importance-ordered kernel groups, on the shared mask machinery.

1. **Kernel importance**: per class and kernel, the mean post-activation over the class's samples
   that the model predicts with probability ≥ ``confidence`` (one batched pass for all classes,
   :func:`modtools.baseline.kernel_importance`). Layers whose channels are coupled (a residual
   stream) form one *segment* and share one kernel order, their importances summed.
2. **Encoding**: per class and segment, the kernels sorted by importance are cut into ``ng``
   contiguous groups as ``numpy.array_split`` cuts them (10 groups below 256 kernels, else 100); a
   chromosome holds one bit per group. An empty segment keeps its most important kernel (the
   original kept kernel 0).
3. **Layer sensitivity, automatic**: for each segment and ratio, all N modules keep the top ratio
   of that segment's kernels (every other layer whole) and are composed in one batched pass. The
   rule: ``r_min`` is the smallest ratio whose composed validation accuracy stays within
   ``sensitivity_tolerance`` of the unpruned composition; the segment's initial ratios are
   ``r_min, r_min + 0.1, r_min + 0.2`` (``sensitivity_offsets``; clipped to 0.1–1), and it counts as *sensitive* when
   ``r_min ≥ 0.5``. ``ratios`` gives the lists by hand instead.
4. **Initial population**: per individual and segment, a ratio ``r`` from the segment's list, and
   ``int(ng · r)`` groups drawn without replacement with probability ∝ ``exp((ng − 1 − i) / 10)``.
5. **Search**: steady-state selection of the ``parents_mating`` fittest, single-point crossover,
   random mutation of ``mutation_percent`` % of the genes, the ``keep_parents`` fittest kept; the
   fitness is the co-operative composition score of :mod:`modtools.cnnsplitter_fitness`. Each
   generation's best ensemble (the fittest candidate per class) is scored on validation with
   ``α · accuracy + (1 − α) · diff``; the best generation's ensemble is the result.

Candidates are evaluated as masked models in batched passes, or rebuilt as smaller networks, by
whichever was faster on this device in a short calibration (recorded). A rebuilt candidate comes
from :class:`modtools.rebuild.Rebuilder`: the model's structure is analysed once, and each candidate
costs index selections only (the same widths and outputs as :func:`modtools.extract.extract`, which
would trace the model again for each). Inputs are cached as one tensor (channels-last on a CPU), and
chromosomes already evaluated (elites, duplicates) are never evaluated again. The
search is seeded and deterministic, can stop early, and can resume from a checkpoint folder.

**Successive halving** (``halving``, off by default as published): each generation scores its new
candidates on a stratified ``halving`` share of the validation images first; the co-operative
fitness on that slice ranks them, and only the best ``max(parents_mating, ⌈halving_keep · P⌉)`` per
class are completed on the other images and scored as usual (the rest rank below them all).
``halving_audit`` also scores every candidate in full and records the share of selected parents
that halving changed (``halving_parents_changed`` per generation). Evaluation is in
:mod:`modtools.cnnsplitter_eval`.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import data as D
from .baseline import kernel_importance
from .cnnsplitter_fitness import cooperative_fitness, pairwise_jaccard
from .errors import CheckpointError, ParameterError, check_classes, check_range
from .io import atomic_write_json, config_hash, load_tensors, read_json, save_tensors
from .layers import find_maskable_layers, pruning_group
from .cnnsplitter_eval import (Evaluator, _audit_halving, _own, composed_accuracy, layer_sensitivity,  # noqa: F401
                               promising, ranked, ratios_from_sensitivity, stratified_slice)
from .masks import batched_forward
from .module import Module
from .precision import check_precision, strip_default
from .train import resolve_device, seed_everything

EVAL_MODES = ("auto", "masked", "rebuild")
EMPTY_SEGMENT = ("top1", "kernel0")


@dataclass
class CNNSplitterConfig:
    """CNNSplitter's settings; the defaults are the published ones (simcnn_cifar10)."""

    population: int = 100
    generations: int = 200
    parents_mating: int = 50
    keep_parents: int = 20
    mutation_percent: float = 5.0
    alpha: float = 0.9
    gamma: float = 0.9
    acc_thresholds: dict = field(default_factory=lambda: {2: 0.95, 4: 0.95, 8: 0.85, 10: 0.80})
    keep_min: int = 50
    keep_max: int = 500
    confidence: float = 0.9
    confidence_fallback: str = "raise"     # raise | all (use every sample of a class none passes)
    groups_small: int = 10
    groups_large: int = 100
    large_from: int = 256
    ratios: dict | None = None             # segment name → initial ratios, by hand (None: automatic)
    sensitivity_grid: list = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    sensitivity_tolerance: float = 0.01
    sensitivity_offsets: list = field(default_factory=lambda: [0.0, 0.1, 0.2])  # initial ratios: r_min + each
    eval_mode: str = "auto"                # auto | masked | rebuild
    chunk: int = 20                        # candidates per batched masked pass
    patience: int | None = None            # stop after this many generations without a better ensemble
    empty_segment: str = "top1"            # top1: keep the most important kernel | kernel0 (the original)
    halving: float | None = None           # successive halving: score new candidates on this fraction of
    #                                        the validation images first (stratified; None: off, as published)
    halving_keep: float = 0.5              # ... and only this fraction of each population (at least
    #                                        parents_mating, the most promising) on all of them
    halving_audit: bool = False            # also score every candidate on all images, to count the parents
    #                                        halving changes (for measuring it; costs the full evaluation)
    seed: int = 0
    precision: str = "fp32"                # fp32 | bf16 | auto: candidate evaluation (modtools.precision)

    def __post_init__(self) -> None:
        check_precision(self.precision)
        self.acc_thresholds = {int(k): float(v) for k, v in self.acc_thresholds.items()}
        for name in ("population", "parents_mating"):
            check_range(name, getattr(self, name), getattr(self, name) >= 1, "an integer >= 1")
        check_range("generations", self.generations, self.generations >= 0, "an integer >= 0 (0: the initial population only)")
        check_range("keep_parents", self.keep_parents, 0 <= self.keep_parents < self.population,
                    f"0 <= keep_parents < population ({self.population})")
        check_range("parents_mating", self.parents_mating, self.parents_mating <= self.population,
                    f"1 <= parents_mating <= population ({self.population})")
        check_range("mutation_percent", self.mutation_percent, 0 <= self.mutation_percent <= 100, "0 to 100")
        check_range("alpha", self.alpha, 0 <= self.alpha <= 1, "0 <= alpha <= 1")
        check_range("confidence", self.confidence, 0 <= self.confidence <= 1, "0 <= confidence <= 1")
        if self.eval_mode not in EVAL_MODES:
            raise ValueError(f"eval_mode={self.eval_mode!r} is not allowed; use one of {EVAL_MODES}")
        if self.halving is not None:
            check_range("halving", self.halving, 0 < self.halving < 1, "a fraction 0 < halving < 1, or None (off)")
        check_range("halving_keep", self.halving_keep, 0 < self.halving_keep <= 1, "a fraction 0 < halving_keep <= 1")
        if self.empty_segment not in EMPTY_SEGMENT:
            raise ValueError(f"empty_segment={self.empty_segment!r} is not allowed; use one of {EMPTY_SEGMENT}")


# --------------------------------------------------------------------------------------------
# Segments, encoding and decoding
# --------------------------------------------------------------------------------------------

@dataclass
class Encoding:
    """Per segment: its layers, width, group count, and per class the kernels of each group."""

    segments: list[dict]                    # {"name", "layers", "kernels", "groups"}
    membership: list[torch.Tensor]          # per segment: (N, groups, kernels) bool
    order: list[torch.Tensor]               # per segment: (N, kernels) kernel indices, most important first

    @property
    def genes(self) -> int:
        return sum(s["groups"] for s in self.segments)

    def offsets(self) -> list[tuple[int, int]]:
        out, a = [], 0
        for s in self.segments:
            out.append((a, a + s["groups"]))
            a += s["groups"]
        return out


def coupled_segments(model: nn.Module, layers) -> list[list[str]]:
    """Maskable layers grouped by channel coupling (the layers adding into one residual stream share
    channel indices): the connected components of "is an output member of the other's group"."""
    graph = layers.graph
    by_conv = {layer.conv: layer.name for layer in layers}
    parent = {layer.name: layer.name for layer in layers}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for layer in layers:
        for item in pruning_group(graph, layer.conv).items:
            other = by_conv.get(item.dep.target.module)
            if other is not None and graph.is_out_channel_pruning_fn(item.dep.handler):
                parent[find(other)] = find(layer.name)
    groups: dict[str, list[str]] = {}
    for layer in layers:
        groups.setdefault(find(layer.name), []).append(layer.name)
    return list(groups.values())


def build_encoding(importance: dict[str, torch.Tensor], segments: list[list[str]], cfg: CNNSplitterConfig) -> Encoding:
    """Group each segment's kernels by importance, per class (``numpy.array_split`` sizes)."""
    segs, members, orders = [], [], []
    for names in segments:
        imp = sum(importance[n] for n in names)             # N × K (summed over coupled layers)
        n_cls, k = imp.shape
        ng = min(k, cfg.groups_small if k < cfg.large_from else cfg.groups_large)
        order = torch.argsort(imp, dim=1, descending=True, stable=True)
        sizes = [len(part) for part in np.array_split(np.arange(k), ng)]
        group_of_rank = torch.repeat_interleave(torch.arange(ng), torch.tensor(sizes))   # rank → group
        m = torch.zeros(n_cls, ng, k, dtype=torch.bool)
        for c in range(n_cls):
            m[c, group_of_rank, order[c]] = True
        segs.append({"name": names[0], "layers": names, "kernels": k, "groups": ng})
        members.append(m)
        orders.append(order)
    return Encoding(segs, members, orders)


def decode(bits: torch.Tensor, c: int, enc: Encoding, empty: str = "top1") -> list[torch.Tensor]:
    """Chromosomes ``(P, genes)`` of class ``c`` → per segment the kept kernels ``(P, K)`` bool."""
    out = []
    for (a, b), m, order in zip(enc.offsets(), enc.membership, enc.order):
        kept = (bits[:, a:b].float() @ m[c].float()) > 0
        empty_rows = ~kept.any(1)
        if empty_rows.any():
            kept[empty_rows, int(order[c, 0]) if empty == "top1" else 0] = True
        out.append(kept)
    return out


def layer_masks(kept: list[torch.Tensor], enc: Encoding, row: int | None = None) -> dict[str, torch.Tensor]:
    """Segment masks → ``{layer: (P, C)}`` (or ``(C,)`` for one ``row``) float masks."""
    out = {}
    for seg, k in zip(enc.segments, kept):
        for name in seg["layers"]:
            out[name] = (k if row is None else k[row]).float()
    return out


def initial_population(enc: Encoding, ratios: list[list[float]], cfg: CNNSplitterConfig,
                       generator: torch.Generator) -> torch.Tensor:
    """``(P, genes)`` bits: per segment a ratio from its list, then that share of groups, drawn
    without replacement with probability ∝ exp((ng − 1 − i) / 10)."""
    pop = torch.zeros(cfg.population, enc.genes, dtype=torch.bool)
    for (a, b), seg, rs in zip(enc.offsets(), enc.segments, ratios):
        ng = seg["groups"]
        weights = torch.exp((ng - 1 - torch.arange(ng, dtype=torch.float64)) / 10)
        for p in range(cfg.population):
            r = rs[int(torch.randint(len(rs), (1,), generator=generator))]
            n_active = max(1, int(ng * r))
            chosen = torch.multinomial(weights, n_active, replacement=False, generator=generator)
            pop[p, a + chosen] = True
    return pop


def next_generation(pop: torch.Tensor, fitness: torch.Tensor, cfg: CNNSplitterConfig,
                    generator: torch.Generator) -> torch.Tensor:
    """Steady-state selection, single-point crossover, random mutation, elitism (spec §5.3)."""
    p, g = pop.shape
    order = ranked(fitness)
    parents = pop[order[:cfg.parents_mating]]
    n_off = p - cfg.keep_parents
    k = torch.arange(n_off)
    first, second = parents[k % len(parents)], parents[(k + 1) % len(parents)]
    points = torch.randint(0, g, (n_off,), generator=generator)
    children = torch.where(torch.arange(g)[None, :] < points[:, None], first, second).clone()
    m = int(np.uint32(cfg.mutation_percent * g / 100))
    if m:
        pos = torch.rand(n_off, g, generator=generator).argsort(1)[:, :m]
        vals = torch.randint(0, 2, (n_off, m), generator=generator).bool()
        children.scatter_(1, pos, vals)
    return torch.cat([pop[order[:cfg.keep_parents]], children])


# --------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------

@dataclass
class CNNSplitterResult:
    """The best generation's ensemble and everything that led to it."""

    masks: list[dict[str, torch.Tensor]]    # per class: {layer: (C,) bool}
    history: list[dict]
    best_generation: int
    importance: dict[str, list]
    sensitivity: dict
    ratios: dict
    sensitive: dict
    evaluation: dict
    config: dict
    layers: list[str]
    seconds: float = 0.0

    def krr_per_module(self) -> list[float]:
        total = sum(v.numel() for v in self.masks[0].values())
        return [sum(int(v.sum()) for v in m.values()) / total for m in self.masks]


def _save_state(folder: Path, state: dict, tensors: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / "state.safetensors", tensors)
    atomic_write_json(folder / "state.json", state)


#: settings a resumed search may change: how long it runs and how it evaluates
RESUMABLE_CHANGES = ("generations", "patience", "eval_mode", "chunk")


def _check_resumable(saved: dict, now: dict, folder: Path) -> None:
    now = json.loads(json.dumps(now))                            # as the checkpoint stores it (string keys)
    saved = {"precision": "fp32", **saved}                       # a search saved before the field existed ran in fp32
    for k in sorted(set(saved) | set(now)):
        if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k):
            raise CheckpointError(f"the search in {folder} ran with {k}={saved.get(k)!r}, this call has {k}={now.get(k)!r}; "
                                  f"only {RESUMABLE_CHANGES} may change on resume (use another folder)")


def checkpoint_folder(cache: str | Path, model_key: str, cfg: CNNSplitterConfig, **data) -> Path:
    """A checkpoint folder for a model and the settings a resume may not change (plus ``data``, e.g. the
    validation sizes): later calls with more generations go on from it, calls with the same settings reuse it."""
    fixed = strip_default({k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_CHANGES})
    return Path(cache) / model_key / f"cnnsplitter-{config_hash({**fixed, **data})}"


def search(model: nn.Module, train: D.ImageDataset, val: D.ImageDataset, cfg: CNNSplitterConfig | None = None,
           device: str = "auto", progress: bool = False, checkpoint: str | Path | None = None,
           select: D.ImageDataset | None = None) -> CNNSplitterResult:
    """Run CNNSplitter on a trained model; ``train`` gives the kernel importance, ``val`` the fitness.

    The best generation is the one whose ensemble (each class's fittest candidate) scores the highest
    ``alpha · accuracy + (1 − alpha) · diversity``. As published, that accuracy is measured on ``val``,
    the images the search fits; with ``select``, held-out images disjoint from ``val`` measure it
    instead (the spec's advice: a search subset and a selection subset), so the choice does not
    reward the generations that fit ``val``'s few images best. Each generation's ensemble accuracy on
    ``select`` is in its history row (``selection_accuracy``).

    With ``checkpoint``, the populations and random states are written there after every generation,
    and a later call with the same folder resumes from the last generation written. A call asking for
    fewer generations than the checkpoint holds searches anew without it (with a warning) and leaves it
    as it is: the checkpoint's best may come from a generation after the ones asked for.
    """
    cfg = cfg or CNNSplitterConfig()
    t_start = time.perf_counter()
    dev = resolve_device(device)
    seed_everything(cfg.seed)
    model = model.eval().to(dev)
    n = train.num_classes
    if select is not None and (select.num_classes != n or len(select) == 0):
        raise ParameterError(f"select must hold images of the model's {n} classes, got {len(select)} images of "
                             f"{select.num_classes} classes")
    layers = find_maskable_layers(model, torch.zeros(1, *train.shape, device=dev))
    importance = kernel_importance(model, train, layers, device=dev, confidence=cfg.confidence,
                                   fallback=cfg.confidence_fallback)
    enc = build_encoding(importance, coupled_segments(model, layers), cfg)
    evaluator = Evaluator(model, layers, val, cfg, dev)
    folder = Path(checkpoint) if checkpoint is not None else None
    selection = select.fingerprint() if select is not None else None   # what picks the best generation
    state = read_json(folder / "state.json") if folder is not None and (folder / "state.json").is_file() else None
    if state is not None:
        _check_resumable(state.get("config", {}), asdict(cfg), folder)
        if state.get("selection") != selection:     # its best so far was picked on other images
            raise CheckpointError(f"the search in {folder} picked its best generation on "
                                  f"{'other held-out images' if state.get('selection') else 'its search images'}, "
                                  f"this call on {'held-out images (select)' if selection else 'its search images'}; "
                                  "use another folder")
        ran = int(state["next_generation"]) - 1
        if ran > cfg.generations:       # its best may come from a later generation: it is not this search's result
            warnings.warn(f"the search in {folder} has run {ran} generations, more than generations={cfg.generations}: "
                          "searching anew without it (the checkpoint is left as it is)", stacklevel=2)
            folder, state = None, None
    if state is not None and "ratios" in state:                 # a resumed search reuses its sensitivity pass
        sens, ratios, r_min = state["sensitivity"], state["ratios"], state["r_min"]
    elif cfg.ratios is None:
        sens = layer_sensitivity(model, layers, enc, evaluator, cfg.sensitivity_grid)
        ratios, r_min = ratios_from_sensitivity(sens, cfg.sensitivity_tolerance, cfg.sensitivity_offsets)
    else:
        unknown = set(cfg.ratios) - {s["name"] for s in enc.segments}
        if unknown:
            raise ValueError(f"ratios name segments {sorted(unknown)}; segments: {[s['name'] for s in enc.segments]}")
        sens, r_min = {}, {}
        ratios = {s["name"]: list(cfg.ratios.get(s["name"], [1.0])) for s in enc.segments}
    sensitive = {k: v >= 0.5 for k, v in r_min.items()}
    gens = [torch.Generator().manual_seed(cfg.seed * 1000 + c) for c in range(n)]
    recorder_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 999)
    start, history, best, weight = 0, [], None, cfg.alpha
    pops = [initial_population(enc, [ratios[s["name"]] for s in enc.segments], cfg, g) for g in gens]
    if state is not None:
        tensors = load_tensors(folder / "state.safetensors")
        pops = [tensors[f"pop.{c}"].bool() for c in range(n)]
        for c, g in enumerate(gens):
            g.set_state(tensors[f"rng.{c}"])
        recorder_gen.set_state(tensors["rng.recorder"])
        start, history, best, weight = state["next_generation"], state["history"], state["best"], state["weight"]
    calibration = state.get("calibration") if state is not None else None
    done = (state or {}).get("evaluation", {"evaluated": 0, "cache_hits": 0})
    if calibration is not None and cfg.eval_mode == "auto":
        evaluator.mode = calibration["chosen"]                   # a resumed search keeps its measured choice
    labels = val.labels
    select_x = select.float_images().to(dev) if select is not None else None
    for gen in range(start, cfg.generations + 1):
        t0 = time.perf_counter()
        pop_masks, kernel_bits = [], []
        for c in range(n):
            kept = decode(pops[c], c, enc, cfg.empty_segment)
            pop_masks.append(layer_masks(kept, enc))
            kernel_bits.append(torch.cat(kept, dim=1))
            if calibration is None:
                calibration = evaluator.calibrate(c, pop_masks[c])
        rows, slice_seconds = promising(evaluator, pops, pop_masks, kernel_bits, weight, cfg, recorder_gen)
        logits = [evaluator.logits(c, pops[c][rows[c]], {k: v[rows[c]] for k, v in pop_masks[c].items()})
                  for c in range(n)]
        t1 = time.perf_counter()
        audit_rng = recorder_gen.get_state() if cfg.halving_audit and cfg.halving is not None else None
        scored, top = cooperative_fitness(logits, labels, [kernel_bits[c][rows[c]] for c in range(n)], weight,
                                          cfg.alpha, cfg.acc_thresholds, recorder_gen, cfg.keep_min, cfg.keep_max)
        t2 = time.perf_counter()
        fitness = torch.full((n, pops[0].shape[0]), -1.0)      # candidates not scored on every image: below all
        for c in range(n):
            fitness[c, rows[c]] = scored[c]
        best_row = [int(torch.argmax(scored[c])) for c in range(n)]
        chosen = [int(rows[c][best_row[c]]) for c in range(n)]
        own = torch.stack([logits[c][best_row[c]] for c in range(n)])
        acc = composed_accuracy(own, labels)
        chosen_bits = torch.stack([kernel_bits[c][chosen[c]] for c in range(n)])
        j = pairwise_jaccard(chosen_bits, chosen_bits)
        diff = float((1 - j).sum() / (n * (n - 1))) if n > 1 else 0.0
        select_acc = None
        if select_x is not None:                                # the ensemble on held-out images
            own_select = torch.cat([evaluator.held_out_logits(c, pops[c][chosen[c]:chosen[c] + 1],
                                                              {k: v[chosen[c]:chosen[c] + 1] for k, v in pop_masks[c].items()},
                                                              select_x) for c in range(n)])
            select_acc = composed_accuracy(own_select, select.labels)
        valid_fitness = cfg.alpha * (acc if select_acc is None else select_acc) + (1 - cfg.alpha) * diff
        row = {"generation": gen, "best_fitness": float(fitness.max()), "best_compose_fitness": top["fitness"],
               "best_compose_accuracy": top["accuracy"], "ensemble_accuracy": acc, "ensemble_diff": diff,
               "ensemble_fitness": valid_fitness, "weight": weight, "evaluated": evaluator.evaluated,
               "cache_hits": evaluator.hits, "seconds_evaluate": t1 - t0 - slice_seconds, "seconds_fitness": t2 - t1 + slice_seconds,
               "krr": float(chosen_bits.float().mean())}
        if select_acc is not None:
            row["selection_accuracy"] = select_acc
        if cfg.halving is not None:
            row["evaluated_slice_only"] = evaluator.evaluated_slice
            if audit_rng is not None:
                row["halving_parents_changed"] = _audit_halving(evaluator, pops, pop_masks, kernel_bits, fitness,
                                                                weight, cfg, audit_rng)
        history.append(row)
        if best is None or valid_fitness > best["fitness"]:
            best = {"generation": gen, "fitness": valid_fitness, "bits": [pops[c][chosen[c]].tolist() for c in range(n)]}
        weight = cfg.alpha + max(0.0, cfg.gamma - top["accuracy"])
        stop = (cfg.patience is not None and best is not None and gen - best["generation"] >= cfg.patience)
        # always advanced, so that a checkpoint holds the next generation's population and a later
        # call with more generations (or a larger patience) goes on from it
        pops = [next_generation(pops[c], fitness[c], cfg, gens[c]) for c in range(n)]
        if folder is not None:
            tensors = {f"pop.{c}": pops[c].to(torch.uint8) for c in range(n)}
            tensors.update({f"rng.{c}": g.get_state() for c, g in enumerate(gens)})
            tensors["rng.recorder"] = recorder_gen.get_state()
            _save_state(folder, {"next_generation": gen + 1, "history": history, "best": best, "weight": weight,
                                 "config": asdict(cfg), "sensitivity": sens, "ratios": ratios, "r_min": r_min,
                                 "calibration": calibration, "selection": selection,
                                 "evaluation": {"evaluated": done["evaluated"] + evaluator.evaluated,
                                                "cache_hits": done["cache_hits"] + evaluator.hits}},
                        tensors)
        if progress:
            print(f"generation {gen}: ensemble accuracy {acc:.3f}, KRR {row['krr']:.3f}, fitness {valid_fitness:.3f}",
                  flush=True)
        if stop:
            break
    masks = []
    for c in range(n):
        kept = decode(torch.tensor([best["bits"][c]], dtype=torch.bool), c, enc, cfg.empty_segment)
        masks.append({k: v.bool() for k, v in layer_masks(kept, enc, row=0).items()})
    evaluation = {**(calibration or {}), "cache_hits": done["cache_hits"] + evaluator.hits,
                  "evaluated": done["evaluated"] + evaluator.evaluated}
    return CNNSplitterResult(masks, history, best["generation"], {k: v.tolist() for k, v in importance.items()}, sens,
                             ratios, sensitive, evaluation, asdict(cfg), [layer.name for layer in layers],
                             time.perf_counter() - t_start)


@dataclass
class SearchSetup:
    """What notebooks 20 and 21 share: the trained model, its data, the search's validation subset,
    config and checkpoint (the same parameters give the same checkpoint, so a notebook with 20's values reuses
    its search)."""

    spec: object
    data: object
    model: nn.Module
    record: dict
    search_val: D.ImageDataset
    cfg: CNNSplitterConfig
    checkpoint: Path
    select_val: D.ImageDataset | None = None   # held-out images that pick the best generation (None: search_val)


def prepare_search(params: dict, cache: str | Path, device: str = "auto") -> SearchSetup:
    """Train (or load) the model the notebook parameters describe and build the search's config.

    Uses the parameters ``arch, width, dataset, per_class, test_per_class, epochs, lr, augment,
    seed, search_val_per_class``, the optional ``select_val_per_class`` (validation images per class,
    disjoint from the search's, that pick the best generation; None or absent: the search's own, as
    published) and every field of :class:`CNNSplitterConfig` present in ``params``.
    """
    from dataclasses import fields

    from . import train as T

    seed = params["seed"]
    n_select = params.get("select_val_per_class")
    if n_select is not None and (params["search_val_per_class"] is None or n_select <= 0):   # before any training
        raise ParameterError(f"select_val_per_class={n_select!r} needs a positive value and search_val_per_class "
                             f"set (got {params['search_val_per_class']!r}): the selection images are the "
                             "validation images the search does not use")
    spec = T.ModelSpec(arch=params["arch"], width=params["width"], dataset=params["dataset"],
                       per_class=params["per_class"], test_per_class=params["test_per_class"], data_seed=seed,
                       fit=T.FitConfig(epochs=params["epochs"], lr=params["lr"], augment=params["augment"], seed=seed,
                                       precision=params.get("precision", "fp32")))
    data = T.spec_data(spec)
    model, record = T.train_cached(spec, cache=cache, device=device, data=data)
    names = {f.name for f in fields(CNNSplitterConfig)}
    cfg = CNNSplitterConfig(**{k: v for k, v in params.items() if k in names})
    sizes = {"val_per_class": params["search_val_per_class"]}
    if n_select is None:
        search_val, select_val = D.limit_per_class(data.val, params["search_val_per_class"], seed=seed), None
    else:
        search_val, select_val = D.disjoint_per_class(data.val, params["search_val_per_class"], n_select, seed=seed)
        sizes["select_per_class"] = n_select
    checkpoint = checkpoint_folder(cache, spec.key(), cfg, **sizes)
    return SearchSetup(spec, data, model, record, search_val, cfg, checkpoint, select_val)


# --------------------------------------------------------------------------------------------
# Modules and their evaluation
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def own_class_logits(model: nn.Module, result: CNNSplitterResult, ds: D.ImageDataset, device: str = "auto") -> torch.Tensor:
    """``(N, len(ds))``: module c's class-c logit for every sample, all modules in one batched pass."""
    dev = resolve_device(device)
    model = model.eval().to(dev)
    layers = find_maskable_layers(model, torch.zeros(1, *ds.shape, device=dev))
    n = len(result.masks)
    masks = {k: torch.stack([m[k].float() for m in result.masks]).to(dev) for k in result.masks[0]}
    parts = [batched_forward(model, x.to(dev), masks, layers, share_first=True).cpu()
             for x, _ in D.TensorLoader(ds, 256)]
    logits = torch.cat(parts, dim=1)
    return logits[torch.arange(n), :, torch.arange(n)]


def evaluate_modules(model: nn.Module, result: CNNSplitterResult, test: D.ImageDataset, device: str = "auto") -> dict:
    """Test accuracy of the model and of the N modules composed; KRR per module."""
    from .train import predict

    own = own_class_logits(model, result, test, device)
    acc_model = float((predict(model, test, device=device).argmax(1) == test.labels).float().mean())
    krr = result.krr_per_module()
    return {"accuracy_model": acc_model, "accuracy_composed_modules": composed_accuracy(own, test.labels),
            "krr_per_module": krr, "krr_mean": sum(krr) / len(krr)}


def to_module(model: nn.Module, result: CNNSplitterResult, c: int, train: D.ImageDataset,
              metrics: dict | None = None, lineage: list | None = None) -> Module:
    """Module ``c``: the extracted network and its own-class logit (the original head restricted to the
    kept channels) as its one output."""
    (c,) = check_classes([c], len(result.masks), train.name, what="module class")
    task = {"dataset": train.name, "classes": [c], "class_names": [train.class_names[c]], "kind": "logit"}
    config = {**result.config, "best_generation": result.best_generation}
    return Module.create(model, {k: v.float() for k, v in result.masks[c].items()}, task,
                         {"type": "select", "classes": [c]}, approach="cnnsplitter", config=config,
                         metrics=metrics or {}, lineage=lineage or [], input_shape=train.shape, dataset=train.name,
                         on_empty="keep_one")
