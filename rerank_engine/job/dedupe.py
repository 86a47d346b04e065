"""Score each distinct query once: real logs repeat (head queries recur thousands of times), so the job
recalls and reranks every distinct query once and fans the results out to all of its rows.

    key = QueryKey([QueryNormaliser.of(cross_encoder_tokenizer), QueryNormaliser.of(bi_encoder_tokenizer)])
    distinct = plan_distinct(files, filesystem, columns, logged, staging, key)   # None: nothing repeats
    ... the pipeline runs on distinct.path (one row per distinct query) ...
    FanOut(columns, results, distinct.keys, logged, key)(batch)    # every input row, its results

A row's key is its query as every model that reads it normalises it (`serving/query_identity.py`: texts
none of them can tell apart, such as "What is  COBRA?" and "what is cobra?" for the uncased
all-MiniLM-L6-v2 pair; a cased cross-encoder keeps "US" and "us" apart) plus, in logged-candidates mode,
its candidate list. Rows
that cannot be scored (empty, invalid) share a key with the rows that fail the same way, so their status
is the same too. The driver reads only the query (and candidates) column to plan, a batch at a time,
and keeps a 16-byte digest of each row's key (80 MB for 5M rows), not its text; pass-through columns
never leave the input files, and the fan-out reads each row back from them, so the exactly-once check
runs on the fanned-out output as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rerank_engine import schema
from rerank_engine.config import ColumnsConfig
from rerank_engine.job.exactly_once import DIGEST, digests
from rerank_engine.job.stages import _table, column_texts
from rerank_engine.serving.query_identity import QueryKey

PLAN_BATCH_ROWS = 65_536  # rows read at a time while planning: the driver holds 16 bytes a row, not the text


@dataclass(frozen=True)
class DistinctPlan:
    path: str  # Parquet of the distinct queries: query_id = "k<index>", query, [candidates]
    keys: np.ndarray  # 16-byte key (numpy S16) of distinct query i, in order of first appearance
    n_rows: int  # input rows


def row_keys(table: pa.Table, columns: ColumnsConfig, logged: bool, key: QueryKey) -> np.ndarray:
    """One 16-byte key per row (numpy S16): BLAKE2b of the query's `key`, and in logged-candidates
    mode of the candidate list too. A missing query keys as the empty one."""
    queries = column_texts(table.column(columns.query))
    keyed = {q: key(q) for q in set(queries) if q is not None}  # a log repeats: each text keyed once
    texts = [keyed[q] if q is not None else "" for q in queries]
    if logged:
        cands = table.column(columns.candidates).to_pylist()
        texts = [f"{k}\x1e{json.dumps(c)}" for k, c in zip(texts, cands, strict=True)]
    return digests(texts)


def _batches(files, filesystem, columns: list[str]):
    for f in files:
        with pq.ParquetFile(f, filesystem=filesystem) as reader:
            yield from reader.iter_batches(batch_size=PLAN_BATCH_ROWS, columns=columns)


def plan_distinct(
    files, filesystem, columns: ColumnsConfig, logged: bool, out: Path, key: QueryKey
) -> DistinctPlan | None:
    """Write the first row of every distinct key to `out/distinct.parquet`; None if no key repeats.

    Two passes over the key columns, a batch at a time: the keys (16 bytes a row), then the first row of
    each distinct key; the driver never holds the log's text."""
    needed = [columns.query, *([columns.candidates] if logged else [])]
    batches = _batches(files, filesystem, needed)
    keys = [row_keys(pa.Table.from_batches([b]), columns, logged, key) for b in batches]
    keys = np.concatenate(keys) if keys else np.empty(0, dtype=DIGEST)
    _, first = np.unique(keys, return_index=True)
    if len(first) == len(keys):
        return None
    first.sort()  # distinct queries in order of first appearance
    parts, start = [], 0
    for batch in _batches(files, filesystem, needed):
        lo, hi = np.searchsorted(first, [start, start + batch.num_rows])
        if hi > lo:
            parts.append(pa.Table.from_batches([batch]).take(pa.array(first[lo:hi] - start, pa.int64())))
        start += batch.num_rows
    distinct = pa.concat_tables(parts)
    distinct = distinct.append_column(
        columns.query_id, pa.array([f"k{i}" for i in range(distinct.num_rows)], pa.string())
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / "distinct.parquet"
    pq.write_table(distinct, path)
    return DistinctPlan(path=str(path), keys=keys[first], n_rows=len(keys))


class FanOut:
    """Input rows (as read from the input files) + the result columns of their key's distinct query."""

    def __init__(
        self, columns: ColumnsConfig, results: pa.Table, keys: np.ndarray, logged: bool, key: QueryKey
    ):
        self.columns, self.logged, self.key = columns, logged, key
        order = np.argsort([int(k[1:]) for k in results.column(columns.query_id).to_pylist()])
        self.results = results.select([f.name for f in schema.OUTPUT_FIELDS]).take(pa.array(order))
        if self.results.num_rows != len(keys):
            raise RuntimeError(f"{self.results.num_rows} distinct results for {len(keys)} distinct queries")
        self.order = np.argsort(keys, kind="stable")
        self.sorted_keys = np.asarray(keys, dtype=DIGEST)[self.order]

    def __call__(self, batch) -> pa.Table:
        batch = _table(batch)
        wanted = row_keys(batch, self.columns, self.logged, self.key)
        pos = np.minimum(np.searchsorted(self.sorted_keys, wanted), max(0, len(self.sorted_keys) - 1))
        if len(wanted) and (not len(self.sorted_keys) or np.any(self.sorted_keys[pos] != wanted)):
            raise RuntimeError("an input row's query is not among the planned distinct queries")
        picked = self.results.take(pa.array(self.order[pos], pa.int64()))
        for field in schema.OUTPUT_FIELDS:
            batch = batch.append_column(field, picked.column(field.name))
        return batch
