"""Calibration: the reranker's absolute threshold and its score fusion, chosen on a labelled split and
written beside the model (`threshold.json`, `fusion.json`). The CLI is `jobs.calibrate`, which says what
is run and how; the score policy (`score_policy`) reads what this writes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from rerank_engine.errors import ConfigError, ModelNotFoundError
from rerank_engine.quality import evaluation, plots
from rerank_engine.quality.fusion import fit, logit_of
from rerank_engine.quality.metrics import noise_ratio
from rerank_engine.quality.score_policy import FUSION_FILE, THRESHOLD_FILE, calibrated_with
from rerank_engine.quality.thresholds import (
    GRID,
    Threshold,
    best_f1,
    for_precision,
    sweep,
    tradeoff,
    tradeoff_at,
)
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
            (plots_dir / f).is_file()
            for f in ("threshold_curves.png", "score_histograms.png", "threshold_tradeoff.md")
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
    fusion, fused = fit_fusion(sc, cosines, model / FUSION_FILE, settings, k_rerank, log=log)
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
        recall_top = zip((c[:k_rerank] for c in sc.candidates), sc.relevant, strict=True)
        recall_noise = noise_ratio(recall_top)
        (plots_dir / "threshold_tradeoff.md").write_text(
            tradeoff_markdown(fused, fusion.threshold, recall_noise, title, k_rerank)
        )
        log(f"plots and the threshold trade-off in {plots_dir}")
    log(f"calibration took {time.perf_counter() - started:.0f}s")
    return threshold.to_dict()


def fit_fusion(sc, cosines, path: Path, settings: dict, k_rerank: int, log=_log_info):
    """Fit the score fusion of the reranker with the recall cosine (`rerank_engine.quality.fusion`) on the
    same questions, calibrate its threshold (best F1, as for the plain score) and write `path`. Returns
    the fusion and the fused top-k (`ScoredQuery`s) it was calibrated on."""
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
    return fusion, fused


def tradeoff_markdown(fused, threshold: float, recall_noise: float, title: str, k: int) -> str:
    """The served (fused) score's threshold trade-off as a table: for each share of questions handed
    nothing, the threshold, what is kept and its noise, beside recall top-k's noise on the same questions."""
    rows = tradeoff(fused)
    lines = [
        f"# What the threshold trades: {title}",
        "",
        "The served score (fused with the recall cosine, `fusion.json`). Noise = share of the passages",
        "handed on that are not labelled relevant.",
        f"Recall's top-{k} on the same questions: **{recall_noise:.1%}**; the reranker's top-{k} with no "
        f"threshold: {rows[0]['noise']:.1%}.",
        "",
        f"| questions handed nothing | threshold | passages kept | noise | vs recall top-{k} |",
        "|---|---|---|---|---|",
    ]
    calibrated = {**tradeoff_at(fused, threshold), "calibrated": True}
    for r in sorted([*rows, calibrated], key=lambda r: r["threshold"]):
        name = f"{r['no_relevant_share']:.1%}" + (" (calibrated, best F1)" if r.get("calibrated") else "")
        lines.append(
            f"| {name} | {r['threshold']:.4f} | {r['kept']} | {r['noise']:.1%} | "
            f"{100 * (r['noise'] - recall_noise):+.1f} points |"
        )
    return "\n".join(lines) + "\n"
