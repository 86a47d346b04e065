"""The run report beside every output: `_report.md` with its PNG plots, and the nightly trend.

    write_report(out_dir, figures, summary)      # after run_job's commit; nightly per date
    write_trend(root)                            # after a nightly commit: every committed date of `root`

`figures` (`QueryFigures.of(table)`) holds what the plots need per query: status, passages kept, and the
top score (the best candidate's score, handed on or not). The plots: rows by status, the top score per
query with the threshold drawn on it, passages kept per query, time per stage; the trend: pairs,
passages kept per query, `no_relevant` share and median top score over the committed dates, so drift
in the query log or the model shows at a glance. Each file has a fixed name; a rerun overwrites it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from rerank_engine import schema
from rerank_engine.job.summary import REPORT, format_summary
from rerank_engine.quality import plots

TREND = "_nightly_trend.md"
PLOTS = {
    "status": "_report_status.png",
    "top_score": "_report_top_score.png",
    "kept": "_report_kept.png",
    "stages": "_report_stages.png",
}
TREND_PLOT = "_nightly_trend.png"


@dataclass(frozen=True)
class QueryFigures:
    """One entry per input query row (an exploded output counted once per query)."""

    COLUMNS = ("status", "n_kept", "top_score")  # of the output, beside the query id

    status: Counter
    kept: Counter  # passages kept → queries
    top_scores: np.ndarray  # float32, ranked queries only

    @classmethod
    def of(cls, table: pa.Table | None, query_id: str, exploded: bool) -> QueryFigures:
        if table is None or table.num_rows == 0:
            return cls(Counter(), Counter(), np.zeros(0, dtype=np.float32))
        types = {"status": pa.string(), "n_kept": pa.int32(), "top_score": pa.float32()}
        for name in cls.COLUMNS:  # an output written without one (not by run_job) shows it as unknown
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, types[name]))
        if exploded:  # one row per kept pair: an input row's columns repeat on each of its rows
            table = schema.exploded_heads(table)
        table = table.select([query_id, *cls.COLUMNS])
        top = table.column("top_score").drop_null().to_numpy().astype(np.float32)
        return cls(
            value_counts(table.column("status"), "unknown"), value_counts(table.column("n_kept"), 0), top
        )

    def __add__(self, other: QueryFigures) -> QueryFigures:
        """The figures of two sets of query rows together (an output read a file at a time)."""
        top = np.concatenate([self.top_scores, other.top_scores])
        return QueryFigures(self.status + other.status, self.kept + other.kept, top)

    def under(self, threshold: float | None) -> int:
        """Ranked queries whose top score is under `threshold` (none without one)."""
        return int((self.top_scores < threshold).sum()) if threshold is not None else 0

    def median_top_score(self) -> float | None:
        return round(float(np.median(self.top_scores)), 4) if len(self.top_scores) else None


def value_counts(column: pa.ChunkedArray, missing=None) -> Counter:
    """How often each value occurs (nulls as `missing`), counted in Arrow: no Python object per row."""
    found = Counter()
    for entry in pa.compute.value_counts(column).to_pylist():
        found[missing if entry["values"] is None else entry["values"]] += entry["counts"]
    return found


def _status_plot(status: Counter, path: Path) -> Path:
    names = [s for s in schema.STATUSES if status.get(s)] + sorted(set(status) - set(schema.STATUSES))
    return plots.bars(
        names or ["(no rows)"],
        [status[n] for n in names] or [0],
        path,
        xlabel="status",
        ylabel="input rows",
        title="rows by status",
    )


def _top_score_plot(f: QueryFigures, threshold: float | None, path: Path) -> Path:
    under = f.under(threshold)
    label = None if threshold is None else f"threshold {threshold:.3f} ({under:,} queries under it)"
    return plots.histogram(
        f.top_scores,
        path,
        bins=np.linspace(0, 1, 41),
        line=threshold,
        line_label=label,
        xlabel="top score of the query (probability)",
        ylabel="queries",
        title=f"top score per ranked query (n={len(f.top_scores):,})",
    )


def _kept_plot(kept: Counter, path: Path) -> Path:
    ks = list(range(0, max(kept, default=0) + 1))
    return plots.bars(
        [str(k) for k in ks],
        [kept.get(k, 0) for k in ks],
        path,
        xlabel="passages handed on",
        ylabel="queries",
        title="passages kept per query",
    )


def stage_rows(summary: dict) -> list[tuple[str, float]]:
    return [(name, float(s)) for name, s in (summary.get("stage_s") or {}).items()]


def write_report(out_dir: str | Path, figures: QueryFigures, summary: dict) -> Path:
    """`_report.md` and its four plots in `out_dir`; returns the report's path."""
    out = Path(out_dir)
    threshold = summary.get("threshold")
    _status_plot(figures.status, out / PLOTS["status"])
    _top_score_plot(figures, threshold, out / PLOTS["top_score"])
    _kept_plot(figures.kept, out / PLOTS["kept"])
    stages = stage_rows(summary)
    plots.bars(
        [n for n, _ in stages] or ["(not timed)"],
        [s for _, s in stages] or [0.0],
        out / PLOTS["stages"],
        xlabel="seconds",
        title=f"time per stage (wall {summary.get('wall_s', 0):,.1f} s)",
        horizontal=True,
    )
    median = figures.median_top_score()
    ranked = len(figures.top_scores)
    under = figures.under(threshold)
    lines = [
        f"# Run report: {summary.get('run_id', '—')}",
        "",
        f"Reranker `{summary.get('reranker_model', '—')}`, recall `{summary.get('recall_model', '—')}`, "
        f"score `{summary.get('score_kind', '—')}`, "
        f"threshold {threshold if threshold is None else f'{threshold:.4f}'} "
        f"({summary.get('threshold_source', '—')}).",
        "",
        "```",
        format_summary(summary),
        "```",
        "",
        "## Rows by status",
        f"![rows by status]({PLOTS['status']})",
        "",
        "| status | rows |",
        "|---|---|",
        *(f"| {s} | {n:,} |" for s, n in sorted(figures.status.items())),
        "",
        "## Top score per query",
        f"The best candidate's score of each ranked query ({ranked:,}), handed on or not; median "
        f"{median if median is None else f'{median:.3f}'}. {under:,} queries have their top score under the "
        "threshold: those are the `no_relevant` ones.",
        "",
        f"![top score per query]({PLOTS['top_score']})",
        "",
        "## Passages kept per query",
        f"![passages kept per query]({PLOTS['kept']})",
        "",
        "| passages kept | queries |",
        "|---|---|",
        *(f"| {k} | {n:,} |" for k, n in sorted(figures.kept.items())),
        "",
        "## Time per stage",
        f"![time per stage]({PLOTS['stages']})",
        "",
        "| stage | seconds |",
        "|---|---|",
        *(f"| {n} | {s:,.2f} |" for n, s in stages),
        "",
    ]
    path = out / REPORT
    path.write_text("\n".join(lines))
    return path


