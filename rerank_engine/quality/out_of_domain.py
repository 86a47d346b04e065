"""Out of domain: the cascade on classic IR collections (Cranfield, CISI, MED; `data.classic_ir`), bi-encoder
recall against each reranker of it and, where the reranker has one, its recall fusion.

Light module: the bi-encoder and the scorers are handed in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from rerank_engine.quality.evaluation import _order, recall_top_k, score_groups
from rerank_engine.quality.metrics import ndcg_at_k, precision_at_k

_log_info = logging.getLogger(__name__).info


def out_of_domain(
    collection,
    encoder,
    scorers: dict[str, Callable],
    cache_dir: str | Path,
    k_recall: int = 20,
    k: int = 10,
    queries: int | None = None,
    fusions: dict | None = None,
    log=_log_info,
) -> dict[str, dict]:
    """Bi-encoder recall top-`k_recall` over the collection vs each cross-encoder reranking it: NDCG@k,
    P@k, and per-query wins and losses of the rerank against recall on NDCG@k. A scorer with a
    `Fusion` in `fusions` (by name) gets a second row from the same scores fused with the cosines."""
    from rerank_engine.quality.fusion import logit_of
    from rerank_engine.recall.index import RecallIndex, embed_cached

    doc_ids = list(collection.docs)
    emb = embed_cached(encoder, [collection.docs[d] for d in doc_ids], cache_dir)
    index = RecallIndex.build(emb, doc_ids, model=encoder.model_id, corpus=collection.name)
    qids = list(collection.queries)[:queries]
    questions = [SimpleNamespace(qid=q, text=collection.queries[q]) for q in qids]
    relevant = [collection.relevant(q) for q in qids]
    cands, cosines = recall_top_k(questions, (encoder, index, None), k_recall)

    def figures(runs: list[list[str]]) -> dict[str, float]:
        per_query = [ndcg_at_k(r, rel, k) for r, rel in zip(runs, relevant, strict=True)]
        return {
            f"NDCG@{k}": float(np.mean(per_query)),
            f"P@{k}": float(
                np.mean([precision_at_k(r, rel, k) for r, rel in zip(runs, relevant, strict=True)])
            ),
            "_per_query": per_query,
        }

    rows = {f"bi-encoder (recall top-{k_recall})": figures(cands)}
    base = rows[f"bi-encoder (recall top-{k_recall})"]["_per_query"]
    for name, score in scorers.items():
        scores = score_groups(
            score, questions, cands, collection.docs, log=lambda m, n=name: log(f"{collection.name} {n}: {m}")
        )
        variants = {name: scores}
        if name in (fusions or {}):
            fusion = fusions[name]
            variants[f"{name} + recall fusion"] = [
                fusion.scores(logit_of(s), c) for s, c in zip(scores, cosines, strict=True)
            ]
        for row_name, variant in variants.items():
            row = figures([_order(s, c) for s, c in zip(variant, cands, strict=True)])
            diff = np.asarray(row["_per_query"]) - np.asarray(base)
            row.update(
                {
                    f"ΔNDCG@{k}": row[f"NDCG@{k}"] - rows[f"bi-encoder (recall top-{k_recall})"][f"NDCG@{k}"],
                    "wins": int((diff > 1e-9).sum()),
                    "losses": int((diff < -1e-9).sum()),
                }
            )
            rows[f"{row_name} (rerank recall top-{k_recall})"] = row
    for row in rows.values():
        row.pop("_per_query")
    rows["_info"] = {
        "collection": collection.name,
        "docs": len(doc_ids),
        "queries": len(qids),
        "k_recall": k_recall,
        "relevant_in_recall": float(
            np.mean([len(set(c) & rel) / len(rel) for c, rel in zip(cands, relevant, strict=True)])
        ),
    }
    return rows
