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
import math
import time
from pathlib import Path

from rerank_engine import cli
from rerank_engine.quality import evaluation
from rerank_engine.quality.fusion import Fusion
from rerank_engine.quality.out_of_domain import out_of_domain
from rerank_engine.quality.score_policy import FUSION_FILE, THRESHOLD_FILE, ScorePolicy, calibrated_max_length
from rerank_engine.quality.thresholds import GRID, best_f1, sweep

SEED = {"F1": (0.74, 0.81), "threshold": 0.52, "noise": (0.42, 0.11)}  # the seed's reported figures
K = 5
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
    write_report(out, results, scored[first_id], plain, args, fusion)
    print(table)
    print(f"report: {out / 'report.md'}")
    return 0


# -- report.md ------------------------------------------------------------------------------------------

HANDED_ON_COLUMNS = (
    f"P@{K}",
    f"R@{K}",
    f"NDCG@{K}",
    "precision",
    "F1",
    "F1_all",
    "noise",
    "no_relevant",
    "nothing_when_missed",
    "empty_when_hit",
    "handed_on",
)


NOTES = [
    f"- P@{K}, R@{K}, NDCG@{K}: per question, averaged; R@{K} against every positive (recall misses",
    f"  included); a thresholded list shorter than {K} counts its empty places as misses in P@{K}.",
    "- precision = relevant passages handed on / passages handed on, pooled over questions;",
    "  noise = 1 − precision.",
    f"- F1: recall = relevant handed on / relevant in the system's top-{K} before any threshold (the",
    "  calibration objective, so 1.0 without a threshold). F1_all: recall against every positive.",
    "- no_relevant: share of questions handed nothing. nothing_when_missed: among the questions whose",
    "  positives recall missed, the share handed nothing (the right answer). empty_when_hit: among the",
    f"  questions with a positive in the rerank top-{K}, the share handed nothing (a lost answer).",
]


def _fmt(x) -> str:
    return "–" if isinstance(x, float) and math.isnan(x) else (f"{x:.3f}" if isinstance(x, float) else str(x))


