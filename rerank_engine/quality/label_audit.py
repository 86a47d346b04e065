"""How incomplete are a benchmark's relevance labels? Two measurements, no model in this module.

InsuranceQA labels each answer for the one question it was written for. The corpus holds many paraphrased
questions ("Can I claim X rays on Medicare?", "Does Medicare cover X rays?"), each with its own answers, so
a ranker that finds a paraphrase's answer is scored as wrong. Two ways to size that:

- `paraphrase_positives`: the answers labelled for *another* question whose embedding is within a cosine
  threshold of this one (lenient labels; the threshold is a knob, so report a few).
- `blind_items` / `tally` / `paired`: a sample of top-1 answers from two systems, shown in random order
  without the system's name, judged relevant or not by a person, then counted per system against a
  separate key (`jobs.audit_labels` on InsuranceQA, `jobs.rerank_vs_recall` on a job's own output).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np

from rerank_engine.errors import InputError


def paraphrase_positives(
    query_ids: Sequence[str],
    query_emb: np.ndarray,
    pool_ids: Sequence[str],
    pool_emb: np.ndarray,
    pool_answers: Sequence[set[str]],
    threshold: float,
) -> list[set[str]]:
    """For each query, the answers labelled for pool questions with cosine ≥ `threshold` to it, the query
    itself (same id) excluded. Embeddings must be L2-normalised rows."""
    if len(query_ids) != len(query_emb):
        raise ValueError(f"{len(query_ids)} query ids but {len(query_emb)} query embeddings")
    if not len(pool_ids) == len(pool_emb) == len(pool_answers):
        raise ValueError(
            f"pool: {len(pool_ids)} ids, {len(pool_emb)} embeddings, {len(pool_answers)} answer sets"
        )
    cos = np.asarray(query_emb, np.float32) @ np.asarray(pool_emb, np.float32).T
    out = []
    for i, qid in enumerate(query_ids):
        near = np.flatnonzero(cos[i] >= threshold)
        out.append(set().union(*(pool_answers[j] for j in near if pool_ids[j] != qid)))
    return out


def blind_items(rows: Sequence[tuple[str, str, str]], names: tuple[str, str], seed: int = 0):
    """(items, key) from rows of (question, answer of system names[0], answer of system names[1]).

    Each item shows the question and its two answers as A and B in an order drawn from `seed`; the key
    says which system each letter came from. Show the items, keep the key out of sight until judged."""
    rng = random.Random(seed)
    items, key = [], []
    for question, a0, a1 in rows:
        flip = rng.random() < 0.5
        items.append({"question": question, "A": a1 if flip else a0, "B": a0 if flip else a1})
        key.append({"A": names[1] if flip else names[0], "B": names[0] if flip else names[1]})
    return items, key


def items_markdown(items, title: str) -> str:
    """The blind items as markdown: the question, then A and B."""
    lines = [f"# {title}", ""]
    for n, it in enumerate(items):
        lines += [f"## {n}. {it['question']}", "", f"**A.** {it['A']}", "", f"**B.** {it['B']}", ""]
    return "\n".join(lines)


def tally(judgements: Sequence[dict[str, bool]], key: Sequence[dict[str, str]]) -> dict[str, dict]:
    """Per system: how many of its judged answers were relevant, and the share."""
    if len(judgements) != len(key):
        raise InputError(f"{len(judgements)} judgements for {len(key)} items")
    counts: dict[str, list[int]] = {}
    for i, (judged, k) in enumerate(zip(judgements, key, strict=True)):
        if set(judged) != {"A", "B"}:
            raise InputError(f"judgement {i} must judge exactly A and B, got {sorted(judged)}")
        if not all(isinstance(v, bool) for v in judged.values()):
            raise InputError(f"judgement {i} is {judged}: judge each of A and B true or false")
        for letter, system in k.items():
            c = counts.setdefault(system, [0, 0])
            c[0] += bool(judged[letter])
            c[1] += 1
    return {s: {"relevant": r, "judged": n, "share": round(r / n, 3)} for s, (r, n) in counts.items()}


def paired(judgements: Sequence[dict[str, bool]], key: Sequence[dict[str, str]], names: tuple[str, str]):
    """Counts of (names[0] relevant, names[1] relevant) over the items, and the two-sided sign-test p of
    the items where exactly one was relevant (no difference between the systems as the null)."""
    counts = {(a, b): 0 for a in (True, False) for b in (True, False)}
    for judged, k in zip(judgements, key, strict=True):
        by_system = {system: bool(judged[letter]) for letter, system in k.items()}
        counts[by_system[names[0]], by_system[names[1]]] += 1
    only0, only1 = counts[True, False], counts[False, True]
    return {
        "both": counts[True, True],
        f"only {names[0]}": only0,
        f"only {names[1]}": only1,
        "neither": counts[False, False],
        "sign_test_p": round(sign_test(only0, only1), 3),
    }


def sign_test(wins: int, losses: int) -> float:
    """Two-sided sign test: the chance of a split at least this uneven if each side were equally likely
    to win (ties left out)."""
    n, low = wins + losses, min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(low + 1)) / 2**n) if n else 1.0


def orders_of(results: Sequence[dict], where: str) -> tuple[list[str], list[str]]:
    """(recall order, rerank order) of one output row's `results`, which must hold every candidate with
    its recall rank (a job run with `k_rerank` = `k_recall` and threshold 0)."""
    if any(r.get("recall_rank") is None for r in results):
        raise InputError(
            f"{where}: results carry no recall_rank (logged-candidates mode has no recall order)"
        )
    by_recall = sorted(results, key=lambda r: r["recall_rank"])
    by_rerank = sorted(results, key=lambda r: r["rank"])
    return [r["doc_id"] for r in by_recall], [r["doc_id"] for r in by_rerank]
