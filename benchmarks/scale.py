"""The job at growing query-log sizes: wall time, rows/s and the driver's peak memory (issue #24).

    python -m benchmarks.scale [--rows 200000 1000000 5000000] [--distinct 100] \
        [--json reports/scale/scale.json] [--model models/insurance-minilm-l6-ce]

Each log is built from the sample (`make demo`'s, built here if missing): `--distinct` test questions
repeated along a Zipf(s=1) law, each with 20 logged candidate ids from the sample corpus (logged-candidates
mode, so scoring stays small: `--distinct` × 20 pairs whatever the size) and a pass-through column, in
Parquet files of at most 500,000 rows. Each size runs `python -m jobs.rerank` in its own process on a
fresh local Ray; the figures come from that run's `_run_summary.json` (`driver_peak_rss_mb` is the
driver process's own peak RSS, Ray's workers apart). Targets (2 cores): driver peak ≤ 1 GB at 5M rows,
wall time at 5M ≤ 6× the time at 1M.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FILE_ROWS = 500_000
K = 20


def build_log(rows: int, distinct: int, sample: Path, out: Path, seed: int = 0) -> Path:
    """`rows` log entries over `distinct` sample questions (Zipf), written as Parquet files in `out`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    questions = pq.read_table(sample / "queries.parquet", columns=["query"]).column("query").to_pylist()
    doc_ids = pq.read_table(sample / "corpus.parquet", columns=["doc_id"]).column("doc_id").to_pylist()
    questions = questions[:distinct]
    cands = [rng.choice(doc_ids, size=K, replace=False).tolist() for _ in questions]
    p = 1.0 / np.arange(1, len(questions) + 1)
    picks = rng.choice(len(questions), size=rows, p=p / p.sum())
    out.mkdir(parents=True, exist_ok=True)
    query_type, cand_type = pa.string(), pa.list_(pa.string())
    distinct_queries = pa.array(questions, query_type)
    distinct_cands = pa.array(cands, cand_type)
    for part, start in enumerate(range(0, rows, FILE_ROWS)):
        at = pa.array(picks[start : start + FILE_ROWS])
        n = len(at)
        pq.write_table(
            pa.table(
                {
                    "query_id": pa.array([f"log-{start + i:09d}" for i in range(n)], pa.string()),
                    "query": distinct_queries.take(at),
                    "candidates": distinct_cands.take(at),
                    "user": pa.array(rng.integers(0, 1_000_000, size=n)),
                }
            ),
            out / f"part-{part:05d}.parquet",
        )
    return out


def run_size(rows: int, args, sample: Path, work: Path) -> dict:
    log = build_log(rows, args.distinct, sample, work / f"log-{rows}")
    output = work / f"out-{rows}"
    cmd = [
        sys.executable, "-m", "jobs.rerank", "--config", "jobs/configs/local.yaml",
        "--input", str(log), "--corpus", str(sample / "corpus.parquet"), "--output", str(output),
        "--overwrite", "--no-progress", "--json",
    ]  # fmt: skip
    if args.model:
        cmd += ["--set", f"model={args.model}"]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the job at {rows} rows failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads((output / "_run_summary.json").read_text())
    return {
        "rows": rows,
        "distinct_queries": summary["distinct_queries"],
        "pairs_scored": summary.get("pairs_scored"),
        "process_wall_s": round(wall, 1),
        "job_wall_s": summary["wall_s"],
        "rows_per_s": round(rows / summary["wall_s"], 1),
        "driver_peak_rss_mb": summary.get("driver_peak_rss_mb"),
        "output_files": len(list(output.glob("*.parquet"))),
        "stage_s": summary.get("stage_s"),
    }


def markdown(result: dict) -> str:
    lines = [
        f"Logged-candidates logs over {result['distinct']} distinct questions × {K} candidates "
        f"({result['date']}, {result['machine']}):",
        "",
        "| rows | wall time (s) | rows/s | driver peak RSS (MB) | output files | time vs the first size |",
        "|---|---|---|---|---|---|",
    ]
    first = result["sizes"][0]["job_wall_s"] if result["sizes"] else None
    for r in result["sizes"]:
        lines.append(
            f"| {r['rows']:,} | {r['job_wall_s']:.1f} | {r['rows_per_s']:,.0f} | {r['driver_peak_rss_mb']} "
            f"| {r.get('output_files', '–')} | {r['job_wall_s'] / first:.2f}× |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000, 5_000_000])
    p.add_argument("--distinct", type=int, default=100, help="distinct questions in every log")
    p.add_argument("--sample", default="sample", help="folder of make demo's sample (built if missing)")
    p.add_argument("--model", default=None, help="reranker (default: the job config's)")
    p.add_argument("--json", default=None, help="write the figures here (and a .md beside)")
    args = p.parse_args(argv)

    sample = Path(args.sample)
    if not (sample / "queries.parquet").is_file():
        from jobs.make_sample import make_sample

        make_sample(sample)
    from benchmarks.common import machine

    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "distinct": args.distinct, "sizes": []}
    with tempfile.TemporaryDirectory(prefix="rerank-scale-") as tmp:
        for rows in args.rows:
            result["sizes"].append(run_size(rows, args, sample, Path(tmp)))
            print(json.dumps(result["sizes"][-1]), flush=True)
    print(markdown(result))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