def _table(rows: dict[str, dict], columns) -> str:
    lines = ["| system | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        if not name.startswith("_"):
            lines.append(f"| {name} | " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_report(
    out: Path, results: dict, sc, plain: ScorePolicy | None, args, fusion: Fusion | None = None
) -> Path:
    """report.md and its plots in `out`: `plain` is the reranker's calibrated score (threshold.json's),
    `fusion` the fused one (fusion.json's)."""
    from rerank_engine.quality import plots

    scored = sc.scored_queries(K)
    meta = results["_meta"]
    lines = [
        f"# Evaluation report: {sc.model_id} on InsuranceQA {meta['split']}",
        "",
        f"`python -m jobs.evaluate {' '.join(_argv(args))}` ({meta['seconds']:.0f} s; {meta['data']}).",
        "",
        "## Cascade",
        "",
        f"{results['cascade']['_info']}",
        "",
        evaluation.markdown_table(results["cascade"]),
    ]
    if "pool" in results:
        lines += [
            "",
            f"Pool setting: {results['pool']['_info']}",
            "",
            evaluation.markdown_table(results["pool"]),
        ]

    lines += ["", f"## Better none than bad: the calibrated threshold (top-{K} handed on)", ""]
    grid = sweep(scored, GRID)
    marks = {}
    if plain is None:
        lines += [f"No `{THRESHOLD_FILE}` beside the model: run `python -m jobs.calibrate` first.", ""]
    else:
        cmp = results["threshold"]
        info, settings = cmp["_info"], plain.settings
        lines += [
            f"Threshold **{plain.threshold:.4f}** ({plain.scale}, `{plain.reranker_model}`), chosen on "
            f"**{settings.get('split', '?')}** ({settings.get('questions', '?')} questions, best pooled F1 "
            f"{plain.calibration.get('at_threshold', {}).get('f1', float('nan')):.3f} there), never on "
            f"test. {info['questions']} {meta['split']} questions, recall top-{info['k_recall']}; "
            f"{info['positive_not_in_recall']} have no positive among the recall candidates.",
            "",
            _table(cmp, HANDED_ON_COLUMNS),
            "",
            *NOTES,
            "",
        ]
        marks["calibrated (valid)"] = plain.threshold
        rows = [name for name in cmp if not name.startswith("_")]
        pairs = [("reranker alone", plain.threshold, cmp[rows[1]], cmp[rows[2]])]
        if len(rows) == 5:  # the fused score's top-5 and its threshold (the job's default)
            pairs.append(("fused with recall (job default)", fusion.threshold, cmp[rows[3]], cmp[rows[4]]))
            lines += [
                f"Fused score: sigmoid({fusion.scale:.4f} · (logit + {fusion.recall_weight:g} · cosine) "
                f"{fusion.bias:+.4f}), fitted on the same valid questions (`{FUSION_FILE}`); its threshold "
                f"**{fusion.threshold:.4f}** is a calibrated probability of relevance.",
                "",
            ]
        lines += [
            "| | seed | " + " | ".join(f"ours, {name}" for name, *_ in pairs) + " |",
            "|---" * (2 + len(pairs)) + "|",
            f"| threshold | {SEED['threshold']:.2f} | "
            + " | ".join(f"{t:.3f}" for _, t, _, _ in pairs)
            + " |",
            f"| F1, top-5 → with threshold | {SEED['F1'][0]:.2f} → {SEED['F1'][1]:.2f} | "
            + " | ".join(f"{b['F1']:.3f} → {a['F1']:.3f}" for _, _, b, a in pairs)
            + " |",
            f"| noise, top-5 → with threshold | {SEED['noise'][0]:.0%} → {SEED['noise'][1]:.0%} | "
            + " | ".join(f"{b['noise']:.0%} → {a['noise']:.0%}" for _, _, b, a in pairs)
            + " |",
            "",
        ]
    oracle = best_f1(scored, model_id=sc.model_id) if any(q.relevant.any() for q in scored) else None
    if oracle is not None:
        lines += [
            f"For reference only (chosen on {meta['split']}, so not used): the best-F1 threshold on these "
            f"questions would be {oracle.value:.4f} (F1 {oracle.calibration['f1']:.3f}).",
            "",
        ]
        marks[f"best on {meta['split']} (reference)"] = oracle.value
    title = f"{sc.model_id}, {meta['split']} ({len(scored)} q), rerank top-{K}"
    plots.threshold_curves(grid, out / "threshold_curves.png", marks=marks, title=title)
    plots.score_histograms(
        scored, out / "score_histograms.png", threshold=plain.threshold if plain else None, title=title
    )
    lines += ["![P/R/F1 against the threshold](threshold_curves.png)", ""]
    lines += ["![scores of relevant and irrelevant pairs](score_histograms.png)", ""]
    if plain is not None:
        plots.grouped_bars(
            results["threshold"],
            (f"P@{K}", f"NDCG@{K}", "precision", "F1", "noise", "no_relevant"),
            out / "handed_on.png",
            title=f"what is handed on ({meta['split']})",
        )
        lines += ["![recall vs rerank vs thresholded](handed_on.png)", ""]

    lines += _out_of_domain_section(out, results.get("out_of_domain"), plots)
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _out_of_domain_section(out: Path, ood: dict | None, plots) -> list[str]:
    lines = ["## Out of domain: classic IR collections (NDCG@10)", ""]
    if not ood:
        lines += [
            "Not run: no classic IR collection found (they are read from ../shared/data/classic_ir).",
            "",
        ]
        return lines
    series: dict[str, dict[str, float]] = {"bi-encoder recall": {}}
    verdicts = []
    for name, rows in ood.items():
        info = rows["_info"]
        base_name = next(k for k in rows if k.startswith("bi-encoder"))
        lines += [
            f"**{name}**: {info['docs']} documents, {info['queries']} judged queries, "
            f"{info['relevant_in_recall']:.0%} of relevant documents in the recall top-{info['k_recall']}.",
            "",
            _table(rows, ("NDCG@10", "P@10", "ΔNDCG@10", "wins", "losses")),
            "",
        ]
        series["bi-encoder recall"][name] = rows[base_name]["NDCG@10"]
        for row_name, row in rows.items():
            if row_name.startswith("_") or row_name == base_name:
                continue
            label = "rerank + recall fusion" if "+ recall fusion" in row_name else "rerank"
            series.setdefault(label, {})[name] = row["NDCG@10"]
            d = row["ΔNDCG@10"]
            verdict = "helps" if d > 0.01 else ("does not help (about even)" if d > -0.01 else "hurts")
            verdicts.append(
                f"- {name}, {label}: **{verdict}**: NDCG@10 {rows[base_name]['NDCG@10']:.3f} → "
                f"{row['NDCG@10']:.3f} ({d:+.3f}; better on {row['wins']} queries, worse on {row['losses']})."
            )
    plots.grouped_bars(
        series, list(series["bi-encoder recall"]), out / "out_of_domain.png", title="NDCG@10 out of domain"
    )
    lines += ["In plain words:", "", *verdicts, "", "![NDCG@10 out of domain](out_of_domain.png)", ""]
    return lines


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
