"""Parity on a real encoder: the bundled all-MiniLM-L6-v2 under a seeded random one-logit head, exported.

Every serving path is held against the PyTorch reference: the ONNX fp32 engine (tolerance 1e-4 on
probabilities and logits), sentence-transformers' CrossEncoder on the same folder (1e-4), and the int8
variant by ranking agreement (mean top-5 overlap with fp32 ≥ 0.6 over the probe queries).
"""

from __future__ import annotations

import numpy as np
import pytest

from rerank_engine.config import EngineConfig
from rerank_engine.probe_pairs import PASSAGES, QUERIES, probe_groups
from rerank_engine.serving.agreement import spearman, top_k_overlap
from rerank_engine.serving.engine import CrossEncoderEngine
from rerank_engine.serving.manifest import read_manifest

pytestmark = pytest.mark.slow

# 20 short real insurance pairs: each query with its own answer and two other passages.
PAIRS = [(QUERIES[i], PASSAGES[i + 8 * j]) for j in range(3) for i in range(len(QUERIES))][:20]


@pytest.fixture(scope="module")
def fp32_engine(minilm_export):
    return CrossEncoderEngine(EngineConfig.build(model_dir=minilm_export, precision="fp32"))


def test_fp32_engine_matches_torch(fp32_engine, minilm_ce_dir, reference):
    from transformers import AutoModelForSequenceClassification

    queries, passages = [q for q, _ in PAIRS], [p for _, p in PAIRS]
    result = fp32_engine.score(queries, passages)
    model = AutoModelForSequenceClassification.from_pretrained(str(minilm_ce_dir)).eval()
    logits = reference(model, fp32_engine.tokenize(queries, passages))[:, 0]
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    d_logit = float(np.max(np.abs(result.logits - logits)))
    d_prob = float(np.max(np.abs(result.scores - probs)))
    print(
        f"\nMiniLM fp32 ONNX vs PyTorch over {len(PAIRS)} pairs: max |Δlogit| {d_logit:.3g}, "
        f"max |Δprob| {d_prob:.3g}"
    )
    assert d_logit <= 1e-4
    assert d_prob <= 1e-4
    assert np.ptp(result.scores) > 1e-3  # the seeded head separates the pairs at all


def test_fp32_engine_matches_sentence_transformers(fp32_engine, minilm_ce_dir):
    import torch
    from sentence_transformers import CrossEncoder

    cross_encoder = CrossEncoder(str(minilm_ce_dir), num_labels=1, device="cpu")
    expected = cross_encoder.predict(
        PAIRS, activation_fn=torch.nn.Sigmoid(), batch_size=8, convert_to_numpy=True
    )
    got = fp32_engine.score([q for q, _ in PAIRS], [p for _, p in PAIRS]).scores
    diff = float(np.max(np.abs(got - expected)))
    print(f"\nMiniLM fp32 ONNX vs sentence-transformers CrossEncoder: max |Δprob| {diff:.3g}")
    assert expected.shape == (len(PAIRS),)
    assert diff <= 1e-4


def test_int8_ranks_like_fp32(minilm_export, fp32_engine):
    int8 = CrossEncoderEngine(EngineConfig.build(model_dir=minilm_export, precision="int8"))
    assert int8.model_path.name == "model_int8.onnx"
    overlaps, rhos, worst = [], [], 0.0
    for query, passages in probe_groups():
        a = fp32_engine.score([query] * len(passages), passages).scores
        b = int8.score([query] * len(passages), passages).scores
        overlaps.append(top_k_overlap(a, b, 5))
        rhos.append(spearman(a, b))
        worst = max(worst, float(np.max(np.abs(a - b))))
    mean_overlap = float(np.mean(overlaps))
    print(
        f"\nMiniLM int8 vs fp32 over {len(overlaps)} probe queries: top-5 overlap mean {mean_overlap:.3f} "
        f"(min {min(overlaps):.2f}, per query {overlaps}), Spearman mean {np.mean(rhos):.3f}, "
        f"max |Δprob| {worst:.4f}"
    )
    recorded = read_manifest(minilm_export).variants["int8"].validation
    print(f"manifest's int8 validation (vs PyTorch fp32): {recorded}")
    assert mean_overlap >= 0.6
    assert min(overlaps) >= 0.6
    assert recorded["top5_overlap_mean"] >= 0.6
