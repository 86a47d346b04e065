"""Evaluate BM25, the bi-encoder and cross-encoders on InsuranceQA (report on test; choose on valid).

    python -m jobs.evaluate --split test --models models/insurance-minilm-l6-ce --queries 1000 \
        --pool-queries 0 --out reports/insuranceqa_test_report

Writes <out>/results.json, <out>/table.md and <out>/report.md with its PNG plots, and prints the table.
Cross-encoders run as the job runs them on CPU (fp32 ONNX by default, exported and cached on first use);
the pairs' scores are cached under --scores-cache by model and precision, so a rerun scores nothing new.

report.md sets side by side, for the first model: recall top-5, rerank top-5, and rerank top-5 with the
threshold calibrated on valid (`<model>/threshold.json`, written by `python -m jobs.calibrate`; it must
name this model). Out of domain, on the classic IR collections found under --classic-ir (Cranfield, CISI,
MED; skipped where absent): bi-encoder recall vs rerank, NDCG@10.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rerank_engine import cli
from rerank_engine.quality import evaluation
from rerank_engine.quality.out_of_domain import out_of_domain
from rerank_engine.quality.report import K, write_report
from rerank_engine.quality.score_policy import THRESHOLD_FILE, ScorePolicy, calibrated_max_length

EXAMPLE = (
    "--split test --models models/insurance-minilm-l6-ce --queries 1000 --pool-queries 0 "
    "--out reports/insuranceqa_test_report"
)


def main(argv=None, prog: str = "python -m jobs.evaluate") -> int:
    p = cli.command_parser(prog, __doc__, EXAMPLE)
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--models", nargs="*", default=["models/insurance-minilm-l6-ce"])
    p.add_argument("--queries", type=int, default=None, help="first N questions for the cascade (all)")
    p.add_argument("--pool-queries", type=int, default=200, help="first N questions for the pool setting")
    p.add_argument("--cache-dir", default=".cache/embeddings")
    p.add_argument("--scores-cache", default=".cache/scores")
    p.add_argument("--precision", default="fp32", choices=["int8", "fp32"], help="engine variant scored")
    p.add_argument(
        "--classic-ir", default=None, help="classic IR folder (default: ../shared/data/classic_ir)"
    )
    p.add_argument("--classic-queries", type=int, default=None, help="first N judged queries per collection")
    p.add_argument("--no-classic-ir", action="store_true")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per pair (default: what the first model's threshold was calibrated at, else 256)",
    )
    p.add_argument(
        "--long-passages",
        default="truncate",
        choices=["truncate", "chunk_max"],
        help="how passages longer than the window are scored, as the job's tokenizer.long_passages",
    )
    p.add_argument("--stride", type=int, default=None, help="chunk_max: tokens between window starts")
    p.add_argument("--out", default="reports/insuranceqa")
    args = p.parse_args(argv)
    return cli.run_main("evaluate", args, lambda: evaluate(args))


def evaluate(args) -> int:
    started = time.perf_counter()

    from rerank_engine.data import classic_ir
    from rerank_engine.data.insuranceqa import (
        DATA_VERSION,
        answer_ids,
        answer_recall,
        load_answers,
        load_split,
    )
    from rerank_engine.recall.bm25 import BM25

    questions = load_split(args.split)[: args.queries]
    answers = load_answers()
    recall = answer_recall(args.cache_dir)
    candidates, cosines = evaluation.recall_top_k(questions, recall)
    args.max_length = args.max_length or calibrated_max_length(args.models[0]) or 256
    scorers, scored = {}, {}
    for model in args.models:
        model_id, score, sc = evaluation.score_cascade(
            model,
            questions,
            candidates,
            answers,
            args.scores_cache,
            precision=args.precision,
            max_length=args.max_length,
            long_passages=args.long_passages,
            stride=args.stride,
        )
        scorers[model_id], scored[model_id] = score, sc
    first_model, first_id = args.models[0], next(iter(scored))
    windows = evaluation.long_passage_settings(args.long_passages, args.stride)
    calibrated = {"max_length": args.max_length, "windows": windows}  # what a calibration must match
    fused_policy = ScorePolicy.for_evaluation(first_model, first_id, recall[0].model_id, **calibrated)
    fusion = fused_policy.fusion if fused_policy is not None else None
    fused = evaluation.fused_cascade(scored[first_id], fusion, cosines) if fusion else None
    bm25 = BM25([answers[d] for d in answer_ids()])
    rows = scored if fused is None else {**scored, f"{first_id} + recall fusion": fused}
    results = {"cascade": evaluation.cascade(questions, recall, answers, bm25, rows)}
    if args.pool_queries:
        results["pool"] = evaluation.pool(
            load_split(args.split)[: args.pool_queries],
            recall[2],
            recall[0],
            answers,
            scorers,
            fusions={first_id: fusion} if fusion else None,
        )

    plain = ScorePolicy.for_evaluation(first_model, first_id, recall[0].model_id, **calibrated, fused=False)
    if plain is None:
        path = Path(first_model) / THRESHOLD_FILE
        print(f"{path} not found: the report has no thresholded row (run python -m jobs.calibrate)")
    else:
        results["threshold"] = evaluation.threshold_comparison(scored[first_id], plain.threshold, K)
        results["threshold"]["_info"]["calibration"] = plain.settings
        if fused is not None and fusion.threshold is not None:
            f = evaluation.threshold_comparison(fused, fusion.threshold, K)
            plain_rows = [name for name in f if not name.startswith("_")]
            results["threshold"][f"fused top-{K}"] = f[plain_rows[1]]
            results["threshold"][f"fused top-{K} ≥ {fusion.threshold:.3f}"] = f[plain_rows[2]]
            results["threshold"]["_info"]["fusion"] = fusion.weights()
    if not args.no_classic_ir:
        root = classic_ir.classic_ir_dir(args.classic_ir)
        results["out_of_domain"] = {
            name: out_of_domain(
                classic_ir.load_collection(name, root),
                recall[0],
                {first_id: scorers[first_id]},
                args.cache_dir,
                queries=args.classic_queries,
                fusions={first_id: fusion} if fusion else None,
            )
            for name in classic_ir.available(root)
        }
    results["_meta"] = {
        "split": args.split,
        "data": DATA_VERSION,
        "models": args.models,
        "seconds": round(time.perf_counter() - started, 1),
    }

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    table = "\n\n".join(
        f"**{setting}** ({results[setting]['_info']})\n\n" + evaluation.markdown_table(results[setting])
        for setting in ("cascade", "pool")
        if setting in results
    )
    (out / "table.md").write_text(table + "\n")
    command = "python -m jobs.evaluate " + " ".join(_argv(args))
    write_report(out, results, scored[first_id], plain, command, fusion)
    print(table)
    print(f"report: {out / 'report.md'}")
    return 0


def _argv(args) -> list[str]:
    parts = ["--split", args.split, "--models", *args.models]
    if args.queries is not None:
        parts += ["--queries", str(args.queries)]
    parts += ["--pool-queries", str(args.pool_queries), "--max-length", str(args.max_length)]
    windows = evaluation.long_passage_settings(
        getattr(args, "long_passages", "truncate"), getattr(args, "stride", None)
    )
    for key, value in windows.items():
        parts += [f"--{key.replace('_', '-')}", str(value)]
    if args.classic_queries is not None:
        parts += ["--classic-queries", str(args.classic_queries)]
    if args.no_classic_ir:
        parts.append("--no-classic-ir")
    return [*parts, "--out", args.out]


if __name__ == "__main__":
    raise SystemExit(main())
