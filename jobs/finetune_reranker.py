"""Fine-tune all-MiniLM-L6-v2 into an insurance cross-encoder on InsuranceQA (resumable).

    python -m jobs.finetune_reranker --config jobs/configs/finetune_insuranceqa_v6.yaml [--ship]
        [--set train.steps=600 --set run_dir=artifacts/try ...]

Rerun the same command after an interruption: mining, the loss comparison and training resume from
`run_dir`. `--ship` writes the best checkpoint to `output_model` (fp16 safetensors + card).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from rerank_engine import cli
from rerank_engine.training import recipe


def main(argv=None, prog: str = "python -m jobs.finetune_reranker") -> int:
    p = cli.command_parser(
        prog,
        __doc__,
        "--config jobs/configs/finetune_insuranceqa_v6.yaml --ship",
        overrides="override a recipe key, e.g. train.steps=600 (repeatable)",
    )
    p.add_argument("--config", required=True)
    p.add_argument("--ship", action="store_true", help="copy the best checkpoint to output_model")
    args = p.parse_args(argv)
    return cli.run_main("finetune", args, lambda: run(args))


def run(args) -> int:
    cfg = recipe.load_recipe(args.config, cli.parse_overrides(args.overrides))
    summary = recipe.run(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    Path(cfg["run_dir"], "resolved_config.yaml").write_text(yaml.safe_dump(cfg))
    if args.ship:
        best = Path(cfg["run_dir"]) / summary["winner"] / "best"
        print("shipped", recipe.ship(best, cfg["output_model"]))  # its card kept
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
