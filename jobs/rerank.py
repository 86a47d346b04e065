"""Rerank a Parquet query log on Ray: recall (or logged candidates) → cross-encoder → threshold → Parquet.

    python -m jobs.rerank --config jobs/configs/local.yaml --input <query log> --corpus <corpus.parquet> \
        --index <dir> --output <dir> [--set key=value ...] [--overwrite]

`--index` may be omitted when the input has a `candidates` column (logged-candidates mode). Starts a
local Ray when none is reachable; under `ray job submit` it joins that cluster. Prints the run summary
as a table (`--json`: as JSON) and writes it, with the resolved config, beside the output.
"""

from __future__ import annotations

from rerank_engine import cli
from rerank_engine.config import load_job_config
from rerank_engine.job.driver import run_job

EXAMPLE = (
    "--config jobs/configs/local.yaml --input sample/queries.parquet --corpus sample/corpus.parquet \\\n"
    "      --index sample/index --output sample/output --set k_rerank=3"
)


def main(argv=None, prog: str = "python -m jobs.rerank") -> int:
    p = cli.command_parser(
        prog,
        __doc__,
        EXAMPLE,
        overrides="override a config key, e.g. --set k_rerank=3 --set resources.rerank_actors=2",
        with_progress=True,
        with_summary=True,
    )
    p.add_argument("--config", default=None, help="YAML job config (jobs/configs/local.yaml)")
    p.add_argument("--input", required=True, help="query log: Parquet file, folder, glob or URI")
    p.add_argument("--corpus", required=True, help="Parquet with doc_id, text (optionally title)")
    p.add_argument("--index", default=None, help="recall index folder from jobs.build_index")
    p.add_argument("--output", required=True)
    p.add_argument("--run-id", default=None)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)

    def body() -> int:
        config = load_job_config(args.config, cli.parse_overrides(args.overrides))
        summary = run_job(
            config,
            input=args.input,
            corpus=args.corpus,
            index=args.index,
            output=args.output,
            run_id=args.run_id,
            overwrite=args.overwrite,
        )
        cli.print_summary(summary, args.json)
        return 0

    return cli.run_main("rerank job", args, body)


if __name__ == "__main__":
    raise SystemExit(main())
