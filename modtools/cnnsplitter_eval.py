"""CNNSplitter's candidate evaluation: own-class logits of candidate modules (masked in one batched
pass, or rebuilt smaller), cached per chromosome; the automatic layer-sensitivity pass; and the
optional successive halving (score on a stratified slice first, then only the promising candidates
on every image). :mod:`modtools.cnnsplitter` runs the search with them."""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn as nn

from . import data as D
from .cnnsplitter_fitness import cooperative_fitness
from .errors import MaskShapeError, UnsupportedModelError
from .extract import extract
from .masks import batched_forward, channels_last_on_cpu
from .precision import autocast
from .rebuild import Rebuilder

if TYPE_CHECKING:
    from .cnnsplitter import CNNSplitterConfig, Encoding


REBUILT_CHUNK = 128   # images per forward pass of a rebuilt candidate (200 → 2 × 100: measured fastest on a 2-core CPU)


def ranked(fitness: torch.Tensor) -> torch.Tensor:
    """Indices by descending fitness; among equals the later index first (as the original's reversed
    stable sort)."""
    return torch.tensor(sorted(range(len(fitness)), key=lambda i: (-float(fitness[i]), -i)), dtype=torch.long)


# --------------------------------------------------------------------------------------------
# Importance, sensitivity, candidate evaluation
# --------------------------------------------------------------------------------------------

