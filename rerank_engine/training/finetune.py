"""Fine-tune a one-logit cross-encoder on mined (query, positive, hard negatives) groups.

Two losses over the same groups of 1 positive + n negatives:
- "bce": pointwise binary cross-entropy on every pair, the positive weighted by `pos_weight`
  (sentence-transformers sets it to the negatives per positive);
- "listwise": softmax cross-entropy over the group's logits (the positive is the target).

Fused training (`fusion_weight` w > 0, `fusion_share` a): the job ranks by `logit + w · recall cosine`
(rerank_engine/quality/fusion.py), so the loss becomes `(1 − a) · L(logit) + a · L(logit + w · cosine)`. The
second term trains the cross-encoder on what the bi-encoder gets wrong (groups that the cosine already
ranks right carry little gradient); the first keeps it usable alone, for logged candidates.

Resumable: `run_dir/checkpoint.pt` holds model, optimizer, schedule, data order and RNG state; a
restarted run continues from it. The best model by valid NDCG@5 is saved as a Hugging Face folder in
`run_dir/best/`. `train(..., stop_at=S)` pauses after step S of a schedule of `config.steps`, so a short
comparison run can later be continued exactly. The loop itself is `loop.fit`, shared with
distillation (distill.py), which brings its own loss; the valid figures are `scoring.evaluate`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from rerank_engine.config import TokenizerConfig
from rerank_engine.errors import require
from rerank_engine.serving.tokenization import PairTokenizer
from rerank_engine.training.groups import Group, GroupSampler
from rerank_engine.training.loop import LoopConfig, bucketed_logits, fit
from rerank_engine.training.scoring import EvalSet, load_model

log = logging.getLogger(__name__)
_log_info = log.info


class FinetuneConfig(LoopConfig):
    loss: Literal["bce", "listwise"] = "listwise"
    n_negatives: int = Field(7, ge=1, description="mined (hard) negatives per group")
    n_random_negatives: int = Field(
        0, ge=0, description="extra negatives per group drawn from other queries' positives (easy)"
    )
    pos_weight: float = Field(1.0, gt=0, description="bce only: weight of the positive pair's term")
    groups_per_step: int = Field(4, ge=1)
    steps: int = Field(2000, ge=1, description="length of the LR schedule")
    lr: float = Field(3e-5, gt=0)
    warmup_share: float = Field(0.1, ge=0, lt=1)
    max_length: int = Field(256, ge=16)
    eval_every: int = Field(250, ge=1)
    fusion_weight: float = Field(0.0, ge=0, description="w of the fused loss term (logit + w · cosine)")
    fusion_share: float = Field(0.0, ge=0, le=1, description="share a of the fused term in the loss")

    @property
    def fused(self) -> bool:
        return self.fusion_weight > 0 and self.fusion_share > 0


def group_loss(kind: str, grouped, pos_weight: float = 1.0):
    """Loss over (groups × passages) scores whose column 0 is the positive."""
    torch = require("torch", package="torch")
    if kind == "listwise":
        target = torch.zeros(grouped.shape[0], dtype=torch.long, device=grouped.device)
        return torch.nn.functional.cross_entropy(grouped, target)
    labels = torch.zeros_like(grouped)
    labels[:, 0] = 1.0
    weight = torch.tensor(pos_weight, dtype=grouped.dtype, device=grouped.device)
    return torch.nn.functional.binary_cross_entropy_with_logits(grouped, labels, pos_weight=weight)


def train(
    config: FinetuneConfig,
    records: list[dict],
    run_dir: str | Path,
    *,
    base_model: str | Path,
    evalset: EvalSet | None = None,
    cosine=None,
    stop_at: int | None = None,
    progress: bool = True,
    log=_log_info,
) -> dict:
    """Train (or resume) until `stop_at` (default: config.steps). Returns the run state summary.

    `cosine(qid, doc_ids) -> array` gives the bi-encoder's recall cosines; required when the config
    has a fused loss term."""
    torch = require("torch", package="torch")

    if config.threads:
        torch.set_num_threads(config.threads)
    if config.max_train_queries:
        records = records[: config.max_train_queries]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if config.fused and cosine is None:
        raise ValueError("a fused loss (fusion_weight, fusion_share > 0) needs the recall cosine function")

    model = load_model(base_model, config.seed).to(device)
    tokenizer = PairTokenizer(
        base_model,
        TokenizerConfig(max_length=config.max_length, max_query_share=config.max_query_share),
        memoize=True,
    )
    sampler = GroupSampler(records, config.n_negatives, config.seed, config.n_random_negatives)

    def step_loss(groups: list[Group]):
        queries = [g.query for g in groups for _ in g.passages]
        passages = [p for g in groups for p in g.passages]
        logits = bucketed_logits(model, tokenizer, queries, passages, device)
        grouped = logits.view(len(groups), 1 + config.n_negatives + config.n_random_negatives)
        loss = group_loss(config.loss, grouped, config.pos_weight)
        if config.fused:
            cos = np.stack([cosine(g.qid, g.doc_ids) for g in groups]).astype(np.float32)
            shifted = grouped + config.fusion_weight * torch.from_numpy(cos).to(device)
            loss = (1 - config.fusion_share) * loss + config.fusion_share * group_loss(
                config.loss, shifted, config.pos_weight
            )
        return loss

    return fit(
        model,
        tokenizer,
        sampler,
        step_loss,
        config,
        run_dir,
        config_key=config.key(),
        evalset=evalset,
        stop_at=stop_at,
        desc=f"train[{config.loss}]",
        progress=progress,
        log=log,
    )
