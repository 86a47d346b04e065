"""What truncation costs: the reranker at several max_length values on InsuranceQA valid (never test).

    python -m benchmarks.max_length [--model models/insurance-minilm-l6-ce] [--queries 500] \
        [--lengths 128 192 256] [--time-queries 50] [--json reports/throughput/max_length.json]

For each max_length: NDCG@5 of the rerank of the bi-encoder top-20 (the reranker alone, and fused with
the recall cosine at the weight fitted at that length, `rerank_engine.quality.fusion`), and pairs/s of the
fp32 engine on the first `--time-queries` questions' pairs, the lengths interleaved over 3 repetitions (the
median), so the speed ratios are measured side by side. Scores are cached like `jobs.calibrate`'s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from rerank_engine.quality import evaluation
from rerank_engine.quality.fusion import fit, logit_of, mean_ndcg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.max_length", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models/insurance-minilm-l6-ce")
    p.add_argument("--queries", type=int, default=500, help="first N valid questions")
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 192, 256])
    p.add_argument("--time-queries", type=int, default=50, help="questions whose pairs are timed")
    p.add_argument("--embeddings-cache", default=".cache/embeddings")
    p.add_argument("--scores-cache", default=".cache/scores")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from rerank_engine.data.insuranceqa import answer_recall, load_answers, load_split

    questions = load_split("valid")[: args.queries]
    answers = load_answers()
    recall = answer_recall(args.embeddings_cache)
    candidates, cosines = evaluation.recall_top_k(questions, recall)
    relevant = [set(q.answers) for q in questions]
    zeros = [c * 0 for c in cosines]
    rows, scorers = {}, {}
    for length in args.lengths:
        model_id, scorers[length], sc = evaluation.score_cascade(
            args.model,
            questions,
            candidates,
            answers,
            args.scores_cache,
            precision="fp32",
            max_length=length,
        )
        logits = [logit_of(s) for s in sc.scores]
        fusion = fit(
            candidates, logits, cosines, relevant, model_id=model_id, recall_model=recall[0].model_id
        )
        rows[length] = {
            "ndcg5_recall": round(mean_ndcg(candidates, zeros, cosines, relevant, 1.0, 5), 4),
            "ndcg5_reranker": round(mean_ndcg(candidates, logits, cosines, relevant, 0.0, 5), 4),
            "ndcg5_fused": fusion.calibration["ndcg@5_fused"],
            "recall_weight": fusion.recall_weight,
        }

    n = args.time_queries
    flat_q = [q.text for q, c in zip(questions[:n], candidates[:n], strict=True) for _ in c]
    flat_p = [answers[d] for c in candidates[:n] for d in c]
    times: dict[int, list[float]] = {length: [] for length in args.lengths}
    for _ in range(3):  # interleaved: each repetition times every length once
        for length in args.lengths:
            t = time.perf_counter()
            scorers[length](flat_q, flat_p)
            times[length].append(time.perf_counter() - t)
    base = max(args.lengths)
    for length in args.lengths:
        rows[length]["pairs_per_s"] = round(len(flat_p) / statistics.median(times[length]), 1)
    for length in args.lengths:
        rows[length][f"speed_vs_{base}"] = round(rows[length]["pairs_per_s"] / rows[base]["pairs_per_s"], 2)

    result = {
        "questions": len(questions),
        "timed_pairs": len(flat_p),
        "model": args.model,
        "by_max_length": rows,
    }
    print("| max_length | NDCG@5 reranker | NDCG@5 fused (w) | NDCG@5 recall | pairs/s | speed |")
    print("|---|---|---|---|---|---|")
    for length, r in rows.items():
        print(
            f"| {length} | {r['ndcg5_reranker']:.4f} | {r['ndcg5_fused']:.4f} ({r['recall_weight']:g}) | "
            f"{r['ndcg5_recall']:.4f} | {r['pairs_per_s']} | {r[f'speed_vs_{base}']}× |"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
