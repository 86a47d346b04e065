"""Rerank a Parquet query log on Ray: recall (or logged candidates) → cross-encoder → threshold → Parquet.

    python -m jobs.rerank --config jobs/configs/local.yaml --input <query log> --corpus <corpus.parquet> \
        --index <dir> --output <dir> [--set key=value ...] [--overwrite]

`--index` may be omitted when the input has a `candidates` column (logged-candidates mode). Starts a
local Ray when none is reachable; under `ray job submit` it joins that cluster. Prints the run summary
and writes it, with the resolved config, beside the output.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from rerank_engine.config import load_job_config
from rerank_engine.errors import RerankEngineError
from rerank_engine.job import run_job


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.rerank", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="YAML job config (jobs/configs/local.yaml)")
    p.add_argument("--input", required=True, help="query log: Parquet file, folder, glob or URI")
    p.add_argument("--corpus", required=True, help="Parquet with doc_id, text (optionally title)")
    p.add_argument("--index", default=None, help="recall index folder from jobs.build_index")
    p.add_argument("--output", required=True)
    p.add_argument("--run-id", default=None)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set k_rerank=3 --set resources.rerank_actors=2",
    )
    args = p.parse_args(argv)
    try:
        config = load_job_config(args.config, parse_overrides(args.overrides))
        summary = run_job(
            config,
            input=args.input,
            corpus=args.corpus,
            index=args.index,
            output=args.output,
            run_id=args.run_id,
            overwrite=args.overwrite,
        )
    except RerankEngineError as exc:
        print(f"rerank job failed: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
