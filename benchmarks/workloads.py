"""The benchmarks' workloads: (query, passage) pairs grouped by query, from InsuranceQA (bi-encoder top-20,
long passages) or random words (for tests); a Zipf query log; agreement of scores over a workload's queries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rerank_engine.quality.metrics import ndcg_at_k
from rerank_engine.serving.agreement import top_k_overlap

WORDS = [
    "policy", "covers", "flood", "fire", "theft", "liability", "claims", "after", "waiting", "period",
    "thirty", "days", "premiums", "depend", "on", "age", "occupation", "health", "history", "deductible",
    "beneficiary", "annuity", "surrender", "rider", "term", "whole", "life", "auto", "home", "renters",
]  # fmt: skip

# -- workloads -----------------------------------------------------------------------------------------


@dataclass
class Workload:
    """Pairs grouped by query (a query's pairs are contiguous), optional 0/1 labels."""

    name: str
    queries: list[str]
    passages: list[str]
    starts: list[int]  # start of each query's group in the pair lists, plus the end
    max_length: int
    labels: np.ndarray | None = None
    note: str = ""
    lengths: np.ndarray = field(default=None, repr=False)  # true token lengths (engine tokenizer)

    def __len__(self) -> int:
        return len(self.passages)

    def groups(self):
        return [slice(a, b) for a, b in zip(self.starts[:-1], self.starts[1:], strict=True)]


def _grouped(name, per_query: list[tuple[str, list[str], list[int] | None]], max_length, note) -> Workload:
    queries, passages, labels, starts = [], [], [], [0]
    for query, texts, labs in per_query:
        queries += [query] * len(texts)
        passages += texts
        labels += labs if labs is not None else [0] * len(texts)
        starts.append(len(passages))
    has_labels = any(lab is not None for _, _, lab in per_query)
    return Workload(
        name, queries, passages, starts, max_length, np.asarray(labels) if has_labels else None, note
    )


QUICK_ANSWERS = 2_000  # --quick recalls from these answers (+ the gold ones), not all 27,413


def recall_candidates(questions, k: int = 20, ids: list[str] | None = None) -> list[list[str]]:
    """Bi-encoder top-k answer ids over all InsuranceQA answers, or over `ids` (embeddings cached in
    .cache/embeddings)."""
    from rerank_engine.data.insuranceqa import answer_recall

    encoder, index, _ = answer_recall(".cache/embeddings", ids=ids)
    _, ids = index.search(encoder.encode([q.text for q in questions]), k)
    return [[str(d) for d in row] for row in ids]


def labelled_top20(
    name: str, questions, cands: list[list[str]], answers: dict[str, str], note: str
) -> Workload:
    """Each question with its recall candidates (max_length 256), labelled 1 where a gold answer."""
    return _grouped(
        name,
        [
            (q.text, [answers[d] for d in ids], [int(d in q.answers) for d in ids])
            for q, ids in zip(questions, cands, strict=False)
        ],
        256,
        note,
    )


def insuranceqa_workloads(n_real: int, n_long: int, quick: bool = False) -> list[Workload]:
    """`real`: top-20 of the first `n_real` test questions; `long`: long passages for the first `n_long`.
    `quick`: recalled from `QUICK_ANSWERS` answers and the gold ones instead of all of them."""
    from rerank_engine.data.insuranceqa import answer_subset, load_answers, load_split

    answers = load_answers()
    questions = load_split("test")[: max(n_real, n_long)]
    pool = answer_subset(questions, QUICK_ANSWERS) if quick else None
    cands = recall_candidates(questions, ids=pool)
    over = f"{len(pool):,} answers (--quick)" if quick else "all answers"
    real = labelled_top20(
        "real",
        questions[:n_real],
        cands,
        answers,
        f"bi-encoder top-20 over {over} of the first {n_real} InsuranceQA test questions, max_length 256",
    )
    rng = np.random.default_rng(0)
    long_groups = []
    for q, ids in zip(questions[:n_long], cands, strict=False):
        texts = []
        for j in range(len(ids)):
            target, words, step = int(rng.integers(150, 451)), [], 0
            while len(words) < target and step < len(ids):
                words += answers[ids[(j + step) % len(ids)]].split()
                step += 1
            texts.append(" ".join(words[:target]))
        long_groups.append((q.text, texts, [int(d in q.answers) for d in ids]))
    long = _grouped(
        "long",
        long_groups,
        512,
        f"the top-20 of the first {n_long} test questions, each passage extended with the next-ranked "
        "answers to 150–450 words (truncated at 512 tokens); label = its leading answer's",
    )
    return [real, long]


def synthetic_workloads(n_queries: int, seed: int = 0) -> list[Workload]:
    """Random word pairs (for tests: no dataset needed); 20 passages per query, random 0/1 labels."""
    rng = np.random.default_rng(seed)

    def text(lo, hi):
        return " ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi))).tolist())

    out = []
    for name, max_length, hi in (("real", 256, 120), ("long", 512, 400)):
        groups = [
            (text(3, 12), [text(5, hi) for _ in range(20)], rng.integers(0, 2, size=20).tolist())
            for _ in range(n_queries)
        ]
        out.append(_grouped(name, groups, max_length, f"synthetic: {n_queries} random queries × 20"))
    return out


def zipf_log(n_entries: int, n_questions: int, s: float = 1.0, seed: int = 0) -> np.ndarray:
    """Question indices of a query log: `n_entries` draws, P(rank r) ∝ 1 / r^s over a shuffled ranking."""
    rng = np.random.default_rng(seed)
    ranking = rng.permutation(n_questions)
    p = 1.0 / np.arange(1, n_questions + 1) ** s
    return ranking[rng.choice(n_questions, size=n_entries, p=p / p.sum())]


# -- agreement -----------------------------------------------------------------------------------------


def agreement(w: Workload, scores: np.ndarray, ref: np.ndarray) -> dict:
    """max |Δscore|, mean per-query top-5 overlap against `ref`; NDCG@5 of `scores` on labelled groups."""
    groups = w.groups()
    out = {
        "max_abs_dscore_vs_A": float(np.max(np.abs(scores - ref))) if len(ref) else 0.0,
        "top5_overlap_vs_A": float(np.mean([top_k_overlap(ref[g], scores[g], 5) for g in groups])),
    }
    if w.labels is not None:
        ndcgs = []
        for g in groups:
            labels = w.labels[g]
            if labels.sum() == 0:
                continue
            order = np.lexsort((np.arange(len(labels)), -scores[g]))
            ndcgs.append(ndcg_at_k(order.tolist(), set(np.flatnonzero(labels).tolist()), 5))
        out["ndcg5"] = float(np.mean(ndcgs)) if ndcgs else None
        out["ndcg5_queries"] = len(ndcgs)
    return out
