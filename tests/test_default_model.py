"""The committed default reranker loads, exports (cached) and ranks a known relevant passage first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

MODEL = Path(__file__).resolve().parents[1] / "models" / "insurance-minilm-l6-ce"

pytestmark = pytest.mark.slow


def test_model_card_and_files_are_committed():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert (MODEL / name).is_file(), name
    config = json.loads((MODEL / "config.json").read_text())
    assert len(config["id2label"]) == 1  # one logit: relevance = sigmoid(logit)
    assert (MODEL / "model.safetensors").stat().st_size < 50 * 1024 * 1024  # fp16 stays under ~50 MB


def test_exports_and_scores_relevant_above_irrelevant(tmp_path):
    from rerank_engine.config import EngineConfig
    from rerank_engine.serving.engine import CrossEncoderEngine
    from rerank_engine.serving.exporting import export_model

    out = export_model(MODEL, tmp_path / "export", precisions=["fp32", "int8"])
    query = "What is the waiting period for critical illness insurance?"
    relevant = (
        "Most critical illness policies have a waiting period, usually 30 to 90 days from the start "
        "of the policy, before a diagnosis can be claimed."
    )
    irrelevant = "Comprehensive auto coverage pays for theft, hail and hitting a deer."
    for precision in ("fp32", "int8"):
        engine = CrossEncoderEngine(EngineConfig.build(model_dir=out, precision=precision))
        scores = engine.score([query, query], [relevant, irrelevant]).scores
        assert scores[0] > scores[1] + 0.2, (precision, scores)
