"""A cross-encoder in training, scored in PyTorch: loading it (`load_model`), fp32 logits with length
bucketing (`score_pairs`), and the valid figures a run is selected by (`EvalSet`, `figures`, `evaluate`).
Used by the training loop, the recipe comparison and distillation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rerank_engine.errors import ModelFormatError, require
from rerank_engine.quality.metrics import mean_metrics
from rerank_engine.serving.batching import pad_rows, plan_batches
from rerank_engine.serving.tokenization import PairTokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSet:
    """Per query: the candidate passages (recall order) and which of them are relevant."""

    queries: list[str]
    candidates: list[list[str]]
    candidate_ids: list[list[str]]
    relevant: list[set[str]]
    recall_scores: list[list[float]] | None = None  # bi-encoder cosines, for the fused metric


def load_model(base_model: str | Path, seed: int, *, require_head: bool = False):
    """A one-logit sequence-classification model in fp32. `require_head`: refuse a checkpoint without a
    trained head (a distillation teacher), instead of drawing one from `seed`."""
    torch = require("torch", package="torch")
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)  # a new classification head is drawn from this seed
    model, info = AutoModelForSequenceClassification.from_pretrained(
        str(base_model), num_labels=1, torch_dtype=torch.float32, output_loading_info=True
    )
    fresh = sorted(info["missing_keys"])
    if fresh and require_head:
        raise ModelFormatError(
            f"{base_model} has no trained classification head (missing {', '.join(fresh)})"
        )
    if fresh:  # training may start from a fresh head (an export of it is refused); say so
        log.warning(
            "%s has no trained classification head: starting from newly initialised %s (seed %d)",
            base_model,
            ", ".join(fresh),
            seed,
        )
    return model


def score_pairs(
    model,
    tokenizer: PairTokenizer,
    queries: Sequence[str],
    passages: Sequence[str],
    max_batch_tokens: int = 8192,
) -> np.ndarray:
    """fp32 logits with length bucketing, in input order (PyTorch, evaluation mode)."""
    torch = require("torch", package="torch")
    pairs = tokenizer(queries, passages)
    out = np.zeros(len(pairs), dtype=np.float32)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for batch in plan_batches(pairs.lengths, max_batch_tokens=max_batch_tokens, max_batch_rows=128):
            ids, mask = pad_rows(
                [pairs.input_ids[i] for i in batch.indices], batch.padded_length, tokenizer.pad_id
            )
            types, _ = pad_rows([pairs.token_type_ids[i] for i in batch.indices], batch.padded_length, 0)
            logits = model(
                input_ids=torch.from_numpy(ids).to(device),
                attention_mask=torch.from_numpy(mask).to(device),
                token_type_ids=torch.from_numpy(types).to(device),
            ).logits
            out[batch.indices] = logits[:, 0].float().cpu().numpy()
    model.train(was_training)
    return out


def evalset_pairs(evalset: EvalSet) -> tuple[list[str], list[str]]:
    """Every (query, candidate) pair of the set, query by query: (queries, passages)."""
    flat_q = [q for q, cands in zip(evalset.queries, evalset.candidates, strict=True) for _ in cands]
    flat_p = [p for cands in evalset.candidates for p in cands]
    return flat_q, flat_p


def per_query(logits: np.ndarray, evalset: EvalSet) -> list[np.ndarray]:
    """Flat logits in `evalset_pairs` order → one float64 array per query."""
    bounds = np.cumsum([0, *(len(c) for c in evalset.candidates)])
    return np.split(np.asarray(logits, dtype=np.float64), bounds[1:-1])


def evalset_logits(model, tokenizer: PairTokenizer, evalset: EvalSet) -> list[np.ndarray]:
    """fp32 logits of every query's candidates, one array per query (scored in one bucketed pass)."""
    return per_query(score_pairs(model, tokenizer, *evalset_pairs(evalset)), evalset)


def figures(
    logits: Sequence[np.ndarray], evalset: EvalSet, fusion_weight: float = 0.0, ks=(1, 5, 10)
) -> dict[str, float]:
    """Metrics of each query's candidates ranked by logit (+ fusion_weight · recall cosine, if > 0);
    ties by recall position."""
    if fusion_weight > 0 and evalset.recall_scores is None:
        raise ValueError("a fused ranking needs the evaluation set's recall scores")
    runs = []
    for row, (ids, rel) in enumerate(zip(evalset.candidate_ids, evalset.relevant, strict=True)):
        s = logits[row] + (fusion_weight * np.asarray(evalset.recall_scores[row]) if fusion_weight else 0)
        order = np.lexsort((np.arange(len(ids)), -s))
        runs.append(([ids[i] for i in order], rel))
    return mean_metrics(runs, ks=ks)


def evaluate(
    model, tokenizer: PairTokenizer, evalset: EvalSet, fusion_weight: float = 0.0
) -> dict[str, float]:
    """Rerank each query's candidates; NDCG/P/R/MRR at 1, 5, 10 of the reranked list. With a
    `fusion_weight` and recall scores, also `NDCG@5_fused`: the order of logit + w · cosine."""
    logits = evalset_logits(model, tokenizer, evalset)
    metrics = figures(logits, evalset)
    if fusion_weight > 0 and evalset.recall_scores is not None:
        metrics["NDCG@5_fused"] = figures(logits, evalset, fusion_weight, ks=(5,))["NDCG@5"]
    return metrics
