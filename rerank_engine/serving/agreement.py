"""How one scorer's order agrees with another's on the same pairs: ONNX against PyTorch, int8 against
fp32, GPU against CPU. Pure functions of score arrays (no labels: those are `quality.metrics`).

Light module: numpy only.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np


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