class Evaluator:
    """Own-class logits of candidate modules on the cached validation inputs.

    With ``cfg.halving``, a stratified ``halving`` share of the images (every class in proportion)
    is the first round's slice: :meth:`slice_logits` scores candidates there, and :meth:`logits`
    completes a candidate on the other images only when asked for all of them."""

    def __init__(self, model: nn.Module, layers, val: D.ImageDataset, cfg: CNNSplitterConfig, device):
        self.model, self.layers, self.cfg, self.device = model, layers, cfg, device
        self.x = val.float_images().to(device)             # the inputs, cached as one tensor
        self.labels = val.labels
        self.cache: dict[tuple[int, bytes], torch.Tensor] = {}      # full rows (V,)
        self.partial: dict[tuple[int, bytes], torch.Tensor] = {}    # first-round rows (S,)
        self.held_out: dict[tuple[int, bytes], torch.Tensor] = {}   # rows on the selection images
        self.evaluated = 0          # candidates scored on every image
        self.evaluated_slice = 0    # candidates scored on the first-round slice only so far
        self.hits = 0
        self.mode = cfg.eval_mode
        self.unshared: set[str] = set()   # layers a skip connection goes around (no shared prefix there)
        self._order: dict[str, int] | None = None
        self._rebuild = None
        self.slice_idx, self.rest_idx = stratified_slice(self.labels, cfg.halving or 1.0)

    @torch.no_grad()
    def masked(self, c: int, masks: dict[str, torch.Tensor], x: torch.Tensor | None = None) -> torch.Tensor:
        """``(P, V)`` own-class logits of P masked candidates of class c, in chunks of ``cfg.chunk``."""
        x = self.x if x is None else x
        p = next(iter(masks.values())).shape[0]
        out = []
        with channels_last_on_cpu(self.model, self.device), autocast(self.cfg.precision, self.device):
            for a in range(0, p, self.cfg.chunk):
                sub = {k: v[a:a + self.cfg.chunk].to(self.device) for k, v in masks.items()}
                parts = [batched_forward(self.model, x[s:s + 256], sub, self.layers, share_first=True)[:, :, c]
                         for s in range(0, len(x), 256)]
                out.append(torch.cat(parts, dim=1).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def rebuilt(self, c: int, masks: dict[str, torch.Tensor], x: torch.Tensor | None = None) -> torch.Tensor:
        """The same by building each candidate's smaller network (:meth:`_builder`) and running it."""
        x = self.x if x is None else x
        if torch.device(self.device).type == "cpu":      # CPU convolutions and pooling run faster channels-last
            x = x.contiguous(memory_format=torch.channels_last)
        p = next(iter(masks.values())).shape[0]
        rows = []
        build = self._builder()
        # even chunks of at most REBUILT_CHUNK images: a narrow network's activations then stay in cache
        parts = torch.tensor_split(x, math.ceil(len(x) / REBUILT_CHUNK)) if len(x) else [x]
        for i in range(p):
            net = build({k: v[i] for k, v in masks.items()})
            with autocast(self.cfg.precision, self.device):
                rows.append(torch.cat([net(part)[:, c] for part in parts]).float().cpu())
        return torch.stack(rows)

    def _builder(self):
        """Mask → smaller network: a :class:`~modtools.rebuild.Rebuilder` (structure analysed once),
        or :func:`~modtools.extract.extract` per candidate for a model the rebuilder does not support."""
        if self._rebuild is None:
            size = int(self.x.shape[-1])
            try:
                self._rebuild = Rebuilder(self.model, image_size=size).build
            except UnsupportedModelError:
                self._rebuild = lambda masks: extract(self.model, masks, on_empty="keep_one", image_size=size,
                                                      verify=False)[0].to(self.device)
        return self._rebuild

    def _run(self, c: int, masks: dict[str, torch.Tensor], rows: list[int], x: torch.Tensor) -> torch.Tensor:
        sub = {k: v[rows] for k, v in masks.items()}
        return self.masked(c, sub, x) if self.mode == "masked" else self.rebuilt(c, sub, x=x)

    def execution_order(self) -> dict[str, int]:
        """Each layer's position in the forward pass (found once, on one input)."""
        if self._order is None:
            seen: list[str] = []
            handles = [layer.conv.register_forward_pre_hook(lambda m, i, name=layer.name: seen.append(name))
                       for layer in self.layers]
            try:
                with torch.no_grad():
                    self.model(self.x[:1])
            finally:
                for h in handles:
                    h.remove()
            self._order = {name: i for i, name in enumerate(dict.fromkeys(seen))}
            for layer in self.layers:                      # a layer the pass did not reach goes last
                self._order.setdefault(layer.name, len(self._order))
        return self._order

    def calibrate(self, c: int, masks: dict[str, torch.Tensor]) -> dict:
        """Time both ways on two candidates and keep the faster one (when ``eval_mode="auto"``); each
        way runs once on one candidate first, so that one-off costs (the rebuilder's analysis, the
        first call of a kernel) do not count."""
        two = {k: v[:2] for k, v in masks.items()}
        one = {k: v[:1] for k, v in masks.items()}
        self.masked(c, one)
        self.rebuilt(c, one)
        t0 = time.perf_counter()
        self.masked(c, two)
        t1 = time.perf_counter()
        self.rebuilt(c, two)
        t2 = time.perf_counter()
        times = {"masked": (t1 - t0) / 2, "rebuild": (t2 - t1) / 2}
        if self.mode == "auto":
            self.mode = min(times, key=times.get)
        return {"seconds_per_candidate": times, "chosen": self.mode}

    @staticmethod
    def _keys(c: int, bits: torch.Tensor) -> list[tuple[int, bytes]]:
        return [(c, bytes(np.packbits(row.numpy()))) for row in bits]

    def logits(self, c: int, bits: torch.Tensor, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(P, V)`` own-class logits on every image; chromosomes seen before come from the cache,
        and one scored on the first-round slice runs on the other images only."""
        keys = self._keys(c, bits)
        first: dict = {}
        for i, k in enumerate(keys):
            if k not in self.cache:
                first.setdefault(k, i)                     # duplicates within the batch: evaluated once
        self.hits += len(keys) - len(first)
        rest = [i for k, i in first.items() if k in self.partial]
        whole = [i for k, i in first.items() if k not in self.partial]
        if rest:
            for i, row in zip(rest, self._run(c, masks, rest, self.x[self.rest_idx])):
                full = torch.empty(len(self.x))
                full[self.slice_idx], full[self.rest_idx] = self.partial.pop(keys[i]), row
                self.cache[keys[i]] = full
            self.evaluated_slice -= len(rest)
        if whole:
            for i, row in zip(whole, self._run(c, masks, whole, self.x)):
                self.cache[keys[i]] = row
        self.evaluated += len(first)
        return torch.stack([self.cache[k] for k in keys])

    def held_out_logits(self, c: int, bits: torch.Tensor, masks: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``(P, len(x))`` own-class logits on other images ``x`` (the selection subset), cached per
        chromosome apart from the search's cache, and not counted as evaluated candidates."""
        keys = self._keys(c, bits)
        todo = [i for i, k in enumerate(keys) if k not in self.held_out]
        if todo:
            for i, row in zip(todo, self._run(c, masks, todo, x)):
                self.held_out[keys[i]] = row
        return torch.stack([self.held_out[k] for k in keys])

    def slice_logits(self, c: int, bits: torch.Tensor, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(P, S)`` own-class logits on the first-round slice only (``slice_idx``)."""
        keys = self._keys(c, bits)
        first: dict = {}
        for i, k in enumerate(keys):
            if k not in self.cache and k not in self.partial:
                first.setdefault(k, i)
        self.hits += len(keys) - len(first)
        if first:
            todo = list(first.values())
            for i, row in zip(todo, self._run(c, masks, todo, self.x[self.slice_idx])):
                self.partial[keys[i]] = row
            self.evaluated_slice += len(todo)
        return torch.stack([self.cache[k][self.slice_idx] if k in self.cache else self.partial[k] for k in keys])


def stratified_slice(labels: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the first ``ceil(fraction × n_c)`` samples of every class c (in their order), and the rest."""
    first = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        first[idx[:max(1, math.ceil(fraction * len(idx)))]] = True
    return torch.nonzero(first).flatten(), torch.nonzero(~first).flatten()


def composed_accuracy(own_logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of the argmax over N modules' own-class logits ``(N, V)``."""
    return float((own_logits.argmax(0) == labels).float().mean())


@torch.no_grad()
def layer_sensitivity(model: nn.Module, layers, enc: Encoding, evaluator: Evaluator, grid: Sequence[float]) -> dict:
    """Per segment and ratio: the composed validation accuracy when only that segment is pruned, all N
    modules in one batched pass (module c keeps the top ratio of the segment by class-c importance).

    Only the segment is masked, so the network before it is the same for all N modules: it runs
    once, and the activations are repeated N times at the segment (where the network allows it)."""
    n = enc.membership[0].shape[0]
    base = composed_accuracy(_own(evaluator, {}, n), evaluator.labels)   # no mask: the model's own logits
    order_of = evaluator.execution_order()
    curves = {}
    for seg, order in zip(enc.segments, enc.order):
        accs = []
        first = min(seg["layers"], key=order_of.__getitem__)
        for r in grid:
            keep = max(1, int(math.floor(r * seg["kernels"])))
            m = torch.zeros(n, seg["kernels"])
            m.scatter_(1, order[:, :keep], 1.0)
            accs.append(composed_accuracy(_own(evaluator, {name: m for name in seg["layers"]}, n, expand_at=first),
                                          evaluator.labels))
        curves[seg["name"]] = accs
    return {"grid": list(grid), "unpruned": base, "curves": curves}


def _own(evaluator: Evaluator, masks: dict[str, torch.Tensor], n: int, expand_at: str | None = None) -> torch.Tensor:
    """Module c's class-c logit for the N masked copies: ``N × V``. With ``expand_at``, the network
    before that layer runs once (falls back to repeating at the first layer where a skip connection
    goes around it)."""
    x = evaluator.x
    masks = {k: v.to(x.device) for k, v in masks.items()}
    if not masks:
        with torch.no_grad():
            logits = torch.cat([evaluator.model(x[s:s + 256]) for s in range(0, len(x), 256)]).cpu()   # V × N
        return logits.T.contiguous()

    def run(at):
        with torch.no_grad(), channels_last_on_cpu(evaluator.model, evaluator.device):
            return torch.cat([batched_forward(evaluator.model, x[s:s + 256], masks, evaluator.layers,
                                              share_first=True, expand_at=at)
                              for s in range(0, len(x), 256)], dim=1).cpu()          # N × V × N

    at = expand_at if expand_at not in evaluator.unshared else None
    try:
        logits = run(at)
    except (RuntimeError, MaskShapeError):
        if at is None:
            raise
        evaluator.unshared.add(at)   # a path goes around this layer: repeat at the first one
        logits = run(None)
    return logits[torch.arange(n), :, torch.arange(n)]          # module c's class-c logit: N × V


def ratios_from_sensitivity(sens: dict, tolerance: float, offsets: Sequence[float] = (0.0, 0.1, 0.2)
                            ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """The stated rule: ``r_min`` = the smallest ratio within ``tolerance`` of the unpruned composed
    accuracy; initial ratios ``r_min + d`` for each offset d (default 0, 0.1, 0.2), clipped to 0.1–1."""
    ratios, r_min = {}, {}
    for name, accs in sens["curves"].items():
        ok = [r for r, a in zip(sens["grid"], accs) if a >= sens["unpruned"] - tolerance]
        r0 = min(ok) if ok else 1.0
        r_min[name] = r0
        ratios[name] = sorted({round(min(1.0, max(0.1, r0 + d)), 2) for d in offsets})
    return ratios, r_min


def promising(evaluator: Evaluator, pops, pop_masks, kernel_bits, weight: float, cfg: CNNSplitterConfig,
              recorder_gen: torch.Generator) -> tuple[list[torch.Tensor], float]:
    """Per class, the population rows to score on every validation image, and the seconds of the
    first round's fitness. Without halving, every row. With it, every candidate is scored on the
    first-round slice, the co-operative fitness ranks them there, and the ``max(parents_mating,
    ceil(halving_keep × P))`` best go on."""
    p = pops[0].shape[0]
    if cfg.halving is None:
        return [torch.arange(p) for _ in pops], 0.0
    first = [evaluator.slice_logits(c, pops[c], pop_masks[c]) for c in range(len(pops))]
    t0 = time.perf_counter()
    fit, _ = cooperative_fitness(first, evaluator.labels[evaluator.slice_idx], kernel_bits, weight, cfg.alpha,
                                 cfg.acc_thresholds, recorder_gen, cfg.keep_min, cfg.keep_max)
    k = min(p, max(cfg.parents_mating, math.ceil(cfg.halving_keep * p)))
    return [ranked(fit[c])[:k].sort().values for c in range(len(pops))], time.perf_counter() - t0


def _audit_halving(evaluator: Evaluator, pops, pop_masks, kernel_bits, fitness: torch.Tensor, weight: float,
                   cfg: CNNSplitterConfig, rng_state: torch.Tensor) -> float:
    """The share of the selected parents that differ from those a full evaluation selects (same
    recorder draw). Scores every candidate on every image (values only; the search goes on as before)."""
    g = torch.Generator()
    g.set_state(rng_state)
    full = [evaluator.logits(c, pops[c], pop_masks[c]) for c in range(len(pops))]
    ref, _ = cooperative_fitness(full, evaluator.labels, kernel_bits, weight, cfg.alpha, cfg.acc_thresholds, g,
                                 cfg.keep_min, cfg.keep_max)
    m = cfg.parents_mating
    changed = sum(len(set(ranked(fitness[c])[:m].tolist()) - set(ranked(ref[c])[:m].tolist()))
                  for c in range(len(pops)))
    return changed / (m * len(pops))
