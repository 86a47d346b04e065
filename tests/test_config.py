"""Configs are frozen, keyword-only and validated when built; errors name the key at fault."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from rerank_engine.config import BatchingConfig, EngineConfig, TokenizerConfig
from rerank_engine.errors import ConfigError


def test_defaults_and_coercion():
    cfg = EngineConfig.build(model_dir="some/dir", batching={"max_batch_tokens": 1024})
    assert cfg.model_dir == Path("some/dir")
    assert cfg.batching.max_batch_tokens == 1024
    assert cfg.batching.bucketing is True
    assert cfg.precision == "auto" and cfg.provider == "auto"
    assert cfg.tokenizer == TokenizerConfig()


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"batching": {"max_batch_tokens": 0}}, "batching.max_batch_tokens"),
        ({"batching": {"max_batch_rows": 0}}, "batching.max_batch_rows"),
        ({"precision": "fp64"}, "precision"),
        ({"provider": "tpu"}, "provider"),
        ({"intra_op_threads": -1}, "intra_op_threads"),
        ({"tokenizer": {"max_length": 4}}, "tokenizer.max_length"),
        ({"tokenizer": {"max_query_share": 1.0}}, "tokenizer.max_query_share"),
        ({"max_tokens": 100}, "max_tokens"),
        ({"batching": {"bucket": False}}, "batching.bucket"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(values, key):
    with pytest.raises(ConfigError) as info:
        EngineConfig.build(model_dir="m", **values)
    message = str(info.value)
    assert message.startswith("invalid EngineConfig")
    assert f"{key}:" in message
    assert isinstance(info.value, ValueError)


def test_missing_model_dir_is_named():
    with pytest.raises(ConfigError, match="model_dir"):
        EngineConfig.build()


def test_component_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"max_batch_tokens: .*\(got 0\)"):
        BatchingConfig.build(max_batch_tokens=0)


def test_fp16_on_cpu_is_rejected():
    with pytest.raises(ConfigError, match="fp16"):
        EngineConfig.build(model_dir="m", precision="fp16", provider="cpu")
    assert EngineConfig.build(model_dir="m", precision="fp16", provider="cuda").precision == "fp16"
    assert EngineConfig.build(model_dir="m", precision="int8", provider="cpu").precision == "int8"


def test_frozen_and_keyword_only():
    cfg = EngineConfig.build(model_dir="m")
    with pytest.raises(pydantic.ValidationError):
        cfg.precision = "fp32"
    with pytest.raises(TypeError):
        BatchingConfig(True)
