"""Mine hard negatives for InsuranceQA questions from the bi-encoder's own recall.

    python -m jobs.mine_hard_negatives --split train --out artifacts/mined/train.jsonl \
        [--config jobs/configs/recipe_comparison.yaml --mining clean]
    python -m jobs.mine_hard_negatives --read artifacts/mined/train.jsonl --sample 30 \
        --sample-out reports/hard_negatives/paraphrase_sample.md

The first form mines and prints the counts of every guard; the second draws `--sample` answers that the
paraphrase guard kept out of the negatives, with both questions, for reading by a person.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from rerank_engine import cli
from rerank_engine.training.hard_negatives import (
    MiningConfig,
    mine_insuranceqa,
    paraphrase_sample,
    read_records,
)


def main(argv=None, prog: str = "python -m jobs.mine_hard_negatives") -> int:
    p = cli.command_parser(prog, __doc__, "--split train --out artifacts/mined/train.jsonl")
    p.add_argument("--split", default="train", choices=["train", "valid"])
    p.add_argument("--out")
    p.add_argument("--config", default="jobs/configs/recipe_comparison.yaml")
    p.add_argument("--mining", default=None, help="name of a mining block when the config has several")
    p.add_argument("--cache-dir", default=".cache/embeddings")
    p.add_argument("--read", help="an existing mined JSONL to draw the paraphrase sample from")
    p.add_argument("--sample", type=int, default=30)
    p.add_argument("--sample-out", default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.read and not args.out:
        p.error("--out is required when mining")
    return cli.run_main("mining", args, lambda: run(args, p))


def run(args, p) -> int:
    if args.read:
        from rerank_engine.data.insuranceqa import load_answers, load_split

        text_of = {q.qid: q.text for q in load_split("train")}
        md = paraphrase_sample(read_records(args.read), text_of, load_answers(), args.sample, args.seed)
        if args.sample_out:
            Path(args.sample_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.sample_out).write_text(md)
        print(md)
        return 0
    with open(args.config) as fh:
        mining = yaml.safe_load(fh)["mining"]
    named = all(isinstance(v, dict) for v in mining.values())
    if named and args.mining not in mining:
        p.error(f"{args.config} has several mining blocks; pass --mining with one of {sorted(mining)}")
    if named:
        mining = mining[args.mining]
    path, stats = mine_insuranceqa(args.split, MiningConfig.build(**mining), args.cache_dir, args.out)
    print(json.dumps({"out": str(path), **dict(stats)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
