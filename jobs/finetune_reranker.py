"""Fine-tune all-MiniLM-L6-v2 into an insurance cross-encoder on InsuranceQA (resumable).

    python -m jobs.finetune_reranker --config jobs/configs/finetune_insuranceqa.yaml [--ship]

Rerun the same command after an interruption: mining, the loss comparison and training resume from
`run_dir`. `--ship` writes the best checkpoint to `output_model` (fp16 safetensors + card).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from rerank_engine.training import recipe


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.finetune_reranker", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--ship", action="store_true", help="copy the best checkpoint to output_model")
    args = p.parse_args(argv)
    with open(args.config) as fh:
        cfg = yaml.safe_load(fh)
    summary = recipe.run(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    Path(cfg["run_dir"], "resolved_config.yaml").write_text(yaml.safe_dump(cfg))
    if args.ship:
        best = Path(cfg["run_dir"]) / summary["winner"] / "best"
        card = Path(cfg["output_model"], "README.md")
        text = card.read_text() if card.is_file() else "# insurance-minilm-l6-ce\n"
        print("shipped", recipe.ship(best, cfg["output_model"], text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
