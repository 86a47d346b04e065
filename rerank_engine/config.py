"""Frozen, keyword-only configuration for each component (pydantic), composed into job configs.

Light module: imports no ray, torch, onnxruntime or faiss.
"""

from __future__ import annotations

import difflib
import types
import typing
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
                f"(got {err.get('input')!r}){_nearest_key(cls, err)}"
                for err in exc.errors()
            )
            raise ConfigError(f"invalid {cls.__name__}: {problems}") from None


class TokenizerConfig(_Frozen):
    """How (query, passage) pairs become token ids."""

    max_length: int = Field(256, ge=8, le=8192, description="tokens per pair, special tokens included")
    max_query_share: float = Field(
        0.25, gt=0.0, lt=1.0, description="the query is capped at this share of max_length"
    )
    instruction: str | None = Field(
        None,
        min_length=1,
        description="an LLM reranker's instruction (Qwen3-Reranker's <Instruct>); None: the model's "
        "default; an error for a model without a prompt",
    )
    long_passages: Literal["truncate", "chunk_max"] = Field(
        "truncate",
        description="a passage longer than what its query leaves of max_length: truncate: scored by its "
        "first window only; chunk_max: cut into windows, each scored, the passage scored by its best "
        "window's logit (MaxP); a cross-encoder's setting (an LLM reranker refuses chunk_max)",
    )
    stride: int | None = Field(
        None,
        ge=1,
        description="chunk_max: tokens from one window's start to the next (overlap = window − stride; cut "
        "to the window); null: half the window",
    )

    @model_validator(mode="after")
    def _stride_needs_windows(self):
        if self.stride is not None and self.long_passages != "chunk_max":
            raise ValueError("stride is the step between windows: set it with long_passages 'chunk_max'")
        return self

    def scoring_dump(self, **kwargs) -> dict:
        """`model_dump(**kwargs)` for the keys of caches of scores (the job's score cache, distillation's
        teacher logits): the long-passage keys are left out where they change nothing (truncate), so the
        keys of caches written before they existed stay the same."""
        exclude = {"long_passages", "stride"} if self.long_passages == "truncate" else set()
        return self.model_dump(exclude=exclude, **kwargs)

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

    bucketing: bool = Field(True, description="sort pairs by token length and cut by max_batch_tokens")
    max_batch_tokens: int = Field(8192, ge=8, description="longest_padded × rows ≤ this")
    max_batch_rows: int = Field(128, ge=1, description="pairs per forward call at most")
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
    """Column names of the query log and the corpus."""

    query_id: str = Field("query_id", description="query log: the query's id (string or integer)")
    query: str = Field("query", description="query log: the query text")
    candidates: str = Field("candidates", description="query log: logged candidate doc ids, if any")
    doc_id: str = Field("doc_id", description="corpus: the passage's id")
    text: str = Field("text", description="corpus: the passage text")
    title: str = Field("title", description="corpus: an optional title, put before the text")


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
    """Placement, read only by `rerank_engine.job.pipeline.build_pipeline`.

    The defaults fit a 2-core machine: the actors reserve 1 CPU in all, spread over the nodes Ray
    finds; the read, finalize and write tasks take `io_cpus` each, so no step waits for a whole free
    CPU, and a cluster of 1-CPU nodes runs too. Threads are set separately.
    """

    recall_actors: int = Field(1, ge=1, description="bi-encoder + FAISS actors")
    recall_cpus: float = Field(0.25, gt=0, description="CPU share reserved by each recall actor")
    recall_batch_rows: int = Field(64, ge=1, description="queries per recall call")
    shard_actors: int = Field(1, ge=1, description="actors per shard (recall.shard_stages)")
    shard_cpus: float = Field(0.05, gt=0, description="CPU share of each shard-search actor")
    tokenize_actors: int = Field(1, ge=1, description="actors joining passages and tokenizing pairs")
    tokenize_cpus: float = Field(0.25, gt=0, description="CPU share reserved by each tokenize actor")
    rerank_actors: int = Field(1, ge=1, description="cross-encoder actors")
    rerank_cpus: float = Field(0.5, gt=0, description="CPU share reserved by each rerank actor")
    rerank_gpus: Literal["auto", 0, 1] = Field(
        "auto", description="GPUs per rerank actor; auto: 1 where the cluster has a GPU, else 0"
    )
    rerank_batch_rows: int = Field(32, ge=1, description="queries per rerank call (× k_recall pairs)")
    rerank_threads: int = Field(2, ge=0, description="onnxruntime intra-op threads per rerank actor")
    io_cpus: float = Field(0.1, gt=0, description="CPU share of read / finalize / write tasks")
    fit_to_nodes: bool = Field(
        True,
        description="scale the actors' CPU shares down where the nodes present at start cannot hold them "
        "beside the read / write tasks; false on an autoscaling cluster, whose nodes come on demand",
    )
    block_rows: int = Field(64, ge=1, description="input is cut into blocks of about this many queries")
    fanout_block_rows: int = Field(
        50_000,
        ge=1,
        description="with dedupe_queries, the input is read again in blocks of about this many rows to "
        "receive their distinct query's results and be written (at most one output file per block)",
    )


