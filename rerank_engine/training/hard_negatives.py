"""Hard negatives mined from the bi-encoder's own recall: exactly the mistakes the cascade makes.

Reuses the production recall code (`BiEncoder`, `RecallIndex`). For each query: recall the top-`k`,
drop the positives, then keep a negative only past every false-negative guard (each one counted):
- its recall rank lies in [rank_min, rank_max] (`rank_min` > 1 skips the top ranks);
- it scores at least `margin` below the best positive (absolute), at most `(1 − relative_margin)` times
  the best positive's score (NV-Retriever's positive-aware mining keeps negatives under 95 %), and at
  most `max_score`;
- it is not labelled for a paraphrase of the question (`exclude_paraphrases`, rule in
  `paraphrases.py`): InsuranceQA labels an answer only for the question it was written for.
Up to `n_negatives` are kept. InsuranceQA's own retrieval-mined negatives can be mixed in as a second
source (the paraphrase guard applies to them too); random easy negatives are drawn at training time.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from rerank_engine import progress
from rerank_engine.config import _Frozen
from rerank_engine.training.paraphrases import ParaphraseRule


class MiningConfig(_Frozen):
    k: int = Field(50, ge=1, description="recall depth searched per query")
    rank_min: int = Field(1, ge=1, description="best recall rank (1-based) a negative may have")
    rank_max: int = Field(50, ge=1, description="worst recall rank a negative may have")
    margin: float = Field(0.0, description="keep a negative only if score ≤ best positive score − margin")
    relative_margin: float | None = Field(
        None, ge=0, lt=1, description="keep only if score ≤ (1 − relative_margin) × best positive score"
    )
    max_score: float | None = Field(None, description="keep only if score ≤ max_score")
    exclude_paraphrases: bool = Field(False, description="drop answers labelled for a paraphrase")
    paraphrase_threshold: float = Field(0.6, gt=0, le=1, description="IDF-weighted Jaccard of a paraphrase")
    n_negatives: int = Field(8, ge=1, description="recall negatives kept per query")
    source: Literal["recall", "insuranceqa", "both"] = "recall"
    n_dataset_negatives: int = Field(4, ge=0, description="dataset negatives added when source includes them")
    seed: int = 0

    @model_validator(mode="after")
    def _ranks(self):
        if self.rank_max < self.rank_min:
            raise ValueError(f"rank_max {self.rank_max} < rank_min {self.rank_min}")
        return self


@dataclass(frozen=True)
class MinedQuery:
    qid: str
    query: str
    pos_ids: tuple[str, ...]
    neg_ids: tuple[str, ...]
    paraphrase_excluded: tuple[tuple[str, str], ...] = ()  # (doc id, qid of the paraphrase it answers)


def _score_guard(config: MiningConfig, score: float, best_pos: float) -> str | None:
    """The name of the first score guard that `score` fails, or None."""
    if score > best_pos - config.margin:
        return "within_margin"
    if config.relative_margin is not None and score > (1 - config.relative_margin) * best_pos:
        return "within_relative_margin"
    if config.max_score is not None and score > config.max_score:
        return "above_max_score"
    return None


def _paraphrase_label(rule: ParaphraseRule | None, row: int, doc: str, qids, excluded: list) -> bool:
    """True (and the exclusion recorded) when `doc` is labelled for a paraphrase of question `row`."""
    other = rule.paraphrase_labelling(row, doc) if rule is not None else None
    if other is not None:
        excluded.append((doc, str(qids[other])))
    return other is not None


def mine(
    qids: Sequence[str],
    query_emb: np.ndarray,
    positives: Sequence[Sequence[str]],
    index,
    doc_emb_by_id: Mapping[str, np.ndarray],
    config: MiningConfig,
    queries: Sequence[str],
    dataset_negatives: Sequence[Sequence[str]] | None = None,
    paraphrases: ParaphraseRule | None = None,
) -> tuple[list[MinedQuery], Counter]:
    """Return mined queries (those with ≥ 1 positive and ≥ 1 negative) and counts of what was dropped.

    `paraphrases` must be built on the same questions, in the same order (row i = qids[i]); it is
    required when `config.exclude_paraphrases`."""
    if config.exclude_paraphrases and paraphrases is None:
        raise ValueError("exclude_paraphrases needs a ParaphraseRule built on the mined questions")
    rule = paraphrases if config.exclude_paraphrases else None
    scores, ids = index.search(query_emb, config.k)
    rng = np.random.default_rng(config.seed)
    stats: Counter = Counter()
    out: list[MinedQuery] = []
    for row, qid in enumerate(qids):
        pos = set(positives[row])
        best_pos = max(float(query_emb[row] @ doc_emb_by_id[p]) for p in pos)
        negs: list[str] = []
        excluded: list[tuple[str, str]] = []

        if config.source in ("recall", "both"):
            for rank, (doc, score) in enumerate(zip(ids[row], scores[row], strict=True), start=1):
                doc = str(doc)
                if doc in pos:
                    stats["positive_in_recall"] += 1
                elif not config.rank_min <= rank <= config.rank_max:
                    stats["outside_rank_range"] += 1
                elif guard := _score_guard(config, float(score), best_pos):
                    stats[guard] += 1
                elif _paraphrase_label(rule, row, doc, qids, excluded):
                    stats["paraphrase_label"] += 1
                elif len(negs) < config.n_negatives:
                    negs.append(doc)
            stats["recall_negatives"] += len(negs)
        if config.source in ("insuranceqa", "both") and dataset_negatives is not None:
            pool = [str(d) for d in dataset_negatives[row] if d not in pos and d not in negs]
            take = config.n_dataset_negatives if config.source == "both" else config.n_negatives
            added = 0
            for d in rng.permutation(pool):
                if added == take:
                    break
                if _paraphrase_label(rule, row, str(d), qids, excluded):
                    stats["dataset_paraphrase_label"] += 1
                    continue
                negs.append(str(d))
                added += 1
            stats["dataset_negatives"] += added
        if not negs:
            stats["query_without_negatives"] += 1
            continue
        stats["negatives"] += len(negs)
        out.append(MinedQuery(qid, queries[row], tuple(sorted(pos)), tuple(negs), tuple(excluded)))
    stats["queries"] = len(out)
    stats["queries_with_paraphrase_exclusions"] = sum(1 for m in out if m.paraphrase_excluded)
    return out, stats


def write_records(mined: Sequence[MinedQuery], texts: Mapping[str, str], path: str | Path) -> Path:
    """JSONL records {"qid", "query", "pos": [...], "neg": [...], "pos_ids", "neg_ids"}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as fh:
        for m in mined:
            fh.write(
                json.dumps(
                    {
                        "qid": m.qid,
                        "query": m.query,
                        "pos": [texts[d] for d in m.pos_ids],
                        "neg": [texts[d] for d in m.neg_ids],
                        "pos_ids": list(m.pos_ids),
                        "neg_ids": list(m.neg_ids),
                        "paraphrase_excluded": [list(e) for e in m.paraphrase_excluded],
                    }
                )
                + "\n"
            )
    tmp.replace(path)
    return path


