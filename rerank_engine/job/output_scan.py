"""What the driver reads back of a written output, a file at a time: the exactly-once check, the run
summary's figures and the run report's, without holding the output (#24).

    counts, figures = scan_output(written_files, config, expected_ids)   # raises if a row is not once
    summary = summarize(counts, config, pipeline_s=..., wall_s=...)

Light module: pyarrow and numpy only.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from rerank_engine import schema
from rerank_engine.config import JobConfig
from rerank_engine.job.exactly_once import InputIds, ids_digests
from rerank_engine.job.run_report import QueryFigures, value_counts

# Per-query output columns that summarize() and the run report read (beside the query id).
SUMMARY_COLUMNS = (
    "status",
    "n_candidates",
    "n_kept",
    "top_score",
    "n_tokens",
    "n_padded_tokens",
    "provider",
    "n_cached",
    "n_unknown",
    "windows_scored",
)


def tally(table: pa.Table, config: JobConfig) -> Counter:
    """The summary's additive figures over some rows of an output (a file of it, or all of it): sums,
    and `status:<name>` / `provider:<name>` counts. Tallies of parts add up to the tally of the whole."""
    if config.exploded:  # one row per kept pair: count each input row once
        table = schema.exploded_heads(table)
    ranked = pa.compute.is_in(table.column("status"), pa.array([schema.OK, schema.NO_RELEVANT]))
    top_k = pa.compute.min_element_wise(table.column("n_candidates"), config.k_rerank)
    below = pa.compute.subtract(
        pa.compute.filter(top_k, ranked), pa.compute.filter(table.column("n_kept"), ranked)
    )

    def total(column) -> float:
        return pa.compute.sum(column).as_py() or 0

    t = Counter(
        queries=table.num_rows,
        pairs=int(total(table.column("n_candidates"))),
        pairs_cached=int(total(table.column("n_cached"))),
        tokens=int(total(table.column("n_tokens"))),
        padded=float(total(table.column("n_padded_tokens"))),
        windows_scored=int(total(table.column("windows_scored"))),
        candidates_unknown=int(total(table.column("n_unknown"))),
        kept=int(total(table.column("n_kept"))),
        passages_below_threshold=int(total(below)),  # in a top-k, under the threshold
    )
    for name in ("status", "provider"):
        for value, n in value_counts(table.column(name)).items():
            if value is not None:
                t[f"{name}:{value}"] += n
    return t


def summarize(
    table: pa.Table | Counter | None, config: JobConfig, *, pipeline_s: float, wall_s: float
) -> dict:
    """The run summary's figures from an output's rows, or from the sum of their `tally`s."""
    t = tally(table, config) if isinstance(table, pa.Table) and table.num_rows else table
    if not t or not t["queries"]:
        return {"queries": 0, "pairs": 0, "wall_s": round(wall_s, 2)}
    statuses = {k.split(":", 1)[1]: v for k, v in t.items() if k.startswith("status:")}
    return {
        "queries": t["queries"],
        "pairs": t["pairs"],
        "pairs_per_s": round(t["pairs"] / pipeline_s, 1) if pipeline_s else None,
        "pairs_cached": t["pairs_cached"],  # taken from the score cache instead of scored
        "pairs_scored": t["pairs"] - t["pairs_cached"],
        # (query, window) rows the cross-encoder ran: pairs_scored, or with chunk_max their windows
        "windows_scored": t["windows_scored"],
        "candidates_unknown": t["candidates_unknown"],
        "kept": t["kept"],
        "passages_below_threshold": t["passages_below_threshold"],
        "ok": statuses.get(schema.OK, 0),
        "no_relevant": statuses.get(schema.NO_RELEVANT, 0),
        "errors": {k: v for k, v in statuses.items() if k not in (schema.OK, schema.NO_RELEVANT)},
        "padding_efficiency": round(t["tokens"] / t["padded"], 4) if t["padded"] else None,
        "providers": sorted(k.split(":", 1)[1] for k in t if k.startswith("provider:") and k[9:]),
        "pipeline_s": round(pipeline_s, 2),
        "wall_s": round(wall_s, 2),
    }


def scan_output(files: list[str], config: JobConfig, expected: InputIds) -> tuple[Counter, QueryFigures]:
    """The driver's one pass over a written output, a file at a time, reading only the query id and the
    per-query figure columns: the exactly-once check against `expected`, the summary's tally and the
    run report's figures. The driver holds 16 bytes and a top score per row, never the output. In an
    exploded output each input row is its head row (`schema.exploded_heads`), and every other row must
    be of an input id."""
    qid = config.columns.query_id
    columns = [qid, *SUMMARY_COLUMNS, *(["rank"] if config.exploded else [])]

    def read(paths):
        return pq.read_table(paths, columns=columns, partitioning=None)

    heads, rows, total, figures = [], [], Counter(), QueryFigures.of(None, qid, config.exploded)
    for f in files:
        table = read([f])
        rows.append(ids_digests(table.column(qid)))
        heads.append(ids_digests(schema.exploded_heads(table).column(qid)) if config.exploded else rows[-1])
        total += tally(table, config)
        figures = figures + QueryFigures.of(table, qid, config.exploded)
    expected.verify_digests(
        heads, lambda: read(files).column(qid) if files else None, rows=rows if config.exploded else None
    )
    return total, figures
