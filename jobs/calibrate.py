"""Calibrate the reranker's absolute threshold on InsuranceQA valid and write it beside the model.

    python -m jobs.calibrate --model models/insurance-minilm-l6-ce --split valid --queries 500 \
        [--target-precision 0.5] [--plots reports/calibration/insurance-minilm-l6-ce] [--force]

Runs the cascade as the job does (bi-encoder recall top-20 over all 27,413 answers → cross-encoder,
fp32 ONNX on CPU → top-5), sweeps thresholds over the scored top-5 (`rerank_engine.quality.thresholds`), and
writes `<model>/threshold.json`: the best-F1 threshold on the probability scale, bound to the model id, with
the settings and figures it was chosen by. It also fits the score fusion of the reranker's logit with the
recall cosine on the same questions (`rerank_engine.quality.fusion`) and writes `<model>/fusion.json` with the
fused score's own best-F1 threshold. The batch job uses the fused score and its threshold by default, the
plain one where it cannot fuse (logged candidates, another bi-encoder, `fusion: off`). Plots:
`threshold_curves.png` (precision / recall / F1 / share no_relevant against the threshold) and
`score_histograms.png` (scores of relevant vs irrelevant pairs).

The test split is never used here (report on it with `python -m jobs.evaluate --split test`). A rerun
with the same model and settings finds `threshold.json` up to date and returns at once; the pairs' scores
are cached under `--cache-dir`, so a rerun with other settings (`--target-precision`) scores nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from rerank_engine import cli
from rerank_engine.errors import ConfigError, ModelNotFoundError
from rerank_engine.quality import evaluation, plots
from rerank_engine.quality.fusion import Fusion, fit, logit_of
from rerank_engine.quality.score_policy import FUSION_FILE, THRESHOLD_FILE, calibrated_with
from rerank_engine.quality.thresholds import GRID, Threshold, best_f1, for_precision, sweep
from rerank_engine.serving.exporting import resolve_export
from rerank_engine.serving.manifest import read_manifest

_log_info = logging.getLogger(__name__).info

CRITERION = "best F1 pooled over the rerank top-k (recall = relevant kept / relevant in the top-k)"


def calibrate(
    model: str | Path,
    questions,
    answers: dict[str, str],
    recall,
    *,
    recall_model: str | None = None,
    split: str,
    data: str,
    k_recall: int = 20,
    k_rerank: int = 5,
    target_precision: float | None = None,
    precision: str = "fp32",
    max_length: int = 256,
    long_passages: str = "truncate",
    stride: int | None = None,
    plots_dir: str | Path | None = None,
    cache_dir: str | Path = ".cache/scores",
    force: bool = False,
    log=_log_info,
) -> dict:
    """Choose and write the threshold for `model` (a local model folder) on the given questions.

    `recall` is (BiEncoder, RecallIndex, _) as `answer_recall` returns it, or a function returning it
    (called only when something has to be scored; then `recall_model` names the bi-encoder). `data` names
    the data set (kept in the record). Returns the record written to `<model>/threshold.json` (with
    `"skipped": True` when the file was already up to date: nothing is loaded then but the manifest)."""
    if split == "test":
        raise ConfigError("thresholds are chosen on valid, never on test (report on test with jobs.evaluate)")
    if callable(recall) and not recall_model:
        raise ValueError("a recall given as a function needs recall_model (its bi-encoder's id)")
    model = Path(model)
    if not model.is_dir():
        raise ModelNotFoundError(
            f"--model must be a local model folder ({THRESHOLD_FILE} goes into it): {model}"
        )
    started = time.perf_counter()
    model_id = read_manifest(resolve_export(model, [precision])).model_id
    settings = {
        "split": split,
        "data": data,
        "questions": len(questions),
        "first_qid": questions[0].qid if questions else None,
        "k_recall": k_recall,
        "k_rerank": k_rerank,
        "recall_model": recall_model or recall[0].model_id,
        "precision": precision,
        "max_length": max_length,
        # truncate adds nothing: the records written before chunk_max existed stay up to date
        **evaluation.long_passage_settings(long_passages, stride),
        "target_precision": target_precision,
    }
    path = model / THRESHOLD_FILE
    plots_dir = Path(plots_dir) if plots_dir else None
    current = None if force else calibrated_with(model, model_id, settings)
    if current is not None:
        have_plots = plots_dir is None or all(
            (plots_dir / f).is_file() for f in ("threshold_curves.png", "score_histograms.png")
        )
        if have_plots:
            log(f"{path} is up to date for {model_id} ({current.value:.4f}); --force recalibrates")
            return {**current.to_dict(), "skipped": True}

    recall = recall() if callable(recall) else recall
    if recall[0].model_id != settings["recall_model"]:
        raise ConfigError(f"recall_model {recall_model!r} is not the recall's {recall[0].model_id!r}")
    candidates, cosines = evaluation.recall_top_k(questions, recall, k_recall)
    _, _, sc = evaluation.score_cascade(
        model,
        questions,
        candidates,
        answers,
        cache_dir,
        precision=precision,
        max_length=max_length,
        long_passages=long_passages,
        stride=stride,
        log=log,
    )
    fit_fusion(sc, cosines, model / FUSION_FILE, settings, k_rerank, log=log)
    scored = sc.scored_queries(k_rerank)
    best = best_f1(scored, model_id=model_id)
    grid = sweep(scored, GRID)
    fixed = sweep(scored, [0.0, 0.5])
    record = {
        "criterion": CRITERION,
        "settings": settings,
        "at_threshold": best.calibration,
        "no_threshold": fixed.at(0),
        "at_0.5": fixed.at(1),
        "positive_not_in_recall": int(sum(sc.missed())),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if target_precision is not None:
        target = for_precision(scored, target_precision, model_id=model_id)
        record["target_precision"] = (
            {"target": target_precision, **target.calibration}
            if target
            else {"target": target_precision, "reached": False}
        )
    threshold = Threshold(value=best.value, model_id=model_id, calibration=record)
    threshold.save(path)
    log(
        f"wrote {path}: {best.value:.4f} (F1 {best.calibration['f1']:.3f}, precision "
        f"{best.calibration['precision']:.3f}, recall {best.calibration['recall']:.3f})"
    )

    if plots_dir is not None:
        marks = {"best F1": best.value}
        if record.get("target_precision", {}).get("threshold") is not None:
            marks[f"precision ≥ {target_precision}"] = record["target_precision"]["threshold"]
        title = f"{model_id}, {split} ({len(questions)} q), rerank top-{k_rerank}"
        plots.threshold_curves(grid, plots_dir / "threshold_curves.png", marks=marks, title=title)
        plots.score_histograms(scored, plots_dir / "score_histograms.png", threshold=best.value, title=title)
        log(f"plots in {plots_dir}")
    log(f"calibration took {time.perf_counter() - started:.0f}s")
    return threshold.to_dict()


def fit_fusion(sc, cosines, path: Path, settings: dict, k_rerank: int, log=_log_info) -> Fusion:
    """Fit the score fusion of the reranker with the recall cosine (`rerank_engine.quality.fusion`) on the
    same questions, calibrate its threshold (best F1, as for the plain score) and write `path`."""
    fusion = fit(
        sc.candidates,
        [logit_of(s) for s in sc.scores],
        cosines,
        sc.relevant,
        model_id=sc.model_id,
        recall_model=settings["recall_model"],
        k=k_rerank,
    )
    fused = evaluation.fused_cascade(sc, fusion, cosines).scored_queries(k_rerank)
    best = best_f1(fused, model_id=fusion.score_id())
    fusion = dataclasses.replace(
        fusion,
        threshold=best.value,
        calibration={**fusion.calibration, "settings": settings, "at_threshold": best.calibration},
    )
    fusion.save(path)
    c = fusion.calibration
    log(
        f"wrote {path}: recall_weight {fusion.recall_weight:g}, NDCG@{k_rerank} recall "
        f"{c[f'ndcg@{k_rerank}_recall_alone']:.4f}, reranker {c[f'ndcg@{k_rerank}_reranker_alone']:.4f}, "
        f"fused {c[f'ndcg@{k_rerank}_fused']:.4f}; threshold {best.value:.4f} "
        f"(F1 {best.calibration['f1']:.3f})"
    )
    return fusion


EXAMPLE = "--model models/insurance-minilm-l6-ce --split valid --queries 500 --max-length 128"


def main(argv=None, prog: str = "python -m jobs.calibrate") -> int:
    p = cli.command_parser(prog, __doc__, EXAMPLE)
    p.add_argument("--model", default="models/insurance-minilm-l6-ce", help="local model folder")
    p.add_argument("--split", default="valid", choices=["valid"], help="never test")
    p.add_argument("--queries", type=int, default=None, help="first N questions of the split (all)")
    p.add_argument("--k-recall", type=int, default=20)
    p.add_argument("--k-rerank", type=int, default=5)
    p.add_argument("--target-precision", type=float, default=None)
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["int8", "fp32"],
        help="engine variant scored (the job's CPU default: fp32)",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=256,
        help="tokens per pair scored; the job then serves at this length (the shipped model: 128)",
    )
    p.add_argument(
        "--long-passages",
        default="truncate",
        choices=["truncate", "chunk_max"],
        help="how passages longer than the window are scored (tokenizer.long_passages; recorded)",
    )
    p.add_argument("--stride", type=int, default=None, help="chunk_max: tokens between window starts")
    p.add_argument("--plots", default=None, help="plot folder (reports/calibration/<model folder name>)")
    p.add_argument("--embeddings-cache", default=".cache/embeddings")
    p.add_argument("--cache-dir", default=".cache/scores")
    p.add_argument(
        "--force", action="store_true", help=f"recalibrate even when {THRESHOLD_FILE} is up to date"
    )
    args = p.parse_args(argv)
    return cli.run_main("calibrate", args, lambda: run(args))


def run(args) -> int:
    from rerank_engine.data.insuranceqa import DATA_VERSION, answer_recall, load_answers, load_split
    from rerank_engine.recall.index import BiEncoder

    questions = load_split(args.split)[: args.queries]
    result = calibrate(
        args.model,
        questions,
        load_answers(),
        lambda: answer_recall(args.embeddings_cache),
        recall_model=BiEncoder.describe(None),
        split=args.split,
        data=DATA_VERSION,
        k_recall=args.k_recall,
        k_rerank=args.k_rerank,
        target_precision=args.target_precision,
        precision=args.precision,
        max_length=args.max_length,
        long_passages=args.long_passages,
        stride=args.stride,
        plots_dir=args.plots or Path("reports/calibration") / Path(args.model).name,
        cache_dir=args.cache_dir,
        force=args.force,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
