"""Evaluate BM25, the bi-encoder and cross-encoders on InsuranceQA (report on test; choose on valid).

    python -m jobs.evaluate --split test --models models/insurance-minilm-l6-ce \
        artifacts/models/minilm-ce-500-triples --pool-queries 200 --out reports/insuranceqa_test

Writes <out>/results.json and <out>/table.md and prints the table. Cross-encoders run as the job runs
them on CPU (int8 ONNX, exported and cached on first use).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rerank_engine import evaluation
from rerank_engine.bm25 import BM25
from rerank_engine.data.insuranceqa import DATA_VERSION, answer_ids, answer_recall, load_answers, load_split


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--models", nargs="*", default=["models/insurance-minilm-l6-ce"])
    p.add_argument("--queries", type=int, default=None, help="first N questions for the cascade (all)")
    p.add_argument("--pool-queries", type=int, default=200, help="first N questions for the pool setting")
    p.add_argument("--cache-dir", default=".cache/embeddings")
    p.add_argument("--out", default="reports/insuranceqa")
    args = p.parse_args(argv)
    started = time.perf_counter()

    questions = load_split(args.split)
    answers = load_answers()
    recall = answer_recall(args.cache_dir)
    scorers = {}
    for model in args.models:
        model_id, score = evaluation.engine_scorer(model)
        scorers[model_id] = score
    bm25 = BM25([answers[d] for d in answer_ids()])
    results = {
        "cascade": evaluation.cascade(questions[: args.queries], recall, answers, bm25, scorers),
        "pool": evaluation.pool(questions[: args.pool_queries], recall[2], recall[0], answers, scorers),
        "_meta": {
            "split": args.split,
            "data": DATA_VERSION,
            "models": args.models,
            "seconds": round(time.perf_counter() - started, 1),
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = "\n\n".join(
        f"**{setting}** ({results[setting]['_info']})\n\n" + evaluation.markdown_table(results[setting])
        for setting in ("cascade", "pool")
    )
    (out / "table.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
