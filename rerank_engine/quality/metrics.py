"""Ranking metrics: pure functions on ranked doc ids and relevant-id sets (how one scorer agrees with
another is `serving.agreement`).

Light module: numpy only. Per-query functions take `ranked` (doc ids, best first) and `relevant`
(a set of relevant doc ids); `mean_metrics` averages them over queries.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence


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
    for i, d in enumerate(_distinct(ranked)[:k]):
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
