"""Score each distinct query once: real logs repeat (head queries recur thousands of times), so the job
recalls and reranks every distinct query once and fans the results out to all of its rows.

    distinct = plan_distinct(files, filesystem, config, logged, staging)   # None: nothing repeats
    ... the pipeline runs on distinct.path (one row per distinct query) ...
    FanOut(config, results, distinct.keys)(batch)                          # every input row, its results

A row's key is its query normalised as the score cache does (`normalise_query`: case-folded, whitespace
collapsed) — invisible to uncased models such as all-MiniLM-L6-v2, whose tokenizer lowercases; set
`dedupe_queries: false` for a cased model — plus, in logged-candidates mode, its candidate list. Rows
that cannot be scored (empty, invalid) share a key with the rows that fail the same way, so their status
is the same too. The driver reads only the query (and candidates) column to plan; pass-through columns
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
from rerank_engine.config import JobConfig
from rerank_engine.score_cache import normalise_query
from rerank_engine.stages import _table, column_texts


@dataclass(frozen=True)
class DistinctPlan:
    path: str  # Parquet of the distinct queries: query_id = "k<index>", query, [candidates]
    keys: list[str]  # key of distinct query i
    n_rows: int  # input rows


def row_keys(table: pa.Table, config: JobConfig, logged: bool) -> list[str]:
    cols = config.columns
    queries = column_texts(table.column(cols.query))
    keys = [normalise_query(q) if q is not None else "" for q in queries]
    if logged:
        cands = table.column(cols.candidates).to_pylist()
        keys = [f"{k}\x1e{json.dumps(c)}" for k, c in zip(keys, cands, strict=True)]
    return keys


def plan_distinct(files, filesystem, config: JobConfig, logged: bool, out: Path) -> DistinctPlan | None:
    """Write the first row of every distinct key to `out/distinct.parquet`; None if no key repeats."""
    cols = config.columns
    needed = [cols.query, *([cols.candidates] if logged else [])]
    table = pa.concat_tables(
        [pq.read_table(f, columns=needed, filesystem=filesystem, partitioning=None) for f in files]
    )
    keys = row_keys(table, config, logged)
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    if len(first) == len(keys):
        return None
    distinct = table.take(pa.array(list(first.values()), pa.int64()))
    distinct = distinct.append_column(
        cols.query_id, pa.array([f"k{i}" for i in range(distinct.num_rows)], pa.string())
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / "distinct.parquet"
    pq.write_table(distinct, path)
    return DistinctPlan(path=str(path), keys=list(first), n_rows=len(keys))


class FanOut:
    """Input rows (as read from the input files) + the result columns of their key's distinct query."""

    def __init__(self, config: JobConfig, results: pa.Table, keys: list[str], logged: bool):
        self.config, self.logged = config, logged
        order = np.argsort([int(k[1:]) for k in results.column(config.columns.query_id).to_pylist()])
        self.results = results.select([f.name for f in schema.OUTPUT_FIELDS]).take(pa.array(order))
        if self.results.num_rows != len(keys):
            raise RuntimeError(f"{self.results.num_rows} distinct results for {len(keys)} distinct queries")
        self.index = {k: i for i, k in enumerate(keys)}

    def __call__(self, batch) -> pa.Table:
        batch = _table(batch)
        at = [self.index[k] for k in row_keys(batch, self.config, self.logged)]
        picked = self.results.take(pa.array(at, pa.int64()))
        for field in schema.OUTPUT_FIELDS:
            batch = batch.append_column(field, picked.column(field.name))
        return batch
