"""The InsuranceQA fine-tuning recipe behind `jobs/finetune_reranker.py` (config: a YAML file).

mine train hard negatives → valid selection set (recall top-20) → each loss trained `compare_steps`
→ the better by valid NDCG@5 continues to `train.steps` → best checkpoint saved as fp16 safetensors
with a model card. Every stage resumes from what is on disk.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from rerank_engine.config import _Frozen, apply_overrides, read_yaml_mapping
from rerank_engine.training.finetune import FinetuneConfig, train
from rerank_engine.training.hard_negatives import MiningConfig, mine_insuranceqa, read_records
from rerank_engine.training.scoring import EvalSet

_log_info = logging.getLogger(__name__).info


class RecipeConfig(_Frozen):
    """A fine-tuning recipe file (`jobs/configs/finetune_*.yaml`), every key checked: an unknown or
    mistyped one is a ConfigError naming it, as in a job config."""

    data: str = Field("insuranceqa-data==1.0", description="the dataset package the recipe trains on")
    base_model: str | None = Field(None, description="model folder to start from; null: bundled MiniLM")
    run_dir: str = Field(description="checkpoints, mined sets and logs (resumed from)")
    cache_dir: str = Field(".cache/embeddings", description="bi-encoder embeddings of the corpus")
    output_model: str | None = Field(None, description="where --ship writes the best checkpoint")
    mined_from: str | None = Field(None, description="mined records to reuse; null: mine into run_dir")
    mining: MiningConfig | None = None
    valid_queries: int = Field(300, ge=1, description="valid questions used for selection")
    compare_steps: int = Field(300, ge=1, description="steps each loss of `losses` gets before the choice")
    losses: list[Literal["bce", "listwise"]] = Field(["listwise"], min_length=1)
    train: FinetuneConfig = FinetuneConfig()


def load_recipe(
    path: str | Path, overrides: dict | None = None, schema: type[_Frozen] = RecipeConfig
) -> dict:
    """A recipe file with `--set` overrides (`train.steps=600`), checked by `schema` (`RecipeConfig`, or
    `distill.DistillRecipe`); returned as the mapping `run` takes."""
    values = apply_overrides(read_yaml_mapping(path), overrides)
    schema.build(**values)
    return values


def valid_evalset(recall, n_queries: int, k: int = 20, split: str = "valid") -> EvalSet:
    """The first `n_queries` questions of `split`, each with its bi-encoder top-k (realistic setting:
    missed positives are not added)."""
    from rerank_engine.data.insuranceqa import load_answers, load_split

    encoder, index, _ = recall
    questions = load_split(split)[:n_queries]
    answers = load_answers()
    scores, ids = index.search(encoder.encode([q.text for q in questions]), k)
    return EvalSet(
        queries=[q.text for q in questions],
        candidates=[[answers[d] for d in row] for row in ids],
        candidate_ids=[list(row) for row in ids],
        relevant=[set(q.answers) for q in questions],
        recall_scores=[[float(s) for s in row] for row in scores],
    )


def pool_evalset(recall, n_queries: int, n_negatives: int, split: str = "valid", start: int = 0) -> EvalSet:
    """InsuranceQA's answer-selection protocol on `split` questions [start, start + n_queries): each
    question's own pool, its positives + the first `n_negatives` of its 200 retrieval-mined negatives,
    in answer-id order (so no ranking inherits the positives-first order on ties)."""
    from rerank_engine.data.insuranceqa import load_answers, load_split

    encoder, _, emb_by_id = recall
    questions = load_split(split)[start : start + n_queries]
    answers = load_answers()
    pools = [sorted({*q.answers, *q.negatives[:n_negatives]}, key=int) for q in questions]  # no order leak
    q_emb = encoder.encode([q.text for q in questions])
    return EvalSet(
        queries=[q.text for q in questions],
        candidates=[[answers[d] for d in pool] for pool in pools],
        candidate_ids=pools,
        relevant=[set(q.answers) for q in questions],
        recall_scores=[[float(e @ emb_by_id[d]) for d in pool] for e, pool in zip(q_emb, pools, strict=True)],
    )


def train_cosine(recall, cache_dir: str | Path, split: str = "train"):
    """`cosine(qid, doc_ids)`: the bi-encoder's recall cosine of a `split` question to answers, from the
    cached embeddings (the same ones mining used)."""
    from rerank_engine.data.insuranceqa import load_split
    from rerank_engine.recall.index import embed_cached

    encoder, _, emb_by_id = recall
    questions = load_split(split)
    q_emb = embed_cached(encoder, [q.text for q in questions], cache_dir)
    row_of = {q.qid: i for i, q in enumerate(questions)}

    def cosine(qid: str, doc_ids) -> np.ndarray:
        return np.array([float(q_emb[row_of[qid]] @ emb_by_id[d]) for d in doc_ids], dtype=np.float32)

    return cosine


def mined_records(cfg: dict, recall, run_dir: Path, log=_log_info) -> list[dict]:
    """The train questions' mined records: `cfg["mined_from"]` if given, else `run_dir/mined_train.jsonl`,
    mined there with `cfg["mining"]` when the file is not there yet."""
    mined_path = Path(cfg.get("mined_from") or run_dir / "mined_train.jsonl")
    if not mined_path.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        _, stats = mine_insuranceqa(
            "train", MiningConfig.build(**cfg["mining"]), cfg["cache_dir"], mined_path, recall=recall
        )
        (run_dir / "mining_stats.json").write_text(json.dumps(dict(stats), indent=2))
        log(f"mined {mined_path}: {dict(stats)}")
    return read_records(mined_path)


def run(cfg: dict, log=_log_info) -> dict:
    from rerank_engine.data.insuranceqa import answer_recall
    from rerank_engine.recall.index import bundled_minilm_dir

    run_dir = Path(cfg["run_dir"])
    base_model = cfg.get("base_model") or bundled_minilm_dir()
    recall = answer_recall(cfg["cache_dir"])
    records = mined_records(cfg, recall, run_dir, log)
    evalset = valid_evalset(recall, cfg["valid_queries"])
    fused = FinetuneConfig.build(**cfg["train"]).fused
    cosine = train_cosine(recall, cfg["cache_dir"]) if fused else None

    results = {}
    for loss in cfg["losses"]:
        tc = FinetuneConfig.build(**{**cfg["train"], "loss": loss})
        state = train(
            tc,
            records,
            run_dir / loss,
            base_model=base_model,
            evalset=evalset,
            cosine=cosine,
            stop_at=cfg["compare_steps"],
            log=log,
        )
        results[loss] = state["history"][-1]["NDCG@5"] if state["history"] else float("nan")
        log(f"compare {loss}: valid NDCG@5 {results[loss]:.4f} at step {cfg['compare_steps']}")
    winner = max(results, key=lambda k: (np.nan_to_num(results[k], nan=-1), k == "listwise"))
    log(f"continuing {winner} (valid NDCG@5 at comparison: {results})")
    tc = FinetuneConfig.build(**{**cfg["train"], "loss": winner})
    state = train(
        tc, records, run_dir / winner, base_model=base_model, evalset=evalset, cosine=cosine, log=log
    )
    summary = {
        "comparison_ndcg5": results,
        "winner": winner,
        "best_step": state["best_step"],
        "best_valid_ndcg5": state["best_ndcg5"],
        "history": state["history"],
        "train_queries": len(records),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def ship(best_dir: str | Path, out: str | Path, card: str | None = None) -> Path:
    """Save the best checkpoint as fp16 safetensors + tokenizer + config + README model card (`card`;
    None keeps the card already in `out`, or starts one with the folder's name as its title)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = Path(out)
    if card is None:
        card = (out / "README.md").read_text() if (out / "README.md").is_file() else f"# {out.name}\n"
    model = AutoModelForSequenceClassification.from_pretrained(str(best_dir), torch_dtype=torch.float32)
    model.half().save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(best_dir)).save_pretrained(out)
    (out / "README.md").write_text(card)
    return out
