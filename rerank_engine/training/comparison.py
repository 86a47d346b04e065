"""Training recipes compared at equal compute on valid: same seed, same steps, same pairs a step.

Each variant names a mined negative set and overrides of a base `FinetuneConfig`; it trains for `steps`
(resumable: its own run folder and checkpoint), then its final weights are scored once on two valid
sets — the cascade (each question's bi-encoder top-20 over all answers) and InsuranceQA's pools —
alone and fused with the recall cosine (`logit + w · cosine`, w picked on the same set from
`fusion_weights`, as calibration would). The bi-encoder's own figures stand in the first row.
A finished variant's figures are kept in `<run_dir>/<name>/result.json` and not recomputed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from rerank_engine.training.finetune import FinetuneConfig, train
from rerank_engine.training.hard_negatives import MiningConfig, mine_insuranceqa, read_records
from rerank_engine.training.scoring import EvalSet, evalset_logits, figures

FUSION_WEIGHTS = (2.0, 5.0, 10.0, 20.0, 40.0)
_log_info = logging.getLogger(__name__).info


def set_figures(logits: list[np.ndarray], evalset: EvalSet, weights=FUSION_WEIGHTS) -> dict[str, float]:
    """P@1 and NDCG@5 alone, and fused at the weight (of `weights`) with the best NDCG@5."""
    alone = figures(logits, evalset, ks=(1, 5))
    fused = {w: figures(logits, evalset, w, ks=(1, 5)) for w in weights}
    w = max(weights, key=lambda w: (fused[w]["NDCG@5"], -w))
    return {
        "P@1": alone["P@1"],
        "NDCG@5": alone["NDCG@5"],
        "P@1_fused": fused[w]["P@1"],
        "NDCG@5_fused": fused[w]["NDCG@5"],
        "fusion_weight": w,
    }


def recall_figures(evalset: EvalSet) -> dict[str, float]:
    """The bi-encoder alone: candidates ranked by their recall cosine."""
    m = figures([np.asarray(s, dtype=np.float64) for s in evalset.recall_scores], evalset, ks=(1, 5))
    return {"P@1": m["P@1"], "NDCG@5": m["NDCG@5"]}


def recall_row(evalsets: dict[str, EvalSet]) -> dict:
    """The table's first row: the bi-encoder's own figures on each set."""
    return {"name": "bi-encoder (zero-shot)", **{k: recall_figures(es) for k, es in evalsets.items()}}


def model_figures(model, tokenizer, evalsets: dict[str, EvalSet]) -> dict[str, dict]:
    return {name: set_figures(evalset_logits(model, tokenizer, es), es) for name, es in evalsets.items()}


def final_model(base_model, run_dir: Path, config: FinetuneConfig):
    """The weights of `run_dir/checkpoint.pt` in the base model's architecture."""
    import torch

    from rerank_engine.training.scoring import load_model

    model = load_model(base_model, config.seed)
    saved = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(saved["model"])
    return model


def mined_sets(cfg: dict, recall, log) -> dict[str, list[dict]]:
    out = {}
    for name, mining in cfg["mining"].items():
        path = Path(cfg["run_dir"]) / f"mined_{name}.jsonl"
        if not path.is_file():
            _, stats = mine_insuranceqa("train", MiningConfig.build(**mining), cfg["cache_dir"], path, recall)
            path.with_suffix(".stats.json").write_text(json.dumps(dict(stats), indent=2))
            log(f"mined {name}: {dict(stats)}")
        out[name] = read_records(path)
    return out


def valid_sets(cfg: dict, recall=None) -> dict[str, EvalSet]:
    """The comparison's two valid sets: the cascade (bi-encoder top-20 over all answers) and the pools.
    `recall`: the `answer_recall` already loaded, if any."""
    from rerank_engine.data.insuranceqa import answer_recall
    from rerank_engine.training.recipe import pool_evalset, valid_evalset

    recall = recall or answer_recall(cfg["cache_dir"])
    return {
        "cascade": valid_evalset(recall, cfg["valid_queries"]),
        "pool": pool_evalset(recall, cfg["pool_queries"], cfg["pool_negatives"]),
    }


