"""Length bucketing by padded-token budget (TEI's budget, infinity's sorted batches).

Light module: numpy only. The batcher needs nothing but true token lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class Batch:
    """Row indices (into the caller's order) and the length every row is padded to."""

    indices: np.ndarray
    padded_length: int

    @property
    def padded_tokens(self) -> int:
        return self.padded_length * len(self.indices)


def plan_batches(
    lengths: Sequence[int] | np.ndarray,
    *,
    max_batch_tokens: int,
    max_batch_rows: int,
    pad_multiple: int = 8,
    bucketing: bool = True,
    batch_cost_tokens: int | None = None,
) -> list[Batch]:
    """Cut rows into batches so that `padded_length × rows ≤ max_batch_tokens` and `rows ≤ max_batch_rows`.

    With `bucketing`, rows are visited shortest first (stable sort), so each batch holds similar lengths.
    Without it, rows keep their input order (the naive baseline). A single row longer than the budget
    gets a batch of its own. Every row index appears in exactly one batch.

    Cuts: greedy (fill each batch up to the budget) by default. With `batch_cost_tokens` (and bucketing),
    the cuts of the sorted rows minimise `padded tokens + batch_cost_tokens × batches` exactly (dynamic
    programme over the same limits): a batch is cut where the next rows would pad more than a new batch
    costs. `batch_cost_tokens` is what one more forward call costs, in tokens of work.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be one-dimensional, got shape {lengths.shape}")
    if len(lengths) and lengths.min() < 1:
        raise ValueError(f"every token length must be ≥ 1, got {int(lengths.min())}")
    order = np.argsort(lengths, kind="stable") if bucketing else np.arange(len(lengths))
    if bucketing and batch_cost_tokens is not None and len(order):
        padded = -(-lengths[order] // pad_multiple) * pad_multiple
        return [
            Batch(order[start:end], int(padded[end - 1]))
            for start, end in _cheapest_cuts(padded, max_batch_tokens, max_batch_rows, batch_cost_tokens)
        ]
    batches: list[Batch] = []
    start, longest = 0, 0
    for pos, row in enumerate(order):
        candidate = max(longest, round_up(int(lengths[row]), pad_multiple))
        rows = pos - start + 1
        if rows > 1 and (candidate * rows > max_batch_tokens or rows > max_batch_rows):
            batches.append(Batch(order[start:pos], longest))
            start, candidate = pos, round_up(int(lengths[row]), pad_multiple)
        longest = candidate
    if start < len(order):
        batches.append(Batch(order[start:], longest))
    return batches


def _cheapest_cuts(
    padded: np.ndarray, max_tokens: int, max_rows: int, batch_cost: int
) -> list[tuple[int, int]]:
    """[start, end) spans of the ascending `padded` lengths minimising Σ (longest × rows) + batch_cost per
    batch, each span within `max_rows` rows and `max_tokens` padded tokens (a lone row may exceed it)."""
    n = len(padded)
    best = np.zeros(n + 1)  # best[i]: cheapest cost of the first i rows
    start_of = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        starts = np.arange(max(0, end - max_rows), end)
        rows = end - starts
        size = padded[end - 1] * rows  # ascending: the last row is the longest
        cost = best[starts] + size + batch_cost
        cost[(size > max_tokens) & (rows > 1)] = np.inf
        k = int(np.argmin(cost))
        best[end], start_of[end] = cost[k], starts[k]
    spans, end = [], n
    while end > 0:
        spans.append((int(start_of[end]), end))
        end = spans[-1][0]
    return spans[::-1]


def check_coverage(batches: Sequence[Batch], n_rows: int) -> None:
    """Raise if any row is missing from the plan or appears twice."""
    seen = np.zeros(n_rows, dtype=np.int64)
    for batch in batches:
        if len(batch.indices) and (batch.indices.min() < 0 or batch.indices.max() >= n_rows):
            raise RuntimeError(f"batch plan is broken: row index outside 0..{n_rows - 1}")
        np.add.at(seen, batch.indices, 1)
    if n_rows and not np.all(seen == 1):
        missing = np.flatnonzero(seen == 0)[:5].tolist()
        doubled = np.flatnonzero(seen > 1)[:5].tolist()
        raise RuntimeError(f"batch plan is broken: rows missing {missing}, rows repeated {doubled}")


def padding_efficiency(lengths: Sequence[int] | np.ndarray, batches: Sequence[Batch]) -> float:
    """Real tokens / padded tokens over the whole plan (1.0 = no padding at all)."""
    padded = sum(b.padded_tokens for b in batches)
    return float(np.sum(lengths)) / padded if padded else 1.0


def pad_rows(rows: Sequence[np.ndarray], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad int sequences to `length`; return (ids, attention_mask) as int64 arrays."""
    ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask
