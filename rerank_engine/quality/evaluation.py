"""InsuranceQA evaluation of the cascade, always next to the recall-only and BM25 baselines.

Setting (a) "cascade": recall top-20 over all 27,413 answers → rerank → top-5 handed on (realistic:
positives that recall missed are not added back). Setting (b) "pool": rerank each question's own pool of
positives + 200 InsuranceQA negatives (the usual InsuranceQA protocol).

The threshold report (`ScoredCascade`, `threshold_comparison`) sets recall top-5, rerank top-5 and rerank
top-5 above a calibrated threshold side by side; `quality.out_of_domain` compares recall with rerank on the
classic IR collections (`rerank_engine.data.classic_ir`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from rerank_engine.files import write_json
from rerank_engine.quality.metrics import mean_metrics, ndcg_at_k, noise_ratio, precision_at_k, recall_at_k
from rerank_engine.quality.paired import per_question_vs
from rerank_engine.quality.thresholds import ScoredQuery

SCORE_CHUNK = 4096  # pairs per engine call in score_groups: large enough to bucket by length well
_log_info = logging.getLogger(__name__).info  # what `log=` defaults to: progress notes, at INFO

KS = (1, 5, 10)


def _order(scores: np.ndarray, ids: Sequence[str]) -> list[str]:
    return [ids[i] for i in np.lexsort((np.asarray(ids), -np.asarray(scores)))]


def long_passage_settings(long_passages: str = "truncate", stride: int | None = None) -> dict:
    """The tokenizer keys of how long passages are read, as the job's config takes them (`tokenizer.`
    `long_passages`, `stride`); empty for truncate, the default, so that what is keyed by them (cached
    scores, calibration records) stays as it was before chunk_max existed."""
    if long_passages == "truncate" and stride is None:
        return {}
    return {"long_passages": long_passages, **({"stride": stride} if stride is not None else {})}


def engine_scorer(
    model: str | Path,
    threads: int = 2,
    precision: str = "fp32",
    max_length: int = 256,
    *,
    long_passages: str = "truncate",
    stride: int | None = None,
) -> tuple[str, Callable]:
    """(model id, score(queries, passages) -> probabilities) on the CPU default (fp32 ONNX), reading
    long passages as the job would with the same `tokenizer.long_passages` and `stride` (chunk_max: each
    passage scored by its best window, in the engine)."""
    from rerank_engine.config import EngineConfig
    from rerank_engine.serving.engine import CrossEncoderEngine
    from rerank_engine.serving.exporting import resolve_export

    engine = CrossEncoderEngine(
        EngineConfig.build(
            model_dir=resolve_export(model, [precision]),
            precision=precision,
            intra_op_threads=threads,
            tokenizer={"max_length": max_length, **long_passage_settings(long_passages, stride)},
        )
    )
    return engine.model_id, lambda q, p: engine.score(q, p).scores


def score_groups(
    score: Callable, questions, groups: list[list[str]], answers, log=_log_info
) -> list[np.ndarray]:
    """Score every (question, candidate) pair, `SCORE_CHUNK` pairs a call (each call length-sorts its own
    pairs; a progress bar counts them where `progress.enabled()`); one score array per question, in
    `groups` order."""
    from tqdm import tqdm

    from rerank_engine import progress

    flat_q = [q.text for q, g in zip(questions, groups, strict=True) for _ in g]
    flat_p = [answers[d] for g in groups for d in g]
    t = time.perf_counter()
    parts = []
    with tqdm(total=len(flat_p), desc="score", unit="pair", disable=not progress.enabled()) as bar:
        for a in range(0, len(flat_p), SCORE_CHUNK):
            parts.append(np.asarray(score(flat_q[a : a + SCORE_CHUNK], flat_p[a : a + SCORE_CHUNK])))
            bar.update(len(parts[-1]))
    s = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    log(f"{len(flat_p)} pairs in {time.perf_counter() - t:.0f}s")
    bounds = np.cumsum([0, *(len(g) for g in groups)])
    return [s[a:b] for a, b in pairwise(bounds)]


def rerank_groups(
    score: Callable, questions, groups: list[list[str]], relevant: list[set], answers, log=_log_info
) -> list[tuple[list[str], set]]:
    """Score every (question, candidate) pair in one call, then order each question's candidates."""
    scores = score_groups(score, questions, groups, answers, log=log)
    return [(_order(s, g), rel) for s, g, rel in zip(scores, groups, relevant, strict=True)]


