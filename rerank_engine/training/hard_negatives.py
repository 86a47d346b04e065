"""Hard negatives mined from the bi-encoder's own recall: exactly the mistakes the cascade makes.

Reuses the production recall code (`BiEncoder`, `RecallIndex`). For each query: recall the top-`k`,
drop the positives, keep negatives whose recall rank lies in [rank_min, rank_max] and whose score is at
least `margin` below the best positive's score (a guard against unlabelled positives), up to
`n_negatives`. InsuranceQA's own retrieval-mined negatives can be added as a second source.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from rerank_engine import progress
from rerank_engine.config import _Frozen


class MiningConfig(_Frozen):
    k: int = Field(50, ge=1, description="recall depth searched per query")
    rank_min: int = Field(1, ge=1, description="best recall rank (1-based) a negative may have")
    rank_max: int = Field(50, ge=1, description="worst recall rank a negative may have")
    margin: float = Field(0.0, description="keep a negative only if score ≤ best positive score − margin")
    n_negatives: int = Field(8, ge=1, description="recall negatives kept per query")
    source: Literal["recall", "insuranceqa", "both"] = "recall"
    n_dataset_negatives: int = Field(4, ge=0, description="dataset negatives added when source includes them")
    seed: int = 0


@dataclass(frozen=True)
class MinedQuery:
    qid: str
    query: str
    pos_ids: tuple[str, ...]
    neg_ids: tuple[str, ...]


def mine(
    qids: Sequence[str],
    query_emb: np.ndarray,
    positives: Sequence[Sequence[str]],
    index,
    doc_emb_by_id: Mapping[str, np.ndarray],
    config: MiningConfig,
    queries: Sequence[str],
    dataset_negatives: Sequence[Sequence[str]] | None = None,
) -> tuple[list[MinedQuery], Counter]:
    """Return mined queries (those with ≥ 1 positive and ≥ 1 negative) and counts of what was dropped."""
    if config.rank_max < config.rank_min:
        raise ValueError(f"rank_max {config.rank_max} < rank_min {config.rank_min}")
    scores, ids = index.search(query_emb, config.k)
    rng = np.random.default_rng(config.seed)
    stats: Counter = Counter()
    out: list[MinedQuery] = []
    for row, qid in enumerate(qids):
        pos = set(positives[row])
        best_pos = max(float(query_emb[row] @ doc_emb_by_id[p]) for p in pos)
        negs: list[str] = []
        if config.source in ("recall", "both"):
            for rank, (doc, score) in enumerate(zip(ids[row], scores[row], strict=True), start=1):
                if doc in pos:
                    stats["positive_in_recall"] += 1
                elif not config.rank_min <= rank <= config.rank_max:
                    stats["outside_rank_range"] += 1
                elif score > best_pos - config.margin:
                    stats["within_margin"] += 1
                elif len(negs) < config.n_negatives:
                    negs.append(str(doc))
        if config.source in ("insuranceqa", "both") and dataset_negatives is not None:
            pool = [d for d in dataset_negatives[row] if d not in pos and d not in negs]
            take = min(
                config.n_dataset_negatives if config.source == "both" else config.n_negatives, len(pool)
            )
            negs.extend(str(d) for d in rng.choice(pool, size=take, replace=False))
        if not negs:
            stats["query_without_negatives"] += 1
            continue
        stats["negatives"] += len(negs)
        out.append(MinedQuery(qid, queries[row], tuple(sorted(pos)), tuple(negs)))
    stats["queries"] = len(out)
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
    from rerank_engine.recall import embed_cached

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
    )
    return write_records(mined, load_answers(), out), stats
