"""The `rerank-engine` command, and the command-line scaffold every job is built on.

    rerank-engine run --config jobs/configs/local.yaml --input sample/queries.parquet \
        --corpus sample/corpus.parquet --index sample/index --output sample/output
    rerank-engine config                      # the default job config, each key with its description
    rerank-engine COMMAND --help              # a command's options and an example

Each subcommand is a job module's `main(argv, prog)` (`COMMANDS`), so `rerank-engine run ...` and
`python -m jobs.rerank ...` are the same program. The jobs build their parsers with `command_parser`
(description, example, `--log-level`, optionally `--progress` and `--set`) and run their body through
`run_main` (logging set up, a project error printed as one line on stderr and exit status 2).

Light module: argparse and the standard library at import time; a command's module is imported only when
that command runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

from rerank_engine import progress
from rerank_engine.errors import ConfigError, RerankEngineError

PROG = "rerank-engine"
LOG_LEVELS = ("debug", "info", "warning", "error")

# subcommand -> (module whose main(argv, prog) runs it, one line for `rerank-engine --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("jobs.rerank", "rerank a Parquet query log on Ray: recall → cross-encoder → threshold"),
    "nightly": ("jobs.nightly", "rerank one date partition and commit it exactly once"),
    "build-index": ("jobs.build_index", "embed a corpus and build its FAISS recall index"),
    "export": ("export.__main__", "export a cross-encoder to ONNX, validated against PyTorch"),
    "calibrate": ("jobs.calibrate", "choose the reranker's threshold on InsuranceQA valid"),
    "evaluate": ("jobs.evaluate", "evaluate recall and rerankers on InsuranceQA (report on test)"),
    "compare": ("jobs.compare_models", "is a candidate reranker better than the baseline?"),
    "sample": ("jobs.make_sample", "build the sample query log and corpus (InsuranceQA test)"),
    "config": ("rerank_engine.cli", "print the default job config as YAML, each key described"),
}
TOP_EXAMPLE = (
    f"{PROG} sample --out sample\n"
    f"  {PROG} build-index --corpus sample/corpus.parquet --out sample/index\n"
    f"  {PROG} run --config jobs/configs/local.yaml --input sample/queries.parquet \\\n"
    "      --corpus sample/corpus.parquet --index sample/index --output sample/output"
)


def command_parser(
    prog: str,
    doc: str,
    example: str,
    *,
    overrides: str | None = None,
    with_progress: bool = False,
    with_summary: bool = False,
) -> argparse.ArgumentParser:
    """The parser of one command: `doc`'s first line as description, `prog example` as the example shown
    by --help, `--log-level`; `--progress/--no-progress` where the command runs Ray Data; `--set KEY=VALUE`
    (into `args.overrides`) where it takes a config, `overrides` being its help text; `--json` where it
    prints a run summary (`print_summary`)."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=doc.strip().splitlines()[0],
        epilog=f"example:\n  {prog} {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--log-level",
        default="warning",
        choices=LOG_LEVELS,
        help="what the library logs to stderr (default: warning)",
    )
    if with_progress:
        p.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="Ray Data's progress bars (default: on when stderr is a terminal)",
        )
    if with_summary:
        p.add_argument(
            "--json", action="store_true", help="print the run summary as JSON instead of the table"
        )
    if overrides is not None:
        p.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=overrides
        )
    return p


def parse_overrides(items: list[str]) -> dict:
    """`--set` values: ["k_rerank=3", "resources.rerank_actors=2"] → {"k_rerank": 3, ...} (YAML-typed)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: {value!r} is not a YAML value: {exc}") from None
    return out


def print_summary(summary: dict, as_json: bool = False) -> None:
    """A run summary on stdout: the table (`rerank_engine.job.summary`), or the JSON itself with --json."""
    if as_json:
        import json

        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        from rerank_engine.job.summary import format_summary

        print(format_summary(summary))


def setup(args: argparse.Namespace) -> None:
    """Apply the scaffold's options: the log level (the library logs through `logging`) and progress."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # a stderr handler, unless one exists
    logging.getLogger().setLevel(getattr(logging, args.log_level.upper()))
    if getattr(args, "progress", None) is not None:
        progress.force(args.progress)


def run_main(what: str, args: argparse.Namespace, body: Callable[[], int]) -> int:
    """Run a command's `body` after `setup`; a project error becomes one line on stderr and status 2."""
    setup(args)
    try:
        return body()
    except RerankEngineError as exc:
        print(f"{what} failed: {exc}", file=sys.stderr)
        return 2


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} COMMAND [options]   ({PROG} COMMAND --help for a command's options)", ""]
    lines.append("Offline cross-encoder reranking as a Ray Data batch job.")
    lines += ["", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "example:", f"  {TOP_EXAMPLE}"]
    return "\n".join(lines)


def config_main(argv: list[str] | None = None, prog: str = f"{PROG} config") -> int:
    """`rerank-engine config`: the default job config as YAML, generated from the config classes."""
    p = command_parser(
        prog,
        "Print the default job config as YAML, each key with its description and default.",
        "> my_job.yaml   # then edit it and pass --config my_job.yaml to run",
    )
    args = p.parse_args(argv)

    def body() -> int:
        from rerank_engine.config import JobConfig, describe_defaults

        sys.stdout.write(describe_defaults(JobConfig))
        return 0

    return run_main("config", args, body)


def main(argv: list[str] | None = None) -> int:
    """The console script: `rerank-engine COMMAND [options]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from rerank_engine import __version__

        print(f"{PROG} {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        near = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        print(f"{PROG}: unknown command {name!r}{hint} (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    prog = f"{PROG} {name}"
    if name == "config":
        return config_main(rest, prog)
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest, prog=prog)
