"""Long passages: truncate vs chunk_max (MaxP over windows, two strides) on InsuranceQA valid (never test).

    python -m benchmarks.long_passages [--model models/insurance-minilm-l6-ce] [--queries 500] \
        [--max-length 128] [--strides 48 96] [--time-queries 50] \
        [--json reports/throughput/long_passages.json]

For `tokenizer.long_passages: truncate` and `chunk_max` at each stride, all at the same max_length (the
served one, 128 for the shipped model), side by side in one run: NDCG@5 of the rerank of the bi-encoder
top-20, the reranker alone and fused with the recall cosine (the fusion weight refitted for each setting
on the same questions, `rerank_engine.quality.fusion.fit`, as `benchmarks.max_length` does, so each is read at
its best weight), the windows scored per pair, and pairs/s (and windows/s) of the fp32 engine on the first
`--time-queries` questions' pairs, the settings interleaved over `--reps` repetitions (the median). The
scores are the engine's, as the job and `jobs.evaluate` compute them (`evaluation.score_cascade` with the
same tokenizer settings), and cached like `jobs.calibrate`'s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from rerank_engine.quality import evaluation
from rerank_engine.quality.fusion import fit, logit_of, mean_ndcg

TRUNCATE = "truncate"


def settings(strides: list[int]) -> dict[str, dict]:
    """Name → the tokenizer's long-passage keys: truncate, then chunk_max at each stride."""
    return {
        TRUNCATE: {"long_passages": "truncate", "stride": None},
        **{f"chunk_max, stride {s}": {"long_passages": "chunk_max", "stride": s} for s in strides},
    }


def windows_per_pair(model, max_length: int, setting: dict, queries, passages) -> np.ndarray:
    """The windows each pair is scored in under `setting` (1 each for truncate), from the engine's own
    tokenizer."""
    from rerank_engine.config import TokenizerConfig
    from rerank_engine.serving.exporting import resolve_export
    from rerank_engine.serving.tokenization import PairTokenizer

    config = TokenizerConfig.build(max_length=max_length, **evaluation.long_passage_settings(**setting))
    pairs = PairTokenizer(resolve_export(model, ["fp32"]), config)(queries, passages)
    return pairs.windows if pairs.windows is not None else np.ones(len(queries), np.int64)


def measure(
    model,
    questions,
    candidates: list[list[str]],
    cosines: list[np.ndarray],
    answers: dict[str, str],
    *,
    recall_model: str,
    max_length: int = 128,
    strides: list[int] = (48, 96),
    time_queries: int = 50,
    reps: int = 3,
    scores_cache: str | Path = ".cache/scores",
) -> dict:
    """The figures of each setting (`settings(strides)`), by name."""
    relevant = [set(q.answers) for q in questions]
    zeros = [c * 0 for c in cosines]
    flat_q = [q.text for q, c in zip(questions, candidates, strict=True) for _ in c]
    flat_p = [answers[d] for c in candidates for d in c]
    n_timed = sum(len(c) for c in candidates[:time_queries])
    rows, scorers = {}, {}
    for name, setting in settings(list(strides)).items():
        model_id, scorers[name], sc = evaluation.score_cascade(
            model,
            questions,
            candidates,
            answers,
            scores_cache,
            precision="fp32",
            max_length=max_length,
            **setting,
        )
        logits = [logit_of(s) for s in sc.scores]
        fusion = fit(candidates, logits, cosines, relevant, model_id=model_id, recall_model=recall_model)
        windows = windows_per_pair(model, max_length, setting, flat_q, flat_p)
        rows[name] = {
            **setting,
            "ndcg5_recall": round(mean_ndcg(candidates, zeros, cosines, relevant, 1.0, 5), 4),
            "ndcg5_reranker": round(mean_ndcg(candidates, logits, cosines, relevant, 0.0, 5), 4),
            "ndcg5_fused": fusion.calibration["ndcg@5_fused"],
            "recall_weight": fusion.recall_weight,
            "windows_per_pair": round(float(windows.mean()), 3) if len(windows) else 0.0,
            "pairs_over_one_window": round(float((windows > 1).mean()), 4) if len(windows) else 0.0,
            "timed_windows": int(windows[:n_timed].sum()),
        }
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(reps):  # interleaved: each repetition times every setting once
        for name in rows:
            t = time.perf_counter()
            scorers[name](flat_q[:n_timed], flat_p[:n_timed])
            times[name].append(time.perf_counter() - t)
    for name, row in rows.items():
        seconds = statistics.median(times[name])
        row["pairs_per_s"] = round(n_timed / seconds, 1)
        row["windows_per_s"] = round(row["timed_windows"] / seconds, 1)
        row["speed_vs_truncate"] = round(row["pairs_per_s"] / rows[TRUNCATE]["pairs_per_s"], 2)
    return rows


def markdown(rows: dict[str, dict]) -> str:
    lines = [
        "| long_passages | NDCG@5 reranker | NDCG@5 fused (w) | NDCG@5 recall | windows/pair | "
        "pairs > 1 window | pairs/s | windows/s | speed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['ndcg5_reranker']:.4f} | {r['ndcg5_fused']:.4f} ({r['recall_weight']:g}) | "
            f"{r['ndcg5_recall']:.4f} | {r['windows_per_pair']:.2f} | {r['pairs_over_one_window']:.1%} | "
            f"{r['pairs_per_s']} | {r['windows_per_s']} | {r['speed_vs_truncate']}× |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.long_passages", description=__doc__.splitlines()[0]
    )
    p.add_argument("--model", default="models/insurance-minilm-l6-ce")
    p.add_argument("--queries", type=int, default=500, help="first N valid questions")
    p.add_argument("--max-length", type=int, default=128, help="the served max_length (the shipped model's)")
    p.add_argument("--strides", type=int, nargs="+", default=[48, 96], help="chunk_max strides, in tokens")
    p.add_argument("--time-queries", type=int, default=50, help="questions whose pairs are timed")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (the median is reported)")
    p.add_argument("--embeddings-cache", default=".cache/embeddings")
    p.add_argument("--scores-cache", default=".cache/scores")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from rerank_engine.data.insuranceqa import answer_recall, load_answers, load_split

    questions = load_split("valid")[: args.queries]
    answers = load_answers()
    recall = answer_recall(args.embeddings_cache)
    candidates, cosines = evaluation.recall_top_k(questions, recall)
    rows = measure(
        args.model,
        questions,
        candidates,
        cosines,
        answers,
        recall_model=recall[0].model_id,
        max_length=args.max_length,
        strides=args.strides,
        time_queries=args.time_queries,
        reps=args.reps,
        scores_cache=args.scores_cache,
    )
    result = {
        "questions": len(questions),
        "split": "valid",
        "model": args.model,
        "max_length": args.max_length,
        "timed_pairs": sum(len(c) for c in candidates[: args.time_queries]),
        "by_setting": rows,
    }
    print(markdown(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
