"""The run summary as a compact table for a terminal: what `rerank-engine run`, `nightly` and the demo print.

    print(format_summary(summary))      # a job's summary (`_run_summary.json`) or a nightly `_SUCCESS`

The dict is the one the job writes beside its output; this only reads it (a missing key shows as "—").
Light module: the standard library only.
"""

from __future__ import annotations

NONE = "—"
REPORT = "_report.md"  # the run report beside an output (rerank_engine.job.run_report writes it)


def _n(value) -> str:
    return NONE if value is None else f"{value:,}"


def _share(part, whole) -> str:
    return f" ({part / whole:.1%})" if part is not None and whole else ""


def _pairs_per_s(s: dict) -> str:
    rate = s.get("pairs_per_s")
    if rate is None and s.get("pipeline_s") and s.get("pairs") is not None:
        rate = s["pairs"] / s["pipeline_s"]  # what the job reports: pairs over the pipeline's time
    return NONE if rate is None else f"{rate:,.1f}"


def _windows(s: dict) -> str:
    """(query, window) rows scored, and how the long passages were read (chunk_max: its stride)."""
    how = s.get("long_passages")
    if how == "chunk_max":
        how += f", stride {s['stride']}" if s.get("stride") else ", stride half the window"
    return _n(s.get("windows_scored")) + (f" ({how})" if how else "")


def _rows(s: dict) -> list[tuple[str, str]]:
    queries = s.get("queries")
    errors = s.get("errors") or {}
    wall = f"{s['wall_s']:,.1f} s" if s.get("wall_s") is not None else NONE
    if s.get("pipeline_s") is not None:
        wall += f" (pipeline {s['pipeline_s']:,.1f} s)"
    padding = s.get("padding_efficiency")
    return [
        ("queries", _n(queries)),
        ("distinct queries", _n(s.get("distinct_queries")) + _share(s.get("distinct_queries"), queries)),
        ("pairs", _n(s.get("pairs"))),
        ("pairs scored / cached", f"{_n(s.get('pairs_scored'))} / {_n(s.get('pairs_cached'))}"),
        ("windows scored", _windows(s)),
        ("pairs/s", _pairs_per_s(s)),
        ("padding efficiency", NONE if padding is None else f"{padding:.1%}"),
        ("passages kept", _n(s.get("kept"))),
        ("passages under threshold", _n(s.get("passages_below_threshold"))),
        ("queries ok", _n(s.get("ok")) + _share(s.get("ok"), queries)),
        ("queries no_relevant", _n(s.get("no_relevant")) + _share(s.get("no_relevant"), queries)),
        (
            "rows by error status",
            ", ".join(f"{k} {v:,}" for k, v in sorted(errors.items())) if errors else "none",
        ),
        ("candidates not in corpus", _n(s.get("candidates_unknown"))),
        ("wall time", wall),
        ("providers", ", ".join(s.get("providers") or []) or NONE),
    ]


def _title(s: dict) -> str:
    if "date" in s:  # a nightly _SUCCESS
        how = (
            "already committed, nothing run"
            if s.get("skipped")
            else (f"{s.get('chunks_run', 0)} chunk(s) run, {s.get('chunks_resumed', 0)} resumed")
        )
        return f"nightly {s['date']} · run {s.get('run_id', NONE)} · {s.get('chunks', NONE)} chunk(s): {how}"
    parts = [f"run {s.get('run_id', NONE)}"]
    if s.get("mode"):
        parts.append(s["mode"].replace("_", " "))
    if s.get("threshold") is not None:
        parts.append(f"threshold {s['threshold']:.3f}" + (" (fused score)" if s.get("fusion") else ""))
    return " · ".join(parts)


def format_summary(summary: dict) -> str:
    """A title line, then one row per figure (label, value), ending with where the output, the full
    summary (`_run_summary.json` of a job, `_SUCCESS` of a nightly date) and the run report are."""
    rows = _rows(summary)
    if summary.get("output"):
        name = "_SUCCESS" if "date" in summary else "_run_summary.json"
        out = summary["output"].rstrip("/")
        rows += [
            ("output", summary["output"]),
            ("full summary", f"{out}/{name}"),
            ("report", f"{out}/{REPORT}"),
        ]
    width = max(len(label) for label, _ in rows)
    return "\n".join([_title(summary), *(f"  {label:<{width}}  {value}" for label, value in rows)])
