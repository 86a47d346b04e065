"""Compare fine-tuning recipes at equal compute on InsuranceQA valid (resumable), one table.

    python -m jobs.compare_recipes --config jobs/configs/recipe_comparison.yaml

Writes <report_dir>/table.md and results.json. Rerun the same command after an interruption.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from rerank_engine import cli
from rerank_engine.training import comparison


def main(argv=None, prog: str = "python -m jobs.compare_recipes") -> int:
    p = cli.command_parser(prog, __doc__, "--config jobs/configs/recipe_comparison.yaml")
    p.add_argument("--config", default="jobs/configs/recipe_comparison.yaml")
    p.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    p.add_argument(
        "--report-only", action="store_true", help="write the table of the variants finished so far"
    )
    args = p.parse_args(argv)
    return cli.run_main("recipe comparison", args, lambda: run(args))


def run(args) -> int:
    with open(args.config) as fh:
        cfg = yaml.safe_load(fh)
    if args.only:
        cfg["variants"] = [v for v in cfg["variants"] if v["name"] in args.only]
    rows = comparison.run(cfg, train_missing=not args.report_only)
    out = Path(cfg["report_dir"])
    out.mkdir(parents=True, exist_ok=True)
    table = comparison.markdown(rows)
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
