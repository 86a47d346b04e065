"""Ranking metrics: pure functions on ranked doc ids and relevant-id sets, plus agreement measures.

Light module: numpy only. Per-query functions take `ranked` (doc ids, best first) and `relevant`
(a set of relevant doc ids); `mean_metrics` averages them over queries.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np


def _distinct(ranked: Sequence[Hashable]) -> list:
    """A ranking lists each document once: later repeats are dropped."""
    return list(dict.fromkeys(ranked))


def precision_at_k(ranked: Sequence[Hashable], relevant: set, k: int) -> float:
    """Relevant documents among the first k positions, divided by k (missing positions count as misses)."""
    ranked = _distinct(ranked)
    return sum(1 for d in ranked[:k] if d in relevant) / k


def recall_at_k(ranked: Sequence[Hashable], relevant: set, k: int) -> float:
    if not relevant:
        return 0.0
    return sum(1 for d in _distinct(ranked)[:k] if d in relevant) / len(relevant)


def dcg_at_k(gains: Sequence[float], k: int) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains[:k]))


def ndcg_at_k(ranked: Sequence[Hashable], relevant: set, k: int) -> float:
    """Binary-gain NDCG@k; the ideal ranking puts min(k, |relevant|) relevant documents first."""
    if not relevant:
        return 0.0
    ideal = dcg_at_k([1.0] * min(k, len(relevant)), k)
    return dcg_at_k([1.0 if d in relevant else 0.0 for d in _distinct(ranked)[:k]], k) / ideal


def mrr_at_k(ranked: Sequence[Hashable], relevant: set, k: int) -> float:
    for i, d in enumerate(ranked[:k]):
        if d in relevant:
            return 1.0 / (i + 1)
    return 0.0


METRICS = {"P": precision_at_k, "R": recall_at_k, "NDCG": ndcg_at_k, "MRR": mrr_at_k}


def mean_metrics(
    runs: Iterable[tuple[Sequence[Hashable], set]], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Average each metric@k over queries: {'P@1': ..., 'NDCG@5': ..., ...}."""
    totals: dict[str, float] = {}
    n = 0
    for ranked, relevant in runs:
        n += 1
        for name, fn in METRICS.items():
            for k in ks:
                key = f"{name}@{k}"
                totals[key] = totals.get(key, 0.0) + fn(ranked, relevant, k)
    return {key: value / n for key, value in totals.items()} if n else {}


def noise_ratio(handed_on: Iterable[tuple[Sequence[Hashable], set]]) -> float:
    """Share of passages handed on (over all queries) that are not relevant; 0.0 if nothing is handed on."""
    passed = irrelevant = 0
    for ranked, relevant in handed_on:
        passed += len(ranked)
        irrelevant += sum(1 for d in ranked if d not in relevant)
    return irrelevant / passed if passed else 0.0


# -- agreement between two scorings of the same candidates --------------------------------------------


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), 0-based."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.zeros(len(counts))
    np.add.at(sums, inverse, ranks)
    return (sums / counts)[inverse]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation; 1.0 when both are constant (identical orderings), nan if only one is."""
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    sa, sb = ra.std(), rb.std()
    if sa == 0 and sb == 0:
        return 1.0
    if sa == 0 or sb == 0:
        return float("nan")
    return float(np.mean((ra - ra.mean()) * (rb - rb.mean())) / (sa * sb))


def top_k_overlap(a: Sequence[float], b: Sequence[float], k: int = 5) -> float:
    """|top-k by a ∩ top-k by b| / k (ties broken by position, so the measure is deterministic)."""
    k = min(k, len(a))
    if k == 0:
        return 1.0
    idx = np.arange(len(a))
    top_a = set(np.lexsort((idx, -np.asarray(a)))[:k].tolist())
    top_b = set(np.lexsort((idx, -np.asarray(b)))[:k].tolist())
    return len(top_a & top_b) / k


def ranking_agreement(
    reference: Mapping[Hashable, np.ndarray], other: Mapping[Hashable, np.ndarray], k: int = 5
) -> dict[str, float]:
    """Per-query Spearman and top-k overlap of `other` against `reference`, averaged over queries."""
    rhos, overlaps, max_diff = [], [], 0.0
    for key, ref in reference.items():
        got = other[key]
        rhos.append(spearman(ref, got))
        overlaps.append(top_k_overlap(ref, got, k))
        max_diff = max(max_diff, float(np.max(np.abs(np.asarray(ref) - np.asarray(got)))))
    return {
        "spearman_mean": float(np.nanmean(rhos)),
        "spearman_min": float(np.nanmin(rhos)),
        f"top{k}_overlap_mean": float(np.mean(overlaps)),
        f"top{k}_overlap_min": float(np.min(overlaps)),
        "max_abs_diff_score": max_diff,
        "queries": len(rhos),
    }