def summarise(runs: list[tuple[list[str], set]], handed_on: int = 5) -> dict[str, float]:
    out = mean_metrics(runs, KS)
    out[f"noise@{handed_on}"] = noise_ratio((r[:handed_on], rel) for r, rel in runs)
    return {k: round(v, 4) for k, v in out.items()}


def recall_candidates(questions, recall, k_recall: int = 20) -> list[list[str]]:
    """Each question's bi-encoder top-`k_recall` answer ids, best first (`recall` = answer_recall(...))."""
    return recall_top_k(questions, recall, k_recall)[0]


def recall_top_k(questions, recall, k_recall: int = 20) -> tuple[list[list[str]], list[np.ndarray]]:
    """(answer ids, cosines) of each question's bi-encoder top-`k_recall`, best first."""
    encoder, index, _ = recall
    scores, cands = index.search(encoder.encode([q.text for q in questions]), k_recall)
    return [list(map(str, row)) for row in cands], [np.asarray(row, np.float32) for row in scores]


def fused_cascade(sc: ScoredCascade, fusion, recall_scores: list[np.ndarray]) -> ScoredCascade:
    """The same cascade scored by `fusion` (`rerank_engine.quality.fusion.Fusion`) of its logits and the
    cosines. The fused probabilities stay float64: the job orders by the fused logit, and float32
    probabilities of a flat fusion (a tiny scale) tie where the logits do not."""
    from rerank_engine.quality.fusion import logit_of

    return dataclasses.replace(
        sc,
        model_id=fusion.score_id(),
        scores=[fusion.scores(logit_of(s), r) for s, r in zip(sc.scores, recall_scores, strict=True)],
    )


def cascade(
    questions,
    recall,
    answers: dict[str, str],
    bm25,
    scorers: dict[str, Callable | ScoredCascade],
    k_recall: int = 20,
    log=_log_info,
) -> dict[str, dict]:
    """Setting (a). A scorer may be given already scored (a `ScoredCascade` over the same candidates)."""
    ids_all = list(recall[1].doc_ids)
    relevant = [set(q.answers) for q in questions]
    cands = recall_candidates(questions, recall, k_recall)
    rows = {
        "BM25 (full corpus)": [
            ([ids_all[i] for i in bm25.top_k(q.text, 10)], rel)
            for q, rel in zip(questions, relevant, strict=True)
        ],
        "bi-encoder (recall top-20)": [(c, rel) for c, rel in zip(cands, relevant, strict=True)],
    }
    for name, score in scorers.items():
        if isinstance(score, ScoredCascade):
            if score.candidates != cands:
                raise ValueError(f"the scores given for {name} are not over this cascade's candidates")
            rows[f"{name} (rerank recall top-20)"] = [
                (_order(s, c), rel) for s, c, rel in zip(score.scores, cands, relevant, strict=True)
            ]
            continue
        rows[f"{name} (rerank recall top-20)"] = rerank_groups(
            score, questions, cands, relevant, answers, log=lambda m, n=name: log(f"cascade {n}: {m}")
        )
    out = {name: summarise(runs) for name, runs in rows.items()}
    missed = [i for i, rel in enumerate(relevant) if not rel & set(cands[i])]
    recall_runs = rows["bi-encoder (recall top-20)"]
    out["_info"] = {
        "questions": len(questions),
        "k_recall": k_recall,
        "positive_not_in_recall_top20": len(missed),
        "ndcg@5_per_question_vs_recall": {
            name: per_question_vs(runs, recall_runs) for name, runs in rows.items() if "rerank" in name
        },
    }
    return out