class EmbedConfig(_Frozen):
    """The index build's corpus embedding on Ray (`job.pipeline.embedding_pipeline`)."""

    actors: int = Field(1, ge=1, description="bi-encoder actors (a GPU each where the cluster has one)")
    cpus: float = Field(1.0, gt=0, description="CPU share of each actor, fitted to the nodes found")
    threads: int = Field(2, ge=1, description="torch threads per actor")
    batch_rows: int = Field(256, ge=1, description="passages per bi-encoder call")
    block_rows: int = Field(512, ge=1, description="corpus rows per read block")
    io_cpus: float = Field(0.1, gt=0, description="CPU share of the read and write tasks")


class JobConfig(_Frozen):
    """Everything `jobs.rerank` needs besides the paths; YAML + CLI overrides."""

    model: str = Field(
        "models/insurance-minilm-l6-ce",
        description="the reranker: a Hugging Face model folder or hub id (exported to ONNX and cached), "
        "or an export folder",
    )
    bi_encoder: str | None = Field(
        None, description="recall model folder; None: the bundled all-MiniLM-L6-v2"
    )
    k_recall: int = Field(20, ge=1, description="candidates per query from recall, all reranked")
    k_rerank: int = Field(5, ge=1, description="passages kept per query at most (those ≥ threshold)")
    threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="keep a passage when its score is ≥ this; None: the model's calibrated threshold "
        "(fusion.json or threshold.json), else 0.5",
    )
    fusion: Literal["auto", "on", "off"] = Field(
        "auto",
        description="score = sigmoid of the reranker's logit fused with the recall cosine (the model's "
        "fusion.json): auto where the file exists and fits the index's bi-encoder; on: required; off: never",
    )
    precision: Precision = Field("auto", description="ONNX variant scored; auto: fp16 on CUDA, fp32 on CPU")
    provider: Provider = Field("auto", description="onnxruntime provider; auto: CUDA where present, else CPU")
    tokenizer: TokenizerConfig = TokenizerConfig()
    batching: BatchingConfig = BatchingConfig()
    recall: RecallConfig = RecallConfig()
    columns: ColumnsConfig = ColumnsConfig()
    resources: ResourcesConfig = ResourcesConfig()
    exploded: bool = Field(False, description="one output row per kept (query, passage) instead of a list")
    dedupe_queries: bool = Field(
        True, description="score each distinct query (as the models' tokenizers read it) once and fan out"
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

    def engine(self, model_source: str | Path, threads: int = 0) -> EngineConfig:
        """The rerank engine of this job: its precision, provider, tokenizer and batching. `model_source`
        is what the rerank stage exports on its own node (an export folder, a Hugging Face folder or a
        hub id) and loads from there."""
        return EngineConfig.build(
            model_dir=model_source,
            precision=self.precision,
            provider=self.provider,
            intra_op_threads=threads,
            tokenizer=self.tokenizer,
            batching=self.batching,
        )


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


# -- unknown keys and the described defaults ------------------------------------------------------------


def _nested(annotation) -> type[_Frozen] | None:
    """The config class a field holds (`JobConfig`, or `JobConfig | None`), else None."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, _Frozen):
            return candidate
    return None


def _nearest_key(cls: type[_Frozen], err: dict) -> str:
    """For an unknown key: "; did you mean '<nearest valid key>'?" (difflib), else the valid keys."""
    if err.get("type") != "extra_forbidden" or not err.get("loc"):
        return ""
    *parents, leaf = (str(p) for p in err["loc"])
    model = cls
    for part in parents:
        field = model.model_fields.get(part)
        model = _nested(field.annotation) if field is not None else None
        if model is None:
            return ""
    keys = list(model.model_fields)
    near = difflib.get_close_matches(leaf, keys, n=1, cutoff=0.6)
    if near:
        return f"; did you mean {'.'.join([*parents, near[0]])!r}?"
    return f"; valid keys{' under ' + '.'.join(parents) if parents else ''}: {', '.join(keys)}"


def _kind(annotation, metadata) -> str:
    """What a field takes, for the described defaults: "int ≥ 1", "auto | fp32 | fp16 | int8", ..."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        text = " | ".join(str(a) for a in args)
    elif typing.get_origin(annotation) in (typing.Union, types.UnionType):
        text = " or ".join("null" if a is type(None) else _kind(a, ()) for a in args)
    else:
        text = getattr(annotation, "__name__", str(annotation))
    bounds = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    for rule in metadata:
        for attr, sign in bounds.items():
            if getattr(rule, attr, None) is not None:
                text += f", {sign} {getattr(rule, attr)}"
    return text


def _describe(model: type[_Frozen], values: dict, indent: int, lines: list[str]) -> None:
    import textwrap

    import yaml

    pad = " " * indent
    for name, field in model.model_fields.items():
        if not indent:
            lines.append("")
        nested = _nested(field.annotation)
        if nested is not None and isinstance(values.get(name), dict):
            doc = field.description or (nested.__doc__ or "").strip().splitlines()[0]
            lines += [f"{pad}# {line}" for line in textwrap.wrap(doc, 100 - indent)]
            lines.append(f"{pad}{name}:")
            _describe(nested, values[name], indent + 2, lines)
            continue
        required = " (required)" if field.is_required() else ""
        comment = f"{field.description}{required} [{_kind(field.annotation, field.metadata)}]"
        lines += [f"{pad}# {line}" for line in textwrap.wrap(comment, 100 - indent)]
        text = yaml.safe_dump(
            {name: values.get(name)}, default_flow_style=True, width=10_000, sort_keys=False
        )
        lines.append(f"{pad}{text.strip()[1:-1]}")  # "{k: v}" → "k: v"


def describe_defaults(cls: type[_Frozen]) -> str:
    """`cls`'s defaults as YAML, each key under a comment with its description and what it takes, read
    from the class itself so it cannot drift. Loading the text back gives `cls()`'s values."""
    from pydantic_core import to_jsonable_python

    doc = (cls.__doc__ or cls.__name__).strip().splitlines()[0]
    lines = [
        f"# {cls.__name__}: {doc}",
        "# The defaults. Change a key in a copy of this file (--config FILE) or with --set KEY=VALUE",
        "# (nested keys dotted: --set resources.rerank_actors=2).",
    ]
    defaults = {
        name: None if field.is_required() else field.get_default(call_default_factory=True)
        for name, field in cls.model_fields.items()
    }
    _describe(cls, to_jsonable_python(defaults), 0, lines)
    return "\n".join(lines) + "\n"
