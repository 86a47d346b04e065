"""Rerank one date partition of the query log and commit it exactly once.

Rerunning a committed date is a no-op; rerunning a crashed one finishes it without redoing the chunks
it committed.

    python -m jobs.nightly --config jobs/configs/nightly_local.yaml [--date YYYY-MM-DD] [--overwrite] \
        [--set job.k_rerank=3 --set chunk_rows=50000 ...] [--fail-after-chunks N]

`--date` defaults to yesterday (UTC); it fills `{date}` in the config's `input_template` and
`output_template`. Starts a local Ray when none is reachable; under `ray job submit` it joins that
cluster. Prints the committed summary (the `_SUCCESS` marker's content, with `skipped`) as a table, or
as JSON with `--json`.
"""

from __future__ import annotations

from rerank_engine import cli
from rerank_engine.job.nightly import load_nightly_config, run_nightly

EXAMPLE = "--config jobs/configs/nightly_local.yaml --date 2026-11-26 --set chunk_rows=50000"


def main(argv=None, prog: str = "python -m jobs.nightly") -> int:
    p = cli.command_parser(
        prog,
        __doc__,
        EXAMPLE,
        overrides="override a config key, e.g. --set job.k_rerank=3 --set chunk_rows=50000",
        with_progress=True,
        with_summary=True,
    )
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
    args = p.parse_args(argv)

    def body() -> int:
        config = load_nightly_config(args.config, cli.parse_overrides(args.overrides))
        summary = run_nightly(
            config, args.date, overwrite=args.overwrite, fail_after_chunks=args.fail_after_chunks
        )
        cli.print_summary(summary, args.json)
        return 0

    return cli.run_main("nightly job", args, body)


if __name__ == "__main__":
    raise SystemExit(main())
