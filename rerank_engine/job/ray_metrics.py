"""The job's counters in Ray's metrics: its Prometheus endpoint and the Grafana dashboards built on it.

    record(summary)      # run_job, once the run's output is verified and committed

Ray exports a counter `NAME` as `ray_NAME_total` (`ray start --metrics-export-port=…`, or the port Ray
picks, in `<session>/metrics_export_port`). The counters are incremented by the driver from the run
summary, so they equal `_run_summary.json`'s figures, and a nightly date's are the sum over its chunks
(each chunk adds its own when it commits). Rows are counted per status (`status` tag).
"""

from __future__ import annotations

from rerank_engine import schema

# counter name -> (description, the run summary figure it adds)
COUNTERS: dict[str, tuple[str, str]] = {
    "rerank_engine_pairs_scored": ("(query, passage) pairs scored by the cross-encoder", "pairs_scored"),
    "rerank_engine_pairs_cached": ("pairs whose score came from the score cache", "pairs_cached"),
    "rerank_engine_passages_kept": (
        "passages written: in a query's top-k and at or above the threshold",
        "kept",
    ),
    "rerank_engine_passages_below_threshold": (
        "passages of a query's top-k dropped because they scored under the threshold",
        "passages_below_threshold",
    ),
}
ROWS = "rerank_engine_rows"  # output rows, tag `status` (ok, no_relevant, empty_query, ...)

_counters: dict = {}


def _counter(name: str, description: str, tag_keys: tuple[str, ...] = ()):
    from ray.util.metrics import Counter

    if name not in _counters:
        _counters[name] = Counter(name, description=description, tag_keys=tag_keys)
    return _counters[name]


def rows_by_status(summary: dict) -> dict[str, int]:
    """The summary's rows per status: ok, no_relevant and each error status."""
    rows = {schema.OK: summary.get("ok", 0), schema.NO_RELEVANT: summary.get("no_relevant", 0)}
    rows.update(summary.get("errors") or {})
    return {status: int(n) for status, n in rows.items() if n}


def record(summary: dict) -> None:
    """Add one run's figures to the counters (this process must be connected to Ray)."""
    for name, (description, key) in COUNTERS.items():
        value = int(summary.get(key) or 0)
        if value:
            _counter(name, description).inc(value)
    for status, n in rows_by_status(summary).items():
        _counter(ROWS, "output rows, by status", ("status",)).inc(n, tags={"status": status})
