"""InsuranceQA evaluation of the cascade, always next to the recall-only and BM25 baselines.

Setting (a) "cascade": recall top-20 over all 27,413 answers → rerank → top-5 handed on (realistic:
positives that recall missed are not added back). Setting (b) "pool": rerank each question's own pool of
positives + 200 InsuranceQA negatives (the usual InsuranceQA protocol).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rerank_engine.metrics import mean_metrics, noise_ratio

KS = (1, 5, 10)


def _order(scores: np.ndarray, ids: Sequence[str]) -> list[str]:
    return [ids[i] for i in np.lexsort((np.asarray(ids), -np.asarray(scores)))]


def engine_scorer(model: str | Path, threads: int = 2) -> tuple[str, Callable]:
    """(model id, score(queries, passages) -> probabilities) on the CPU default (int8 ONNX)."""
    from rerank_engine.config import EngineConfig
    from rerank_engine.engine import CrossEncoderEngine
    from rerank_engine.exporting import resolve_export

    engine = CrossEncoderEngine(
        EngineConfig.build(
            model_dir=resolve_export(model, ["int8"]), precision="int8", intra_op_threads=threads
        )
    )
    return engine.model_id, lambda q, p: engine.score(q, p).scores


def rerank_groups(
    score: Callable, questions, groups: list[list[str]], relevant: list[set], answers, log=print
) -> list[tuple[list[str], set]]:
    """Score every (question, candidate) pair in one call, then order each question's candidates."""
    flat_q = [q.text for q, g in zip(questions, groups, strict=True) for _ in g]
    flat_p = [answers[d] for g in groups for d in g]
    t = time.perf_counter()
    s = score(flat_q, flat_p)
    log(f"{len(flat_p)} pairs in {time.perf_counter() - t:.0f}s")
    runs, start = [], 0
    for g, rel in zip(groups, relevant, strict=True):
        runs.append((_order(s[start : start + len(g)], g), rel))
        start += len(g)
    return runs


def summarise(runs: list[tuple[list[str], set]], handed_on: int = 5) -> dict[str, float]:
    out = mean_metrics(runs, KS)
    out[f"noise@{handed_on}"] = noise_ratio((r[:handed_on], rel) for r, rel in runs)
    return {k: round(v, 4) for k, v in out.items()}


def cascade(
    questions,
    recall,
    answers: dict[str, str],
    bm25,
    scorers: dict[str, Callable],
    k_recall: int = 20,
    log=print,
) -> dict[str, dict]:
    encoder, index, _ = recall
    ids_all = list(index.doc_ids)
    relevant = [set(q.answers) for q in questions]
    _, cands = index.search(encoder.encode([q.text for q in questions]), k_recall)
    cands = [list(map(str, row)) for row in cands]
    rows = {
        "BM25 (full corpus)": [
            ([ids_all[i] for i in bm25.top_k(q.text, 10)], rel)
            for q, rel in zip(questions, relevant, strict=True)
        ],
        "bi-encoder (recall top-20)": [(c, rel) for c, rel in zip(cands, relevant, strict=True)],
    }
    for name, score in scorers.items():
        rows[f"{name} (rerank recall top-20)"] = rerank_groups(
            score, questions, cands, relevant, answers, log=lambda m, n=name: log(f"cascade {n}: {m}")
        )
    out = {name: summarise(runs) for name, runs in rows.items()}
    missed = [i for i, rel in enumerate(relevant) if not rel & set(cands[i])]
    out["_info"] = {
        "questions": len(questions),
        "k_recall": k_recall,
        "positive_not_in_recall_top20": len(missed),
    }
    return out


def pool(
    questions,
    emb_by_id: dict[str, np.ndarray],
    encoder,
    answers: dict[str, str],
    scorers: dict[str, Callable],
    log=print,
) -> dict[str, dict]:
    from rerank_engine.bm25 import BM25

    pools = [list(dict.fromkeys([*q.answers, *q.negatives])) for q in questions]
    relevant = [set(q.answers) for q in questions]
    q_emb = encoder.encode([q.text for q in questions])
    rows = {"BM25 (pool)": [], "bi-encoder (pool)": []}
    for q, qe, p, rel in zip(questions, q_emb, pools, relevant, strict=True):
        bm = BM25([answers[d] for d in p])
        rows["BM25 (pool)"].append((_order(bm.scores(q.text), p), rel))
        rows["bi-encoder (pool)"].append((_order(np.stack([emb_by_id[d] for d in p]) @ qe, p), rel))
    for name, score in scorers.items():
        rows[f"{name} (pool)"] = rerank_groups(
            score, questions, pools, relevant, answers, log=lambda m, n=name: log(f"pool {n}: {m}")
        )
    out = {name: summarise(runs) for name, runs in rows.items()}
    out["_info"] = {"questions": len(questions), "mean_pool_size": float(np.mean([len(p) for p in pools]))}
    return out


def markdown_table(
    results: dict[str, dict], columns=("P@1", "P@5", "NDCG@5", "MRR@10", "R@10", "noise@5")
) -> str:
    lines = ["| system | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in results.items():
        if name.startswith("_"):
            continue
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    return "\n".join(lines)