def pool(
    questions,
    emb_by_id: dict[str, np.ndarray],
    encoder,
    answers: dict[str, str],
    scorers: dict[str, Callable],
    fusions: dict | None = None,
    log=_log_info,
) -> dict[str, dict]:
    """Setting (b). A scorer with a `Fusion` in `fusions` (by name) also gets a fused row."""
    from rerank_engine.quality.fusion import logit_of
    from rerank_engine.recall.bm25 import BM25

    pools = [list(dict.fromkeys([*q.answers, *q.negatives])) for q in questions]
    relevant = [set(q.answers) for q in questions]
    q_emb = encoder.encode([q.text for q in questions])
    rows = {"BM25 (pool)": [], "bi-encoder (pool)": []}
    cosines = []
    for q, qe, p, rel in zip(questions, q_emb, pools, relevant, strict=True):
        bm = BM25([answers[d] for d in p])
        rows["BM25 (pool)"].append((_order(bm.scores(q.text), p), rel))
        cosines.append(np.stack([emb_by_id[d] for d in p]) @ qe)
        rows["bi-encoder (pool)"].append((_order(cosines[-1], p), rel))
    for name, score in scorers.items():
        scores = score_groups(score, questions, pools, answers, log=lambda m, n=name: log(f"pool {n}: {m}"))
        rows[f"{name} (pool)"] = [
            (_order(s, p), rel) for s, p, rel in zip(scores, pools, relevant, strict=True)
        ]
        if name in (fusions or {}):
            fused = [fusions[name].fused_logits(logit_of(s), c) for s, c in zip(scores, cosines, strict=True)]
            rows[f"{name} + recall fusion (pool)"] = [
                (_order(z, p), rel) for z, p, rel in zip(fused, pools, relevant, strict=True)
            ]
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


# -- the scored cascade: what calibration and the threshold report work on ------------------------------


@dataclass(frozen=True)
class ScoredCascade:
    """Each question's recall top-`k_recall` (recall order) with the reranker's probabilities beside it."""

    model_id: str
    qids: list[str]
    candidates: list[list[str]]
    scores: list[np.ndarray]
    relevant: list[set[str]]

    @classmethod
    def build(
        cls, score: Callable, model_id: str, questions, candidates, answers, log=_log_info
    ) -> ScoredCascade:
        return cls(
            model_id=model_id,
            qids=[q.qid for q in questions],
            candidates=[list(c) for c in candidates],
            scores=score_groups(score, questions, candidates, answers, log=log),
            relevant=[set(q.answers) for q in questions],
        )

    def reranked(self, k: int = 5) -> list[tuple[list[str], np.ndarray]]:
        """(ids, scores) of each question's rerank top-k, best first (ties by id, as the job breaks them)."""
        out = []
        for ids, s in zip(self.candidates, self.scores, strict=True):
            order = np.lexsort((np.asarray(ids), -s))[:k]
            out.append(([ids[i] for i in order], s[order]))
        return out

    def scored_queries(self, k: int = 5) -> list[ScoredQuery]:
        """The labelled set a threshold is calibrated on: the rerank top-k of each question."""
        return [
            ScoredQuery.of(s, [d in rel for d in ids])
            for (ids, s), rel in zip(self.reranked(k), self.relevant, strict=True)
        ]

    def missed(self) -> list[bool]:
        """Questions none of whose positives is among the recall candidates."""
        return [not (rel & set(c)) for c, rel in zip(self.candidates, self.relevant, strict=True)]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "model_id": self.model_id,
            "qids": self.qids,
            "candidates": self.candidates,
            "scores": [s.astype(float).tolist() for s in self.scores],
            "relevant": [sorted(r) for r in self.relevant],
        }
        return write_json(path, data, indent=None)

    @classmethod
    def load(cls, path: str | Path) -> ScoredCascade:
        data = json.loads(Path(path).read_text())
        return cls(
            model_id=data["model_id"],
            qids=data["qids"],
            candidates=data["candidates"],
            scores=[np.asarray(s, dtype=np.float32) for s in data["scores"]],
            relevant=[set(r) for r in data["relevant"]],
        )


def scored_cascade_cached(
    model_id: str,
    score: Callable,
    questions,
    candidates,
    answers,
    cache_dir: str | Path,
    log=_log_info,
    *,
    precision: str,
    max_length: int,
    long_passages: str = "truncate",
    stride: int | None = None,
) -> ScoredCascade:
    """`ScoredCascade.build`, cached under `cache_dir` by the model id, the precision, max_length and
    long-passage settings it was scored at, the question ids and the candidates (any of them changed
    misses the cache)."""
    import hashlib

    what = [model_id, precision, [q.qid for q in questions], [list(c) for c in candidates]]
    if max_length != 256:  # keys written before max_length was a setting scored at 256
        what.insert(2, max_length)
    windows = long_passage_settings(long_passages, stride)
    if windows:  # keys written before chunk_max existed truncated
        what.insert(2, windows)
    key = json.dumps(what)
    path = Path(cache_dir) / f"scores-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
    if path.is_file():
        log(f"scores of {model_id} from {path}")
        return ScoredCascade.load(path)
    sc = ScoredCascade.build(score, model_id, questions, candidates, answers, log=log)
    sc.save(path)
    return sc


