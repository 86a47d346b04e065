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
    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def build(cls, **values):
        """Validate `values`; raise ConfigError naming each bad key and what was expected."""
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<config>'}: {err['msg']} (got {err.get('input')!r})"
                for err in exc.errors()
            )
            raise ConfigError(f"invalid {cls.__name__}: {problems}") from None


class TokenizerConfig(_Frozen):
    """How (query, passage) pairs become token ids."""

    max_length: int = Field(256, ge=8, le=8192, description="tokens per pair, special tokens included")
    max_query_share: float = Field(
        0.25, gt=0.0, lt=1.0, description="the query is capped at this share of max_length"
    )


class BatchingConfig(_Frozen):
    """Length bucketing: sort by true token length, cut by a padded-token budget."""

    bucketing: bool = True
    max_batch_tokens: int = Field(8192, ge=8, description="longest_padded × rows ≤ this")
    max_batch_rows: int = Field(128, ge=1)
    pad_multiple: int = Field(8, ge=1)


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