def trend_rows(root: str | Path, success_file: str) -> list[dict]:
    """One row per committed date under `root` (a folder holding `success_file`), oldest first."""
    rows = []
    for f in sorted(Path(root).glob(f"*/{success_file}")):
        s = json.loads(f.read_text())
        queries = s.get("queries") or 0
        kept = s.get("kept") or 0
        rows.append(
            {
                "date": s.get("date", f.parent.name),
                "queries": queries,
                "pairs": s.get("pairs") or 0,
                "kept_per_query": round(kept / queries, 3) if queries else None,
                "no_relevant_share": round((s.get("no_relevant") or 0) / queries, 4) if queries else None,
                "top_score_median": s.get("top_score_median"),
                "reranker_model": s.get("reranker_model"),
            }
        )
    return rows


def write_trend(root: str | Path, success_file: str) -> Path:
    """`_nightly_trend.md` and `_nightly_trend.png` in `root` over its committed dates."""
    root = Path(root)
    rows = trend_rows(root, success_file)
    series = {
        "pairs": [r["pairs"] for r in rows],
        "passages kept per query": [r["kept_per_query"] for r in rows],
        "no_relevant share": [r["no_relevant_share"] for r in rows],
        "median top score": [r["top_score_median"] for r in rows],
    }
    plots.small_multiples([r["date"] for r in rows], series, root / TREND_PLOT, title="nightly trend")
    lines = [
        f"# Nightly trend: {len(rows)} committed date(s) under this folder",
        "",
        f"![nightly trend]({TREND_PLOT})",
        "",
        "| date | queries | pairs | kept per query | no_relevant share | median top score | reranker |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['date']} | {r['queries']:,} | {r['pairs']:,} | {_cell(r['kept_per_query'])} | "
            f"{_cell(r['no_relevant_share'])} | {_cell(r['top_score_median'])} | {r['reranker_model']} |"
            for r in rows
        ),
        "",
    ]
    path = root / TREND
    path.write_text("\n".join(lines))
    return path


def _cell(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def plot_files(out_dir: str | Path) -> Sequence[Path]:
    return [Path(out_dir) / name for name in PLOTS.values()]
