"""The job's counters in Ray's Prometheus endpoint, on a real local head started with a metrics port."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_engine.job import ray_metrics

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]

DOCS = {f"d{i}": text for i, text in enumerate(["Flood damage is excluded.", "A 90 day wait.", "Term life."])}


def scrape(url: str) -> dict[tuple[str, str], float]:
    """{(metric, status tag or ""): value summed over the other tags} for this project's counters."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: Counter = Counter()
    for m in re.finditer(r"^(ray_rerank_engine_\w+)(?:\{([^}]*)\})? (\S+)$", text, re.M):
        status = re.search(r'status="([^"]*)"', m.group(2) or "")
        out[(m.group(1), status.group(1) if status else "")] += float(m.group(3))
    return dict(out)


def expected(summaries: list[dict]) -> dict[tuple[str, str], float]:
    want: Counter = Counter()
    for s in summaries:
        for name, (_, key) in ray_metrics.COUNTERS.items():
            want[(f"ray_{name}_total", "")] += s.get(key) or 0
        for status, n in ray_metrics.rows_by_status(s).items():
            want[(f"ray_{ray_metrics.ROWS}_total", status)] += n
    return {k: v for k, v in want.items() if v}


def test_counters_in_the_scraped_metrics_equal_the_runs(tmp_path, start_ray_head, tiny_export):
    from rerank_engine.config import JobConfig
    from rerank_engine.job.driver import run_job

    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": list(DOCS), "text": list(DOCS.values())}), corpus)
    queries = tmp_path / "queries.parquet"
    pq.write_table(
        pa.table(
            {
                "query_id": [f"q{i}" for i in range(6)],
                "query": ["flood cover", "waiting period", "term life", "   ", "life", "flood"],
                "candidates": [["d0", "d1", "d2"], ["d1", "d0"], ["d2"], ["d0"], ["no"], ["d0", "zz", "d1"]],
            }
        ),
        queries,
    )
    config = JobConfig.build(
        model=str(tiny_export),
        precision="fp32",
        k_recall=3,
        k_rerank=2,
        threshold=0.5,  # the tiny random model's scores fall on both sides of it
        score_cache=str(tmp_path / "scores"),
        timeout_s=600,
    )
    with start_ray_head(tmp_path, "--num-gpus=0") as head:
        first = run_job(config, input=str(queries), corpus=str(corpus), output=str(tmp_path / "o1"))
        # the second as `ray job submit` or cron runs it: a driver process of its own, which exits at once
        sets = [f"--set={k}={v}" for k, v in config.model_dump(mode="json", exclude_defaults=True).items()]
        argv = ["--input", str(queries), "--corpus", str(corpus), "--json", "--output", str(tmp_path / "o2")]
        done = subprocess.run(
            [sys.executable, "-m", "jobs.rerank", *argv, *sets],
            cwd=REPO,
            env={**head["env"], "RAY_ADDRESS": head["address"]},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        second = json.loads(done.stdout)
        want = expected([first, second])

        # the summary's figures are the output's: read back row by row
        rows = pq.read_table(tmp_path / "o1").to_pylist()
        ranked = [r for r in rows if r["status"] in ("ok", "no_relevant")]
        top_k = sum(min(r["n_candidates"], 2) for r in ranked)  # the passages the threshold decides on
        assert first["kept"] == sum(r["n_kept"] for r in rows)
        assert first["passages_below_threshold"] == top_k - first["kept"]
        assert first["pairs_scored"] == first["pairs"] == 8 and first["pairs_cached"] == 0  # 3 + 2 + 1 + 2
        assert second["pairs_scored"] == 0 and second["pairs_cached"] == 8  # all from the score cache
        assert want[("ray_rerank_engine_rows_total", "empty_query")] == 2
        assert want[("ray_rerank_engine_rows_total", "unknown_candidates")] == 2

        deadline, got = time.monotonic() + 90, {}
        while time.monotonic() < deadline:  # the driver's metrics reach the endpoint every few seconds
            got = scrape(head["metrics"])
            if got == want:
                break
            time.sleep(2)
    assert got == want
