"""Rerank one date partition of the query log and commit it exactly once.

Rerunning a committed date is a no-op; rerunning a crashed one finishes it without redoing the chunks
it committed.

    python -m jobs.nightly --config jobs/configs/nightly_local.yaml [--date YYYY-MM-DD] [--overwrite] \
        [--set job.k_rerank=3 --set chunk_rows=50000 ...] [--fail-after-chunks N]

`--date` defaults to yesterday (UTC); it fills `{date}` in the config's `input_template` and
`output_template`. Starts a local Ray when none is reachable; under `ray job submit` it joins that
cluster. Prints the committed summary (the `_SUCCESS` marker's content) with `skipped`.
"""

from __future__ import annotations

import argparse
import json
import sys

from jobs.rerank import parse_overrides
from rerank_engine.errors import RerankEngineError
from rerank_engine.nightly import load_nightly_config, run_nightly


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.nightly", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="nightly YAML (jobs/configs/nightly_local.yaml)")
    p.add_argument("--date", default=None, help="YYYY-MM-DD (default: yesterday, UTC)")
    p.add_argument("--overwrite", action="store_true", help="recompute a committed date and replace it")
    p.add_argument(
        "--fail-after-chunks",
        type=int,
        default=None,
        metavar="N",
        help="fault injection: crash after N chunks are committed (tests of resume)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set job.k_rerank=3 --set chunk_rows=50000",
    )
    args = p.parse_args(argv)
    try:
        config = load_nightly_config(args.config, parse_overrides(args.overrides))
        summary = run_nightly(
            config, args.date, overwrite=args.overwrite, fail_after_chunks=args.fail_after_chunks
        )
    except RerankEngineError as exc:
        print(f"nightly job failed: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
