"""CNNSplitter's co-operative fitness (the "recorder", spec §5.5), with tensor operations only.

Every candidate (a kernel subset of one class's module) is scored by how well it composes with the
other classes' candidates. Each class starts as a group of its ``P`` candidates. Groups are paired
(the class order shuffled per generation) in stages of task sizes 2, 4, 8, … N; a pair's composes
are the Cartesian product of the two groups' composes. A compose's accuracy is that of the argmax
over its members' own-class logits on the validation samples of its classes, its *diff* the mean
``1 − Jaccard`` of its members' kernel sets. The ``clip(#{acc ≥ threshold(task)}, 50, 500)`` most
accurate composes are kept, scored ``w · acc + (1 − α) · diff`` and become the group. After the
last stage a candidate's fitness is the best score of a final compose it belongs to (0 if none).

Nothing is a Python loop over composes: accuracy comes from per-compose maxima of logits
(``(A, B, samples)`` comparisons), Jaccard indices from bit-vector products, and the diff of a
product from the members' precomputed pairwise values.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Group:
    """The kept composes over some classes."""

    classes: list[int]
    members: torch.Tensor      # (M, len(classes)) candidate index per class
    top: torch.Tensor          # (M, V) the largest own-class logit among the members, per sample
    true: torch.Tensor         # (M, V) the logit of the sample's class (valid where its class is in `classes`)
    diff_sum: torch.Tensor     # (M,) Σ over member pairs of 1 − Jaccard
    pairs: int
    acc: torch.Tensor | None = None
    fitness: torch.Tensor | None = None


def pairwise_jaccard(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``J[i, j] = |a_i ∧ b_j| / |a_i ∨ b_j|`` for bit rows of ``a`` (P, K) and ``b`` (Q, K); 1 for two empty rows."""
    af, bf = a.float(), b.float()
    inter = af @ bf.T
    union = af.sum(1)[:, None] + bf.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def task_sizes(n: int) -> list[int]:
    """The stages' task sizes: 2, 4, 8, … and finally ``n`` (``[2, 4, 8, 10]`` for 10 classes)."""
    sizes, s = [], 2
    while s < n:
        sizes.append(s)
        s *= 2
    return sizes + [n]


def threshold_for(size: int, thresholds: dict[int, float]) -> float:
    """The accuracy threshold of a task size: its own, else that of the largest smaller size listed
    (the smallest listed one below them all)."""
    keys = sorted(thresholds)
    below = [k for k in keys if k <= size]
    return float(thresholds[below[-1] if below else keys[0]])


def _all_zero(members: torch.Tensor) -> int | None:
    hit = torch.nonzero((members == 0).all(1)).flatten()
    return int(hit[0]) if len(hit) else None


def _single(c: int, logits: torch.Tensor, labels: torch.Tensor) -> Group:
    p = logits.shape[0]
    return Group([c], torch.arange(p)[:, None], logits.clone(), logits.clone(), torch.zeros(p), 0)


