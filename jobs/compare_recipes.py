"""Compare fine-tuning recipes at equal compute on InsuranceQA valid (resumable), one table.

    python -m jobs.compare_recipes --config jobs/configs/recipe_comparison.yaml
    python -m jobs.compare_recipes --models shipped=models/insurance-minilm-l6-ce \
        v6=artifacts/finetune_v6/listwise/best

Writes <report_dir>/table.md and results.json. Rerun the same command after an interruption.
`--models NAME=FOLDER ...` trains nothing: it scores those trained models on the same two valid sets
(cascade and pool, alone and fused) and writes <report_dir>/models.md and models.json (`--report-name`
another name, so that a new comparison keeps the committed one).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from rerank_engine import cli
from rerank_engine.errors import ConfigError
from rerank_engine.training import comparison


def main(argv=None, prog: str = "python -m jobs.compare_recipes") -> int:
    p = cli.command_parser(prog, __doc__, "--config jobs/configs/recipe_comparison.yaml")
    p.add_argument("--config", default="jobs/configs/recipe_comparison.yaml")
    p.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    p.add_argument(
        "--report-only", action="store_true", help="write the table of the variants finished so far"
    )
    p.add_argument(
        "--models", nargs="*", metavar="NAME=FOLDER", help="score these trained models instead of training"
    )
    p.add_argument(
        "--report-name", default="models", help="with --models: write <report_dir>/<name>.md and .json"
    )
    args = p.parse_args(argv)
    return cli.run_main("recipe comparison", args, lambda: run(args))


def _named_folders(pairs: list[str]) -> dict[str, str]:
    named = {}
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not sep or not name or not Path(folder, "config.json").is_file():
            raise ConfigError(f"--models {pair!r}: expected NAME=FOLDER, a model folder with config.json")
        named[name] = folder
    return named


def run(args) -> int:
    with open(args.config) as fh:
        cfg = yaml.safe_load(fh)
    if args.only:
        cfg["variants"] = [v for v in cfg["variants"] if v["name"] in args.only]
    if args.models:
        models = _named_folders(args.models)
        rows = comparison.trained_model_rows(
            comparison.valid_sets(cfg), models, cfg["run_dir"], cfg["train"]["max_length"]
        )
        names = (f"{args.report_name}.md", f"{args.report_name}.json")
    else:
        rows = comparison.run(cfg, train_missing=not args.report_only)
        names = ("table.md", "results.json")
    out = Path(cfg["report_dir"])
    out.mkdir(parents=True, exist_ok=True)
    table = comparison.markdown(rows)
    (out / names[0]).write_text(table)
    (out / names[1]).write_text(json.dumps(rows, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
