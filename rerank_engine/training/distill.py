"""Distil a smaller cross-encoder from a trained one: keep N of the teacher's layers, train on its logits.

How ms-marco-MiniLM-L2/L4 and TinyBERT-L2 rerankers were made (FIELD_NOTES "Training a reranker"):
- `make_student`: the teacher with only some of its transformer layers, evenly spaced with the last one
  kept (0-based 1, 3, 5 of 6 for N = 3; or a list of indices). Embeddings, the kept layers, pooler and
  classification head are copied as they are; the folder is an ordinary Hugging Face
  sequence-classification model (config `num_hidden_layers` = N, `distilled_from` naming the teacher's
  bytes and the layers kept), so the export and the serving path take it unchanged.
- `distill`: the student trained on the teacher's logits over the mined groups (groups.GroupSampler:
  a question's positive and `n_negatives` of its mined negatives). "margin_mse" (MarginMSE, Hofstätter
  et al. 2020): the student's margins positive − negative match the teacher's; "mse": the student's
  logits match the teacher's; plus `label_weight` × finetune's label loss where it is > 0.
- `teacher_logits`: the teacher's logits over every (question, candidate) pair of the records, computed
  once and cached on disk, keyed by the teacher's content hash, the pairs' texts and the tokenization;
  written in chunks, so an interrupted computation resumes at the first missing chunk.

Training is loop.fit: `run_dir/checkpoint.pt` (model, optimizer, schedule, data order, torch RNG) and
exact resume; the best student by valid NDCG@5 in `run_dir/best/`. `run(cfg)` is what `jobs/distill.py`
runs: the mined records and the valid selection set as the fine-tuning recipe makes them, the teacher's
own valid figures beside the student's.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from rerank_engine.config import TokenizerConfig, _Frozen
from rerank_engine.errors import ConfigError, ModelFormatError, require
from rerank_engine.serving.hashing import content_hash
from rerank_engine.serving.tokenization import PairTokenizer
from rerank_engine.training.finetune import group_loss
from rerank_engine.training.groups import GroupSampler
from rerank_engine.training.hard_negatives import MiningConfig
from rerank_engine.training.loop import LoopConfig, bucketed_logits, fit
from rerank_engine.training.scoring import EvalSet, evalset_pairs, figures, load_model, per_query, score_pairs

log = logging.getLogger(__name__)
_log_info = log.info

# bump when the cached teacher logits would be computed differently for the same key
TEACHER_CACHE_VERSION = "1"
# a state-dict name inside a numbered transformer layer: bert.encoder.layer.3.…, model.layers.3.…
_LAYER_NAME = re.compile(r"(?:^|\.)layers?\.(\d+)\.")
# families whose layers are not interchangeable by position
_NOT_BY_LAYER = {"modernbert": "its attention alternates global and local by layer position"}


class DistillConfig(LoopConfig):
    layers: int | list[int] = Field(
        3, description="N (keep N evenly spaced teacher layers, the last included) or 0-based indices"
    )
    loss: Literal["margin_mse", "mse"] = Field(
        "margin_mse", description="margin_mse: student pos − neg margins vs the teacher's; mse: on logits"
    )
    label_weight: float = Field(0.0, ge=0, description="weight of the label loss added (0 = none)")
    label_loss: Literal["listwise", "bce"] = "listwise"
    pos_weight: float = Field(1.0, gt=0, description="bce label loss only: weight of the positive's term")
    n_negatives: int = Field(3, ge=1, description="mined negatives per group (beside the positive)")
    groups_per_step: int = Field(8, ge=1)
    steps: int = Field(1800, ge=1, description="length of the LR schedule")
    lr: float = Field(7e-5, gt=0)
    warmup_share: float = Field(0.05, ge=0, lt=1)
    max_length: int = Field(128, ge=16)
    eval_every: int = Field(300, ge=1)
    fusion_weight: float = Field(0.0, ge=0, description="w of the fused valid NDCG@5 (logit + w · cosine)")
    teacher_chunk_pairs: int = Field(4096, ge=1, description="teacher logits are cached this many at a time")

    UNKEYED: ClassVar[frozenset[str]] = LoopConfig.UNKEYED | {"teacher_chunk_pairs"}  # cache chunking

    @model_validator(mode="after")
    def _check(self):
        if isinstance(self.layers, int) and self.layers < 1:
            raise ValueError(f"layers must keep at least one layer, got {self.layers}")
        if isinstance(self.layers, list) and (
            not self.layers or self.layers[0] < 0 or any(a >= b for a, b in pairwise(self.layers))
        ):
            raise ValueError(f"layers must be increasing 0-based indices, got {self.layers}")
        if self.select_on == "fused" and self.fusion_weight <= 0:
            raise ValueError("select_on 'fused' needs fusion_weight > 0")
        return self


def kept_layers(layers: int | Sequence[int], n_teacher: int) -> list[int]:
    """The 0-based teacher layers a student keeps: N evenly spaced, the last one included
    ((i + 1) · L // N − 1: 1, 3, 5 of 6; 1, 3 of 4), or the given indices, checked against the teacher."""
    if isinstance(layers, int):
        if not 1 <= layers <= n_teacher:
            raise ConfigError(f"layers {layers}: the teacher has {n_teacher} layers; keep 1 to {n_teacher}")
        return [(i + 1) * n_teacher // layers - 1 for i in range(layers)]
    kept = [int(i) for i in layers]
    if not kept or any(not 0 <= i < n_teacher for i in kept) or any(a >= b for a, b in pairwise(kept)):
        raise ConfigError(f"layers {kept}: need increasing indices in 0..{n_teacher - 1}")
    return kept


def make_student(teacher_dir: str | Path, layers: int | Sequence[int], out: str | Path) -> Path:
    """Save into `out` the teacher with only the `kept_layers(layers)`, every weight copied from it,
    and the teacher's tokenizer."""
    torch = require("torch", package="torch")
    from transformers import AutoTokenizer

    teacher_dir, out = Path(teacher_dir), Path(out)
    teacher = load_model(teacher_dir, seed=0, require_head=True)
    model_type = teacher.config.model_type
    if model_type in _NOT_BY_LAYER:
        raise ModelFormatError(
            f"{teacher_dir}: cannot keep some layers of a {model_type}: {_NOT_BY_LAYER[model_type]}"
        )
    n_teacher = int(teacher.config.num_hidden_layers)
    kept = kept_layers(layers, n_teacher)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(kept)
    config.distilled_from = {
        "teacher": teacher_dir.name,
        "teacher_content_hash": content_hash(teacher_dir),
        "teacher_layers": n_teacher,
        "kept_layers": kept,
    }
    position = {t: s for s, t in enumerate(kept)}
    weights = {}
    for name, tensor in teacher.state_dict().items():
        found = _LAYER_NAME.search(name)
        if found is None:  # embeddings, pooler, head (and whatever else lies outside the layers)
            weights[name] = tensor
        elif int(found.group(1)) in position:
            i, j = found.span(1)
            weights[f"{name[:i]}{position[int(found.group(1))]}{name[j:]}"] = tensor
    with torch.random.fork_rng(devices=[]):  # the throwaway initial weights draw on no caller's RNG
        student = type(teacher)(config)
    student.load_state_dict(weights, strict=True)  # every student weight comes from the teacher
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    student.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(str(teacher_dir)).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out


def _cache_key(
    teacher_hash: str, queries: Sequence[str], passages: Sequence[str], tok: TokenizerConfig, chunk: int
) -> str:
    digest = hashlib.sha256()
    head = {"v": TEACHER_CACHE_VERSION, "teacher": teacher_hash, "n": len(queries), "chunk": chunk}
    digest.update(json.dumps({**head, **tok.scoring_dump()}, sort_keys=True).encode())
    for q, p in zip(queries, passages, strict=True):
        digest.update(q.encode() + b"\0" + p.encode() + b"\1")
    return digest.hexdigest()


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        np.save(fh, array)
    tmp.replace(path)


def teacher_logits(
    teacher_dir: str | Path,
    queries: Sequence[str],
    passages: Sequence[str],
    cache_dir: str | Path,
    tokenization: TokenizerConfig,
    *,
    chunk_pairs: int = 4096,
    progress: bool = True,
    log=_log_info,
) -> np.ndarray:
    """The teacher's fp32 logits of the (query, passage) pairs, in order, from `cache_dir` when they are
    there. Computed `chunk_pairs` at a time, each chunk saved as it is done; the teacher is loaded only
    when a chunk is missing."""
    torch = require("torch", package="torch")
    from tqdm import tqdm

    teacher_dir = Path(teacher_dir)
    key = _cache_key(content_hash(teacher_dir), queries, passages, tokenization, chunk_pairs)
    folder = Path(cache_dir) / key[:32]
    final = folder / "logits.npy"
    if final.is_file():
        log(f"teacher logits of {len(queries)} pairs: cached in {folder}")
        return np.load(final)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"teacher": str(teacher_dir), "key": key, "pairs": len(queries), **tokenization.scoring_dump()}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    parts = [folder / f"part-{i:05d}.npy" for i in range((len(queries) + chunk_pairs - 1) // chunk_pairs)]
    missing = [i for i, part in enumerate(parts) if not part.is_file()]
    if missing:
        log(f"teacher logits of {len(queries)} pairs: {len(missing)} of {len(parts)} chunks to score")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with torch.random.fork_rng(devices=[]):  # loading the teacher reseeds; keep the caller's RNG
            model = load_model(teacher_dir, seed=0, require_head=True).to(device)
        tokenizer = PairTokenizer(teacher_dir, tokenization, memoize=True)
        for i in tqdm(missing, disable=not progress, desc="teacher logits"):
            lo, hi = i * chunk_pairs, (i + 1) * chunk_pairs
            _save_npy(parts[i], score_pairs(model, tokenizer, queries[lo:hi], passages[lo:hi]))
    logits = np.concatenate([np.load(p) for p in parts]) if parts else np.zeros(0, dtype=np.float32)
    if len(logits) != len(queries):
        raise RuntimeError(f"{folder}: {len(logits)} cached teacher logits for {len(queries)} pairs")
    _save_npy(final, logits)
    for part in parts:
        part.unlink()
    return logits


def record_pairs(records: Sequence[dict]) -> tuple[list[str], list[str]]:
    """Every (question, candidate) pair of the mined records, positives and negatives."""
    queries = [r["query"] for r in records for _ in (*r["pos"], *r["neg"])]
    passages = [p for r in records for p in (*r["pos"], *r["neg"])]
    return queries, passages


def distill_loss(kind: str, student, teacher):
    """(groups × passages) student vs teacher logits, column 0 the positive."""
    torch = require("torch", package="torch")
    if kind == "mse":
        return torch.nn.functional.mse_loss(student, teacher)
    return torch.nn.functional.mse_loss(student[:, :1] - student[:, 1:], teacher[:, :1] - teacher[:, 1:])


def _student_matches(folder: Path, teacher_hash: str, layers) -> bool:
    """Whether the student in `folder` was made from this teacher, keeping these layers."""
    made = json.loads((folder / "config.json").read_text()).get("distilled_from") or {}
    if made.get("teacher_content_hash") != teacher_hash:
        return False
    return made.get("kept_layers") == kept_layers(layers, int(made["teacher_layers"]))


def distill(
    config: DistillConfig,
    records: list[dict],
    run_dir: str | Path,
    *,
    teacher: str | Path,
    teacher_cache: str | Path,
    evalset: EvalSet | None = None,
    stop_at: int | None = None,
    progress: bool = True,
    log=_log_info,
) -> dict:
    """Make the student in `run_dir/student` (once) and train it on the teacher's cached logits until
    `stop_at` (default: config.steps), resuming from `run_dir/checkpoint.pt`. Returns the run state."""
    torch = require("torch", package="torch")

    run_dir, teacher = Path(run_dir), Path(teacher)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.max_train_queries:
        records = records[: config.max_train_queries]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenization = TokenizerConfig(max_length=config.max_length, max_query_share=config.max_query_share)
    queries, passages = record_pairs(records)
    target = teacher_logits(
        teacher,
        queries,
        passages,
        teacher_cache,
        tokenization,
        chunk_pairs=config.teacher_chunk_pairs,
        progress=progress,
        log=log,
    )
    target_of = dict(zip(zip(queries, passages, strict=True), target.tolist(), strict=True))

    teacher_hash = content_hash(teacher)
    student_dir = run_dir / "student"
    if not (student_dir / "config.json").is_file():
        make_student(teacher, config.layers, student_dir)
        log(f"made {student_dir} from {teacher}")
    elif not _student_matches(student_dir, teacher_hash, config.layers):
        raise ConfigError(f"{student_dir} was made from another teacher or other layers; use a new run_dir")
    model = load_model(student_dir, config.seed, require_head=True).to(device)
    tokenizer = PairTokenizer(student_dir, tokenization, memoize=True)
    sampler = GroupSampler(records, config.n_negatives, config.seed)
    width = 1 + config.n_negatives

    def step_loss(groups):
        qs = [g.query for g in groups for _ in g.passages]
        ps = [p for g in groups for p in g.passages]
        student = bucketed_logits(model, tokenizer, qs, ps, device).view(len(groups), width)
        wanted = [target_of[pair] for pair in zip(qs, ps, strict=True)]
        teacher_scores = torch.tensor(wanted, dtype=student.dtype, device=device).view(len(groups), width)
        loss = distill_loss(config.loss, student, teacher_scores)
        if config.label_weight > 0:
            loss = loss + config.label_weight * group_loss(config.label_loss, student, config.pos_weight)
        return loss

    key = hashlib.sha256(f"{config.key()}:{teacher_hash}".encode()).hexdigest()[:16]
    return fit(
        model,
        tokenizer,
        sampler,
        step_loss,
        config,
        run_dir,
        config_key=key,
        evalset=evalset,
        stop_at=stop_at,
        desc=f"distill[{config.loss}]",
        progress=progress,
        log=log,
    )


def teacher_figures(
    teacher: str | Path, evalset: EvalSet, cache_dir: str | Path, config: DistillConfig, log=_log_info
) -> dict[str, float]:
    """The teacher's valid figures on the student's selection set (its logits cached like the train
    pairs'), with `NDCG@5_fused` where the config has a fusion weight."""
    tokenization = TokenizerConfig(max_length=config.max_length, max_query_share=config.max_query_share)
    queries, passages = evalset_pairs(evalset)
    flat = teacher_logits(
        teacher, queries, passages, cache_dir, tokenization, chunk_pairs=config.teacher_chunk_pairs, log=log
    )
    logits = per_query(flat, evalset)
    metrics = figures(logits, evalset)
    if config.fusion_weight > 0 and evalset.recall_scores is not None:
        metrics["NDCG@5_fused"] = figures(logits, evalset, config.fusion_weight, ks=(5,))["NDCG@5"]
    return metrics


class DistillRecipe(_Frozen):
    """A distillation recipe file (`jobs/configs/distill_*.yaml`), every key checked."""

    data: str = Field("insuranceqa-data==1.0", description="the dataset package the recipe trains on")
    teacher: str = Field(description="the teacher's model folder")
    run_dir: str = Field(description="checkpoints, mined sets and logs (resumed from)")
    cache_dir: str = Field(".cache/embeddings", description="bi-encoder embeddings of the corpus")
    teacher_cache: str = Field(".cache/teacher_logits", description="the teacher's logits, computed once")
    output_model: str | None = Field(None, description="where --ship writes the best student")
    mining: MiningConfig
    valid_queries: int = Field(300, ge=1, description="valid questions used for selection")
    distill: DistillConfig = DistillConfig()


def run(cfg: dict, log=_log_info) -> dict:
    """The InsuranceQA distillation behind `jobs/distill.py`. Each teacher (by content hash) and layer
    choice trains in its own `run_dir/teacher-<hash>-L<layers>/`; the mined records are shared in
    `run_dir`."""
    from rerank_engine.data.insuranceqa import answer_recall
    from rerank_engine.training.recipe import mined_records, valid_evalset

    teacher = Path(cfg["teacher"])
    config = DistillConfig.build(**cfg["distill"])
    teacher_hash = content_hash(teacher)
    root = Path(cfg["run_dir"])
    spec = config.layers if isinstance(config.layers, int) else ".".join(map(str, config.layers))
    run_dir = root / f"teacher-{teacher_hash[:12]}-L{spec}"
    recall = answer_recall(cfg["cache_dir"])
    records = mined_records(cfg, recall, root, log)
    evalset = valid_evalset(recall, cfg["valid_queries"])
    teacher_valid = teacher_figures(teacher, evalset, cfg["teacher_cache"], config, log)
    log(f"teacher {teacher}: valid {json.dumps({k: round(v, 4) for k, v in teacher_valid.items()})}")
    state = distill(
        config,
        records,
        run_dir,
        teacher=teacher,
        teacher_cache=cfg["teacher_cache"],
        evalset=evalset,
        log=log,
    )
    made = json.loads((run_dir / "student" / "config.json").read_text())["distilled_from"]
    summary = {
        "teacher": str(teacher),
        "teacher_content_hash": teacher_hash,
        "kept_layers": made["kept_layers"],
        "run_dir": str(run_dir),
        "best_dir": str(run_dir / "best"),
        "best_step": state["best_step"],
        "best_valid_ndcg5": state["best_ndcg5"],
        "select_on": config.select_on,
        "teacher_valid": {k: round(v, 4) for k, v in teacher_valid.items()},
        "history": state["history"],
        "train_queries": len(records[: config.max_train_queries] if config.max_train_queries else records),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
