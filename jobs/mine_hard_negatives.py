"""Mine hard negatives for InsuranceQA questions from the bi-encoder's own recall.

    python -m jobs.mine_hard_negatives --split train --out artifacts/mined/train.jsonl \
        [--config jobs/configs/finetune_insuranceqa.yaml]
"""

from __future__ import annotations

import json

import yaml

from rerank_engine import cli
from rerank_engine.training.hard_negatives import MiningConfig, mine_insuranceqa


def main(argv=None, prog: str = "python -m jobs.mine_hard_negatives") -> int:
    p = cli.command_parser(prog, __doc__, "--split train --out artifacts/mined/train.jsonl")
    p.add_argument("--split", default="train", choices=["train", "valid"])
    p.add_argument("--out", required=True)
    p.add_argument("--config", default="jobs/configs/finetune_insuranceqa.yaml")
    p.add_argument("--cache-dir", default=".cache/embeddings")
    args = p.parse_args(argv)
    return cli.run_main("mining", args, lambda: run(args))


def run(args) -> int:
    with open(args.config) as fh:
        cfg = yaml.safe_load(fh)
    path, stats = mine_insuranceqa(args.split, MiningConfig.build(**cfg["mining"]), args.cache_dir, args.out)
    print(json.dumps({"out": str(path), **dict(stats)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