def read_records(path: str | Path) -> list[dict]:
    with Path(path).open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def mine_insuranceqa(
    split: str, config: MiningConfig, cache_dir: str | Path, out: str | Path, recall=None
) -> tuple[Path, Counter]:
    """Mine `split` questions against all InsuranceQA answers with the production recall code."""
    from rerank_engine.data.insuranceqa import answer_recall, load_answers, load_split
    from rerank_engine.recall.index import embed_cached

    encoder, index, emb_by_id = recall or answer_recall(str(cache_dir))
    questions = load_split(split)
    q_emb = embed_cached(encoder, [q.text for q in questions], cache_dir, progress=progress.enabled())
    mined, stats = mine(
        [q.qid for q in questions],
        q_emb,
        [q.answers for q in questions],
        index,
        emb_by_id,
        config,
        queries=[q.text for q in questions],
        dataset_negatives=[q.negatives for q in questions],
        paraphrases=ParaphraseRule(
            [q.text for q in questions], [q.answers for q in questions], config.paraphrase_threshold
        )
        if config.exclude_paraphrases
        else None,
    )
    return write_records(mined, load_answers(), out), stats


def paraphrase_sample(
    records: Sequence[dict], question_of: Mapping[str, str], answers: Mapping[str, str], n: int, seed: int = 0
) -> str:
    """Markdown of `n` exclusions drawn at random from mined records: the question, the paraphrase the
    rule matched, and the start of the answer kept out of the question's negatives."""
    pairs = [(r, doc, other) for r in records for doc, other in r.get("paraphrase_excluded", [])]
    rng = np.random.default_rng(seed)
    picked = [pairs[i] for i in sorted(rng.choice(len(pairs), size=min(n, len(pairs)), replace=False))]
    lines = [
        f"# Answers kept out of the negatives as labelled for a paraphrase ({len(picked)} of {len(pairs)}, "
        f"seed {seed})",
        "",
        "| # | question | paraphrase it matched | answer (labelled for the paraphrase) |",
        "|---|---|---|---|",
    ]
    for i, (r, doc, other) in enumerate(picked, start=1):
        text = answers[doc].replace("|", "/")
        text = text[:220] + ("…" if len(text) > 220 else "")
        lines.append(f"| {i} | {r['query']} | {question_of[other]} | {doc}: {text} |")
    return "\n".join(lines) + "\n"
