"""The resumable training loop that fine-tuning (finetune.py) and distillation (distill.py) share; each
brings its own loss as `step_loss(groups) -> loss tensor`.

`fit` runs AdamW with a linear warm-up and decay (`optimizer_and_schedule`), gradients clipped at 1, and
checkpoints `run_dir/checkpoint.pt` (model, optimizer, schedule, data order, RNG), so a restarted run
continues exactly; the valid figures (`scoring.evaluate`) pick the best step, saved in `run_dir/best/`.
A checkpoint is bound to the key of its `LoopConfig` (everything that changes the trajectory).
`bucketed_logits` is the training forward, length-bucketed inside a step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from rerank_engine.config import _Frozen
from rerank_engine.errors import ConfigError, require
from rerank_engine.serving.batching import pad_rows, plan_batches
from rerank_engine.serving.tokenization import PairTokenizer
from rerank_engine.training.groups import GroupSampler
from rerank_engine.training.scoring import EvalSet, evaluate

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


def bucketed_logits(model, tokenizer: PairTokenizer, queries, passages, device, max_batch_tokens=4096):
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
