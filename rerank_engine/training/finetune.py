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
comparison run can later be continued exactly. The loop itself (`fit`, `optimizer_and_schedule`) is
shared with distillation (distill.py), which brings its own loss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from rerank_engine.config import TokenizerConfig, _Frozen
from rerank_engine.errors import ConfigError, ModelFormatError, require
from rerank_engine.quality.metrics import mean_metrics
from rerank_engine.serving.batching import pad_rows, plan_batches
from rerank_engine.serving.tokenization import PairTokenizer
from rerank_engine.training.groups import Group, GroupSampler

log = logging.getLogger(__name__)
_log_info = log.info


class LoopConfig(_Frozen):
    """What every training loop of `fit` shares: schedule details, checkpoint cadence, selection; and the
    key a checkpoint is bound to. Each loop's config adds its own fields and defaults."""

    # not part of the key: they change when things are logged and saved, not the trajectory
    UNKEYED: ClassVar[frozenset[str]] = frozenset({"eval_every", "checkpoint_every", "threads"})

    weight_decay: float = Field(0.01, ge=0)
    max_query_share: float = Field(0.25, gt=0, lt=1)
    max_train_queries: int | None = Field(None, ge=1, description="use only the first N mined queries")
    seed: int = 0
    checkpoint_every: int = Field(50, ge=1)
    threads: int = Field(0, ge=0, description="torch CPU threads, 0 = default")
    select_on: Literal["alone", "fused"] = Field(
        "alone", description="valid NDCG@5 that picks the best checkpoint: the logit, or logit + w · cosine"
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="the training forward's matmuls: fp32, or bf16 autocast (weights, optimizer and "
        "evaluation stay fp32; faster only where the CPU has bf16 units: avx512_bf16 or AMX)",
    )

    def key(self) -> str:
        """Hash of everything that changes the trajectory."""
        fields = self.model_dump(exclude=set(self.UNKEYED))
        if fields["precision"] == "fp32":  # the default: the key that runs before the option had
            del fields["precision"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


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


def _bucketed_logits(model, tokenizer: PairTokenizer, queries, passages, device, max_batch_tokens=4096):
    """Training forward with length bucketing inside the step: each sub-batch is padded to its own
    longest row, and the logits are put back in input order (gradients flow through the gather)."""
    torch = require("torch", package="torch")
    pairs = tokenizer(queries, passages)
    plan = plan_batches(pairs.lengths, max_batch_tokens=max_batch_tokens, max_batch_rows=256)
    parts, order = [], []
    for batch in plan:
        ids, mask = pad_rows(
            [pairs.input_ids[i] for i in batch.indices], batch.padded_length, tokenizer.pad_id
        )
        types, _ = pad_rows([pairs.token_type_ids[i] for i in batch.indices], batch.padded_length, 0)
        parts.append(
            model(
                input_ids=torch.from_numpy(ids).to(device),
                attention_mask=torch.from_numpy(mask).to(device),
                token_type_ids=torch.from_numpy(types).to(device),
            ).logits[:, 0]
        )
        order.append(batch.indices)
    inverse = np.empty(len(pairs), dtype=np.int64)
    inverse[np.concatenate(order)] = np.arange(len(pairs))
    return torch.cat(parts).float()[torch.from_numpy(inverse).to(device)]  # fp32 for the loss under autocast


def _group_loss(kind: str, grouped, pos_weight: float = 1.0):
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
        logits = _bucketed_logits(model, tokenizer, queries, passages, device)
        grouped = logits.view(len(groups), 1 + config.n_negatives + config.n_random_negatives)
        loss = _group_loss(config.loss, grouped, config.pos_weight)
        if config.fused:
            cos = np.stack([cosine(g.qid, g.doc_ids) for g in groups]).astype(np.float32)
            shifted = grouped + config.fusion_weight * torch.from_numpy(cos).to(device)
            loss = (1 - config.fusion_share) * loss + config.fusion_share * _group_loss(
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


def optimizer_and_schedule(model, *, lr: float, weight_decay: float, steps: int, warmup_share: float):
    """AdamW (no decay on biases and LayerNorm weights) and a linear warm-up then linear decay to 0."""
    torch = require("torch", package="torch")
    no_decay = ("bias", "LayerNorm.weight")
    params = [
        {
            "params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
            "weight_decay": weight_decay,
        },
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(params, lr=lr)
    warmup = int(steps * warmup_share)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)


def fit(
    model,
    tokenizer: PairTokenizer,
    sampler: GroupSampler,
    step_loss,
    config,
    run_dir: str | Path,
    *,
    config_key: str,
    evalset: EvalSet | None = None,
    stop_at: int | None = None,
    desc: str = "train",
    progress: bool = True,
    log=_log_info,
) -> dict:
    """The resumable loop that fine-tuning and distillation share: `step_loss(groups) -> loss tensor`
    for each step's `config.groups_per_step` groups from `sampler`, AdamW with `optimizer_and_schedule`,
    gradients clipped at 1; valid figures every `config.eval_every` steps (the best, by
    `config.select_on`, saved in `run_dir/best/`) and `run_dir/checkpoint.pt` every
    `config.checkpoint_every`. A checkpoint written under another `config_key` is refused.

    With `config.precision` bf16 the step's forward runs under bf16 autocast; the backward pass, the
    optimizer, the checkpoints and the valid figures stay fp32.

    `config` needs steps, lr, weight_decay, warmup_share, groups_per_step, eval_every,
    checkpoint_every, fusion_weight, select_on and precision."""
    torch = require("torch", package="torch")
    from tqdm import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stop_at = min(stop_at or config.steps, config.steps)
    device = next(model.parameters()).device
    optimizer, scheduler = optimizer_and_schedule(
        model,
        lr=config.lr,
        weight_decay=config.weight_decay,
        steps=config.steps,
        warmup_share=config.warmup_share,
    )
    state = {"step": 0, "best_ndcg5": -1.0, "best_step": None, "config_key": config_key, "history": []}

    ckpt = run_dir / "checkpoint.pt"
    if ckpt.is_file():
        saved = torch.load(ckpt, map_location=device, weights_only=True)  # tensors and plain values only
        if saved["state"]["config_key"] != config_key:
            raise ConfigError(f"{ckpt} was written with another config; use a new run_dir")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        sampler.load_state(saved["sampler"])
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]
        log(f"resumed {run_dir} at step {state['step']}")

    def save_checkpoint():
        tmp = ckpt.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "sampler": sampler.state(),
                "torch_rng": torch.get_rng_state(),
                "state": state,
            },
            tmp,
        )
        tmp.replace(ckpt)

    def run_eval():
        metrics = evaluate(model, tokenizer, evalset, fusion_weight=config.fusion_weight)
        entry = {"step": state["step"], **{k: round(v, 4) for k, v in metrics.items()}}
        state["history"].append(entry)
        with (run_dir / "history.jsonl").open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
        fused = f" fused {metrics['NDCG@5_fused']:.4f}" if "NDCG@5_fused" in metrics else ""
        log(f"step {state['step']}: valid NDCG@5 {metrics['NDCG@5']:.4f}{fused} P@1 {metrics['P@1']:.4f}")
        chosen = metrics["NDCG@5_fused" if config.select_on == "fused" else "NDCG@5"]
        if chosen > state["best_ndcg5"]:
            state["best_ndcg5"], state["best_step"] = chosen, state["step"]
            best = run_dir / "best"
            model.save_pretrained(best)
            tokenizer.tokenizer.save_pretrained(best)
            (best / "metrics.json").write_text(json.dumps(entry, indent=2))

    bar = tqdm(total=stop_at, initial=state["step"], disable=not progress, desc=desc)
    model.train()
    started, losses = time.perf_counter(), []
    bf16 = config.precision == "bf16"
    while state["step"] < stop_at:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = step_loss(sampler.next_groups(config.groups_per_step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        state["step"] += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if state["step"] % 50 == 0 or state["step"] == stop_at:
            with (run_dir / "loss.jsonl").open("a") as fh:
                fh.write(json.dumps({"step": state["step"], "loss": float(np.mean(losses[-50:]))}) + "\n")
        if evalset is not None and (state["step"] % config.eval_every == 0 or state["step"] == stop_at):
            run_eval()
        if state["step"] % config.checkpoint_every == 0 or state["step"] == stop_at:
            save_checkpoint()
    bar.close()
    state["last_losses"] = losses[-50:]
    state["seconds_this_sitting"] = round(time.perf_counter() - started, 1)
    state["mean_loss_first"] = float(np.mean(losses[:10])) if losses else math.nan
    return state
