"""A distilled student beside its teacher in `benchmarks.throughput --student DIR` (issue #25).

Speed: the student's engine (`S_student_onnx_fp32_bucketed_8192`) is one more variant timed on the same
pairs as the teacher's (`C_onnx_fp32_bucketed_8192`), A and B, so its ratios are measured side by side.
Quality: agreement with A cannot be the bar for a different model, so each model is scored on labelled
InsuranceQA *valid* questions (the bi-encoder's top-20 over all answers, gold answers as labels), as the
job serves it: at its calibrated max_length, alone and fused with the recall cosine by its own
`fusion.json`.
"""

from __future__ import annotations

from pathlib import Path

STUDENT = "S_student_onnx_fp32_bucketed_8192"
TEACHER = "C_onnx_fp32_bucketed_8192"  # the teacher's engine at the same precision and batching


def variant(student: str | Path, threads: int):
    """The student's engine, configured as the teacher's `TEACHER` variant."""
    from benchmarks.variants import EngineVariant
    from rerank_engine.serving.exporting import resolve_export

    return EngineVariant(
        resolve_export(student, ["fp32"]),
        precision="fp32",
        threads=threads,
        batching={"bucketing": True, "max_batch_tokens": 8192, "max_batch_rows": 256},
    )


def rescale_flops(row: dict, teacher_shapes, student_model: str | Path, lengths) -> None:
    """`measure` counts every variant's useful FLOPs with the teacher's shapes: redo the student's row
    with its own (fewer layers), on the same true lengths (the student keeps the teacher's tokenizer)."""
    from benchmarks.variants import Shapes

    ratio = Shapes.of(student_model).flops(lengths) / teacher_shapes.flops(lengths)
    for key in ("useful_gflops", "share_of_int8_gemm", "share_of_fp32_gemm"):
        row[key] = round(row[key] * ratio, 3)


def valid_quality(
    models: dict[str, str | Path], n_questions: int, cache_dir: str | Path, answers: int | None = None
) -> dict:
    """NDCG@5 of each model on the first `n_questions` valid questions' recall top-20, alone and as
    served (fused where it has a fusion.json), with recall's own beside them; recalled from all answers,
    or from the first `answers` of them and the gold ones (`answer_subset`, for --quick)."""
    from rerank_engine.data.insuranceqa import answer_recall, answer_subset, load_answers, load_split
    from rerank_engine.quality.evaluation import fused_cascade, recall_top_k, score_cascade, summarise
    from rerank_engine.quality.score_policy import calibrated_max_length, read_fusion

    answers = load_answers()
    questions = load_split("valid")[:n_questions]
    pool = answer_subset(questions, answers) if answers else None
    cands, cosines = recall_top_k(questions, answer_recall(".cache/embeddings", ids=pool))
    relevant = [set(q.answers) for q in questions]
    out = {
        "split": "valid",
        "questions": len(questions),
        "answers": len(pool) if pool else "all",
        "recall_ndcg5": summarise(list(zip(cands, relevant, strict=True)))["NDCG@5"],
    }
    for name, model in models.items():
        max_length = calibrated_max_length(model) or 256  # as the job serves it
        model_id, _, sc = score_cascade(
            model,
            questions,
            cands,
            answers,
            cache_dir,
            precision="fp32",
            max_length=max_length,
            log=lambda m: None,
        )
        fusion = read_fusion(model, model_id)  # checked to be this model's
        row = {"model": str(model), "max_length": max_length, "ndcg5_alone": _ndcg5(sc)}
        if fusion is not None:
            row["ndcg5_served"] = _ndcg5(fused_cascade(sc, fusion, cosines))
            row["recall_weight"] = fusion.recall_weight
        else:
            row["ndcg5_served"] = row["ndcg5_alone"]
        out[name] = row
    return out


def _ndcg5(sc) -> float:
    from rerank_engine.quality.evaluation import summarise

    runs = [(ids, rel) for (ids, _), rel in zip(sc.reranked(len(sc.candidates[0])), sc.relevant, strict=True)]
    return summarise(runs)["NDCG@5"]


def targets(result: dict) -> list[tuple[str, float | None, bool]]:
    """Issue #25's targets against this run: (target, value, met)."""
    table = result["variants"]
    s, t = table[STUDENT], table[TEACHER]
    speed = round(s["pairs_per_s"] / t["pairs_per_s"], 3)
    rows = [
        ("student ≥ 2× the teacher's pairs/s", speed, speed >= 2.0),
        ("student ≥ 2.5× B (pairs/s)", s["ratio_vs_B"], (s["ratio_vs_B"] or 0) >= 2.5),
    ]
    quality = result.get("student_quality")
    if quality:
        gap = round(quality["teacher"]["ndcg5_served"] - quality["student"]["ndcg5_served"], 4)
        rows.append(("valid NDCG@5 as served within 0.01 of the teacher's (gap)", gap, gap <= 0.01))
    log = result.get("student_query_log", {})
    if "ratio_vs_A" in log:
        rows.append(
            ("query log with the student: ≥ 25× A per query", log["ratio_vs_A"], log["ratio_vs_A"] >= 25)
        )
    return rows


def markdown(result: dict) -> list[str]:
    """The student's lines of the report (empty without `--student`)."""
    quality = result.get("student_quality")
    if not quality:
        return []
    pool = quality.get("answers", "all")
    over = "" if pool == "all" else f" over {pool:,} answers, --quick"
    lines = [
        f"Student vs teacher on {quality['questions']} labelled InsuranceQA valid questions (recall top-20"
        f"{over}; "
        f"recall alone NDCG@5 {quality['recall_ndcg5']:.4f}):",
        "",
        "| model | max_length | NDCG@5 alone | NDCG@5 as served |",
        "|---|---|---|---|",
    ]
    for name in ("teacher", "student"):
        row = quality[name]
        lines.append(
            f"| {name} `{row['model']}` | {row['max_length']} | {row['ndcg5_alone']:.4f} "
            f"| {row['ndcg5_served']:.4f} |"
        )
    return [*lines, ""]
