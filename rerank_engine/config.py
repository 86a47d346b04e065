"""Frozen, keyword-only configuration for each component (pydantic), composed into job configs.

Light module: imports no ray, torch, onnxruntime or faiss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rerank_engine.errors import ConfigError

Precision = Literal["auto", "fp32", "fp16", "int8"]
Provider = Literal["auto", "cpu", "cuda"]


class _Frozen(BaseModel):
    # allow_inf_nan=False: no setting means anything at inf or nan (a timeout of .inf overflowed the
    # alarm; a CPU share of .inf reached Ray)
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @classmethod
    def build(cls, **values):
        """Validate `values`; raise ConfigError naming each bad key and what was expected."""
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<config>'}: {err['msg']} "
                f"(got {err.get('input')!r})"
                for err in exc.errors()
            )
            raise ConfigError(f"invalid {cls.__name__}: {problems}") from None


class TokenizerConfig(_Frozen):
    """How (query, passage) pairs become token ids."""

    max_length: int = Field(256, ge=8, le=8192, description="tokens per pair, special tokens included")
    max_query_share: float = Field(
        0.25, gt=0.0, lt=1.0, description="the query is capped at this share of max_length"
    )

    def served_by(self, model_max_length: int, model: str | Path) -> TokenizerConfig:
        """These settings for a model of `model_max_length` tokens (its export manifest's max_length):
        max_length left at its default is capped at the model's; one set beyond it is a ConfigError."""
        if self.max_length <= model_max_length:
            return self
        if "max_length" in self.model_fields_set:
            raise ConfigError(
                f"tokenizer.max_length {self.max_length} exceeds the model's max_length {model_max_length} "
                f"({model})"
            )
        return self.model_copy(update={"max_length": int(model_max_length)})


class BatchingConfig(_Frozen):
    """Length bucketing: sort by true token length, cut by a padded-token budget."""

    bucketing: bool = True
    max_batch_tokens: int = Field(8192, ge=8, description="longest_padded × rows ≤ this")
    max_batch_rows: int = Field(128, ge=1)
    pad_multiple: int | None = Field(None, ge=1, description="None: 8 on CUDA (tensor cores), 1 on CPU")
    cuts: Literal["auto", "greedy", "cheapest"] = Field(
        "auto",
        description="greedy: fill each batch to the budget; cheapest: minimise padded tokens + "
        "batch_cost_tokens per batch; auto: cheapest on CPU, greedy on CUDA",
    )
    batch_cost_tokens: int = Field(64, ge=0, description="what one more forward call costs, in tokens")


class EngineConfig(_Frozen):
    """The scoring engine: which exported model, which precision and provider, how many threads."""

    model_dir: Path
    precision: Precision = "auto"
    provider: Provider = "auto"
    intra_op_threads: int = Field(0, ge=0, description="0 = onnxruntime's default (all cores)")
    tokenizer: TokenizerConfig = TokenizerConfig()
    batching: BatchingConfig = BatchingConfig()

    @model_validator(mode="after")
    def _fp16_needs_cuda(self):
        if self.precision == "fp16" and self.provider == "cpu":
            # fp16 on the CPU provider runs but is slow and inexact; ask explicitly for fp32/int8 there.
            raise ValueError("precision 'fp16' is for the CUDA provider; use 'fp32' or 'int8' on cpu")
        return self


class ColumnsConfig(_Frozen):
    query_id: str = "query_id"
    query: str = "query"
    candidates: str = "candidates"
    doc_id: str = "doc_id"
    text: str = "text"
    title: str = "title"


class RecallConfig(_Frozen):
    """Query-time search parameters of an approximate index; None keeps the index manifest's default."""

    nprobe: int | None = Field(None, ge=1, description="IVF lists probed per query")
    ef_search: int | None = Field(None, ge=1, description="HNSW candidate list size")
    shard_stages: bool = Field(
        False,
        description="sharded index: search each shard in its own actor pool (placed by the shard's memory) "
        "instead of every recall actor searching all shards — for indexes bigger than one node",
    )


class ResourcesConfig(_Frozen):
    """Placement, read only by `rerank_engine.pipeline.build_pipeline`.

    The defaults fit a 2-core machine: the actors reserve 1 CPU in all, so Ray Data's read tasks (its
    ListFiles step asks for a whole CPU) and write tasks can always run. Threads are set separately.
    """

    recall_actors: int = Field(1, ge=1)
    recall_cpus: float = Field(0.25, gt=0)
    recall_batch_rows: int = Field(64, ge=1)
    shard_actors: int = Field(1, ge=1, description="actors per shard (recall.shard_stages)")
    shard_cpus: float = Field(0.05, gt=0, description="CPU share of each shard-search actor")
    tokenize_actors: int = Field(1, ge=1)
    tokenize_cpus: float = Field(0.25, gt=0)
    rerank_actors: int = Field(1, ge=1)
    rerank_cpus: float = Field(0.5, gt=0)
    rerank_gpus: Literal["auto", 0, 1] = "auto"
    rerank_batch_rows: int = Field(32, ge=1, description="queries per rerank call (× k_recall pairs)")
    rerank_threads: int = Field(2, ge=0, description="onnxruntime intra-op threads per rerank actor")
    io_cpus: float = Field(0.1, gt=0, description="CPU share of read / finalize / write tasks")
    block_rows: int = Field(64, ge=1, description="input is cut into blocks of about this many queries")


class JobConfig(_Frozen):
    """Everything `jobs.rerank` needs besides the paths; YAML + CLI overrides."""

    model: str = "models/insurance-minilm-l6-ce"  # HF model dir or hub id (exported, cached) or export dir
    bi_encoder: str | None = None  # None = the bundled all-MiniLM-L6-v2
    k_recall: int = Field(20, ge=1)
    k_rerank: int = Field(5, ge=1)
    threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="None: model's threshold.json, else 0.5"
    )
    fusion: Literal["auto", "on", "off"] = Field(
        "auto",
        description="score = sigmoid of the reranker's logit fused with the recall cosine (the model's "
        "fusion.json): auto where the file exists and fits the index's bi-encoder; on: required; off: never",
    )
    precision: Precision = "auto"
    provider: Provider = "auto"
    tokenizer: TokenizerConfig = TokenizerConfig()
    batching: BatchingConfig = BatchingConfig()
    recall: RecallConfig = RecallConfig()
    columns: ColumnsConfig = ColumnsConfig()
    resources: ResourcesConfig = ResourcesConfig()
    exploded: bool = False
    dedupe_queries: bool = Field(
        True, description="score each distinct normalised query once and fan out (off for cased models)"
    )
    score_cache: str | None = Field(
        None, description="folder of scores from earlier runs (shared by all nodes); None: no cache"
    )
    timeout_s: float = Field(
        3600, gt=0, le=31_536_000, description="the job fails instead of hanging past this (at most a year)"
    )

    @model_validator(mode="after")
    def _k(self):
        if self.k_rerank > self.k_recall:
            raise ValueError(f"k_rerank ({self.k_rerank}) cannot exceed k_recall ({self.k_recall})")
        return self


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file holding a mapping of config keys; ConfigError naming the file otherwise."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, found {type(values).__name__}")
    bad = [k for k in values if not isinstance(k, str)]
    if bad:  # `1:` or `true:` (nested ones are named by validation)
        raise ConfigError(f"{path}: config keys are names; found the key {bad[0]!r}")
    return values


def apply_overrides(values: dict, overrides: dict | None) -> dict:
    """Set dotted keys ({"resources.rerank_actors": 2}) in a nested mapping, in place; returns it.
    ConfigError naming the key where a parent holds a value that is not a mapping."""
    for dotted, value in (overrides or {}).items():
        node = values
        *parents, leaf = dotted.split(".")
        for depth, key in enumerate(parents):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                parent = ".".join(parents[: depth + 1])
                raise ConfigError(
                    f"cannot set {dotted}: {parent} holds {node!r}, not a mapping of keys "
                    f"(set {parent} itself, or give it a mapping)"
                )
        node[leaf] = value
    return values


def load_job_config(path: str | Path | None, overrides: dict | None = None) -> JobConfig:
    """YAML file (may be None) + dotted overrides like {"resources.rerank_actors": 2}."""
    values = read_yaml_mapping(path) if path is not None else {}
    return JobConfig.build(**apply_overrides(values, overrides))