def trained_model_rows(
    evalsets: dict[str, EvalSet], models: dict[str, str], run_dir: str | Path, max_length: int, log=_log_info
) -> list[dict]:
    """The bi-encoder row, then one row per trained model folder (`name → folder`: the shipped model, a
    long run's best checkpoint), scored on the same sets as the variants, in PyTorch fp32 at
    `max_length`. A model's row is kept in `<run_dir>/models/<name>-<content hash>-<max_length>.json`."""
    from rerank_engine.config import TokenizerConfig
    from rerank_engine.serving.hashing import content_hash
    from rerank_engine.serving.tokenization import PairTokenizer
    from rerank_engine.training.scoring import load_model

    rows = [recall_row(evalsets)]
    for name, folder in models.items():
        out = Path(run_dir) / "models" / f"{name}-{content_hash(folder)[:12]}-{max_length}.json"
        if out.is_file():
            rows.append(json.loads(out.read_text()))
            continue
        model = load_model(folder, seed=0, require_head=True)  # never score a random head
        tokenizer = PairTokenizer(folder, TokenizerConfig(max_length=max_length))
        row = {"name": name, "model": str(folder), **model_figures(model, tokenizer, evalsets)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(row, indent=2))
        log(f"{name}: {json.dumps({k: row[k] for k in evalsets})}")
        rows.append(row)
    return rows


def run(cfg: dict, log=_log_info, train_missing: bool = True) -> list[dict]:
    """Train and score every variant of `cfg` (see jobs/configs/recipe_comparison.yaml); the rows.
    With `train_missing=False`, only the bi-encoder row and the variants already finished."""
    from rerank_engine.config import TokenizerConfig
    from rerank_engine.data.insuranceqa import answer_recall
    from rerank_engine.recall.index import bundled_minilm_dir
    from rerank_engine.serving.tokenization import PairTokenizer
    from rerank_engine.training.recipe import train_cosine

    run_dir = Path(cfg["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    base_model = cfg.get("base_model") or bundled_minilm_dir()
    recall = answer_recall(cfg["cache_dir"])
    mined = mined_sets(cfg, recall, log) if train_missing else {}
    evalsets = valid_sets(cfg, recall)
    cosine = train_cosine(recall, cfg["cache_dir"]) if train_missing else None
    rows = [recall_row(evalsets)]
    for variant in cfg["variants"]:
        name = variant["name"]
        out = run_dir / name / "result.json"
        if out.is_file():
            rows.append(json.loads(out.read_text()))
            continue
        if not train_missing:
            log(f"{name}: not finished yet, left out")
            continue
        tc = FinetuneConfig.build(**{**cfg["train"], **variant.get("train", {}), "steps": cfg["steps"]})
        state = train(
            tc,
            mined[variant["negatives"]],
            run_dir / name,
            base_model=base_model,
            cosine=cosine if tc.fused else None,
            log=log,
        )
        model = final_model(base_model, run_dir / name, tc)
        tokenizer = PairTokenizer(base_model, TokenizerConfig(max_length=tc.max_length))
        row = {
            "name": name,
            "negatives": variant["negatives"],
            "config": tc.model_dump(),
            "pairs": tc.steps * tc.groups_per_step * (1 + tc.n_negatives + tc.n_random_negatives),
            "train_seconds_last_sitting": state["seconds_this_sitting"],
            **model_figures(model, tokenizer, evalsets),
        }
        out.write_text(json.dumps(row, indent=2))
        log(f"{name}: {json.dumps({k: row[k] for k in evalsets})}")
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    head = (
        "| recipe | negatives | pairs | cascade NDCG@5 alone | fused (w) | cascade P@1 alone | fused "
        "| pool P@1 alone | fused (w) | pool NDCG@5 alone | fused |\n" + "|---" * 11 + "|\n"
    )
    lines = []
    for r in rows:
        c, p = r["cascade"], r["pool"]

        def cell(d, key, w=False):
            if key not in d:
                return "—"
            return f"{d[key]:.3f}" + (f" ({d['fusion_weight']:g})" if w else "")

        lines.append(
            f"| {r['name']} | {r.get('negatives', '—')} | {r.get('pairs', '—')} | {cell(c, 'NDCG@5')} "
            f"| {cell(c, 'NDCG@5_fused', True)} | {cell(c, 'P@1')} | {cell(c, 'P@1_fused')} "
            f"| {cell(p, 'P@1')} | {cell(p, 'P@1_fused', True)} | {cell(p, 'NDCG@5')} "
            f"| {cell(p, 'NDCG@5_fused')} |"
        )
    return head + "\n".join(lines) + "\n"
