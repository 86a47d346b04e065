"""Distil a faster student from the fine-tuned cross-encoder: keep N of its layers, train on its logits.

    python -m jobs.distill --config jobs/configs/distill_insuranceqa.yaml [--teacher DIR] [--layers N] \
        [--ship]

`--teacher` (a model folder) and `--layers` (N evenly spaced layers, or 0-based indices such as 1,3,5)
override the config's. Rerun the same command after an interruption: mining, the teacher's cached logits
and training resume from `run_dir`; a new teacher (other bytes) trains in its own folder under `run_dir`,
so distilling a newly shipped teacher is this same command. `--ship` writes the best student to
`output_model` (fp16 safetensors + card).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from rerank_engine import cli
from rerank_engine.training import distill, recipe


def layers_arg(text: str) -> int | list[int]:
    """`3` → 3 (evenly spaced); `1,3,5` → [1, 3, 5] (0-based indices)."""
    try:
        return [int(x) for x in text.split(",")] if "," in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected N or comma-separated layer indices, got {text!r}"
        ) from None


def main(argv=None, prog: str = "python -m jobs.distill") -> int:
    p = cli.command_parser(
        prog,
        __doc__,
        "--config jobs/configs/distill_insuranceqa.yaml --ship",
        overrides="override a recipe key, e.g. distill.steps=3600 (repeatable)",
    )
    p.add_argument("--config", required=True)
    p.add_argument("--teacher", help="teacher model folder (default: the config's `teacher`)")
    p.add_argument("--layers", type=layers_arg, help="N, or 0-based layer indices 1,3,5 (default: config)")
    p.add_argument("--ship", action="store_true", help="copy the best student to output_model")
    args = p.parse_args(argv)
    return cli.run_main("distill", args, lambda: run(args))


def run(args) -> int:
    cfg = recipe.load_recipe(args.config, cli.parse_overrides(args.overrides), distill.DistillRecipe)
    if args.teacher:
        cfg["teacher"] = args.teacher
    if args.layers is not None:
        cfg["distill"] = {**cfg["distill"], "layers": args.layers}
    summary = distill.run(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    Path(summary["run_dir"], "resolved_config.yaml").write_text(yaml.safe_dump(cfg))
    if args.ship:
        print("shipped", recipe.ship(summary["best_dir"], cfg["output_model"]))  # its card kept
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