def _combine(a: Group, b: Group, labels: torch.Tensor, jacc: dict, weight: float, alpha: float,
             threshold: float, keep_min: int, keep_max: int, chunk: int = 64) -> Group:
    in_a = torch.isin(labels, torch.tensor(a.classes))
    in_b = torch.isin(labels, torch.tensor(b.classes))
    xa, xb = torch.nonzero(in_a).flatten(), torch.nonzero(in_b).flatten()
    n = len(xa) + len(xb)
    ok_a = (a.true[:, xa] >= a.top[:, xa])                      # the true class wins within a's members
    ok_b = (b.true[:, xb] >= b.top[:, xb])
    accs = []
    for s in range(0, a.members.shape[0], chunk):
        ta, oa = a.true[s:s + chunk, xa], ok_a[s:s + chunk]
        win_a = (oa[:, None, :] & (ta[:, None, :] > b.top[None, :, xa])).sum(2)
        tb, ob = b.true[:, xb], ok_b
        win_b = (ob[None, :, :] & (tb[None, :, :] > a.top[s:s + chunk, None, xb])).sum(2)
        accs.append((win_a + win_b).float() / max(1, n))
    acc = torch.cat(accs)                                       # (A, B)
    cross = torch.zeros_like(acc)
    for i, ci in enumerate(a.classes):
        for j, cj in enumerate(b.classes):
            key = (ci, cj) if (ci, cj) in jacc else (cj, ci)
            jij = jacc[key] if key == (ci, cj) else jacc[key].T
            cross += 1 - jij[a.members[:, i]][:, b.members[:, j]]
    pairs = a.pairs + b.pairs + len(a.classes) * len(b.classes)
    diff = (a.diff_sum[:, None] + b.diff_sum[None, :] + cross) / pairs
    flat_acc, flat_diff = acc.flatten(), diff.flatten()
    n_keep = min(flat_acc.numel(), max(keep_min, min(keep_max, int((flat_acc >= threshold).sum()))))
    order = torch.argsort(flat_acc, descending=True, stable=True)[:n_keep]
    za, zb = _all_zero(a.members), _all_zero(b.members)          # the compose of the previous elites
    if za is not None and zb is not None:
        elite = za * acc.shape[1] + zb
        if not bool((order == elite).any()):
            order = torch.cat([order, torch.tensor([elite])])
    ia, ib = order // acc.shape[1], order % acc.shape[1]
    members = torch.cat([a.members[ia], b.members[ib]], dim=1)
    top = torch.maximum(a.top[ia], b.top[ib])
    true = torch.where(in_a[None, :], a.true[ia], b.true[ib])
    fitness = weight * flat_acc[order] + (1 - alpha) * flat_diff[order]
    resort = torch.argsort(fitness, descending=True, stable=True)
    return Group(a.classes + b.classes, members[resort], top[resort], true[resort],
                 (flat_diff[order] * pairs)[resort], pairs, flat_acc[order][resort], fitness[resort])


def cooperative_fitness(logits: list[torch.Tensor], labels: torch.Tensor, kernel_bits: list[torch.Tensor],
                        weight: float, alpha: float, thresholds: dict, generator: torch.Generator,
                        keep_min: int = 50, keep_max: int = 500) -> tuple[torch.Tensor, dict]:
    """Fitness of every candidate: ``(N, P)``, and the best final compose.

    Args:
        logits: per class c, the own-class logits of its P candidates on the validation samples, (P, V).
        labels: the validation labels (V,).
        kernel_bits: per class c, its candidates' kernel sets as bit rows, (P, K).
        weight: the accuracy weight of this generation (α in generation 0, then α + max(0, γ − best acc)).
        thresholds: task size → accuracy threshold (``{2: .95, 4: .95, 8: .85, 10: .80}``).
    """
    n = len(logits)
    jacc = {(i, j): pairwise_jaccard(kernel_bits[i], kernel_bits[j]) for i in range(n) for j in range(i + 1, n)}
    order = torch.randperm(n, generator=generator).tolist()
    groups = [_single(c, logits[c], labels) for c in order]
    for size in task_sizes(n):
        paired = []
        for k in range(0, len(groups) - 1, 2):
            g = _combine(groups[k], groups[k + 1], labels, jacc, weight, alpha, threshold_for(size, thresholds),
                         keep_min, keep_max)
            paired.append(g)
        if len(groups) % 2:
            paired.append(groups[-1])
        groups = paired
        if len(groups) == 1 and len(groups[0].classes) == n:
            break
    final = groups[0]
    p = logits[0].shape[0]
    fitness = torch.zeros(n, p)
    for i, c in enumerate(final.classes):
        fitness[c].scatter_reduce_(0, final.members[:, i], final.fitness, reduce="amax", include_self=True)
    best = {"members": {c: int(final.members[0, i]) for i, c in enumerate(final.classes)},
            "accuracy": float(final.acc[0]), "diff": float(final.diff_sum[0] / final.pairs),
            "fitness": float(final.fitness[0])}
    return fitness, best