def score_cascade(
    model: str | Path,
    questions,
    candidates,
    answers,
    cache_dir: str | Path,
    *,
    precision: str,
    max_length: int,
    long_passages: str = "truncate",
    stride: int | None = None,
    log=_log_info,
) -> tuple[str, Callable, ScoredCascade]:
    """(model id, its scorer, its cached `ScoredCascade`): the engine at `precision`, `max_length` and
    the long-passage settings, and the scores cached under exactly those settings."""
    windows = {"long_passages": long_passages, "stride": stride}
    model_id, score = engine_scorer(model, precision=precision, max_length=max_length, **windows)
    sc = scored_cascade_cached(
        model_id,
        score,
        questions,
        candidates,
        answers,
        cache_dir,
        log=log,
        precision=precision,
        max_length=max_length,
        **windows,
    )
    return model_id, score, sc


def handed_on_figures(
    lists: list[list[str]], before: list[list[str]], relevant: list[set], missed: list[bool], k: int = 5
) -> dict[str, float]:
    """Figures of what one system hands on (`lists`), given the top-k it chose from (`before`).

    precision = relevant passages handed on / passages handed on (pooled; 1 − noise);
    F1 = with recall against the relevant passages in `before` (the calibration objective);
    F1_all = with recall against every positive of the question (recall misses included);
    no_relevant = share of questions handed nothing; nothing_when_missed = that share among the questions
    whose positives recall missed (the right answer there is nothing); empty_when_hit = share of the
    questions with a positive in `before` that were handed nothing (lost answers).
    """
    n = len(lists)
    kept = sum(len(x) for x in lists)
    kept_rel = sum(len(set(x) & rel) for x, rel in zip(lists, relevant, strict=True))
    top_rel = sum(len(set(b) & rel) for b, rel in zip(before, relevant, strict=True))
    all_rel = sum(len(rel) for rel in relevant)
    precision = kept_rel / kept if kept else 1.0

    def f1(recall: float) -> float:
        return 2 * precision * recall / (precision + recall) if precision + recall else 0.0

    empty = [not x for x in lists]
    hit = [bool(set(b) & rel) for b, rel in zip(before, relevant, strict=True)]
    n_missed, n_hit = sum(missed), sum(hit)
    return {
        f"P@{k}": float(np.mean([precision_at_k(x, r, k) for x, r in zip(lists, relevant, strict=True)])),
        f"R@{k}": float(np.mean([recall_at_k(x, r, k) for x, r in zip(lists, relevant, strict=True)])),
        f"NDCG@{k}": float(np.mean([ndcg_at_k(x, r, k) for x, r in zip(lists, relevant, strict=True)])),
        "precision": precision,
        "F1": f1(kept_rel / top_rel if top_rel else 0.0),
        "F1_all": f1(kept_rel / all_rel if all_rel else 0.0),
        "noise": noise_ratio(zip(lists, relevant, strict=True)),
        "handed_on": kept,
        "no_relevant": sum(empty) / n if n else 0.0,
        "nothing_when_missed": (
            sum(e for e, m in zip(empty, missed, strict=True) if m) / n_missed if n_missed else float("nan")
        ),
        "empty_when_hit": sum(e for e, h in zip(empty, hit, strict=True) if h) / n_hit if n_hit else 0.0,
    }


def threshold_comparison(sc: ScoredCascade, threshold: float, k: int = 5) -> dict[str, dict]:
    """Recall top-k, rerank top-k and rerank top-k ≥ threshold, side by side (`handed_on_figures`)."""
    missed = sc.missed()
    recall_top = [c[:k] for c in sc.candidates]
    reranked = sc.reranked(k)
    rerank_top = [ids for ids, _ in reranked]
    kept = [[d for d, s in zip(ids, scores, strict=True) if s >= threshold] for ids, scores in reranked]
    out = {
        f"bi-encoder top-{k}": handed_on_figures(recall_top, recall_top, sc.relevant, missed, k),
        f"rerank top-{k}": handed_on_figures(rerank_top, rerank_top, sc.relevant, missed, k),
        f"rerank top-{k} ≥ {threshold:.3f}": handed_on_figures(kept, rerank_top, sc.relevant, missed, k),
    }
    out["_info"] = {
        "questions": len(sc.qids),
        "k_recall": max((len(c) for c in sc.candidates), default=0),
        "positive_not_in_recall": int(sum(missed)),
        "threshold": threshold,
        "model": sc.model_id,
    }
    return out
