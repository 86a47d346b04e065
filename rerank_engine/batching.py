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
) -> list[Batch]:
    """Cut rows into batches so that `padded_length × rows ≤ max_batch_tokens` and `rows ≤ max_batch_rows`.

    With `bucketing`, rows are visited shortest first (stable sort), so each batch holds similar lengths.
    Without it, rows keep their input order (the naive baseline). A single row longer than the budget
    gets a batch of its own. Every row index appears in exactly one batch.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be one-dimensional, got shape {lengths.shape}")
    if len(lengths) and lengths.min() < 1:
        raise ValueError(f"every token length must be ≥ 1, got {int(lengths.min())}")
    order = np.argsort(lengths, kind="stable") if bucketing else np.arange(len(lengths))
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
