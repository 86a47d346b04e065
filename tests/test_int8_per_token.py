"""Per-token int8 (`benchmarks/int8_per_token.py`) on the tiny random BERT: the graph it writes, its
scores against fp32, a pair's score independent of its batch companions, and the calibration maxima."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from benchmarks.int8_per_token import channel_absmax, quantize_per_token, weight_matmuls

N_LAYERS = 2  # tests/conftest.py: _bert_config


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _feed(rows: int, seq: int, seed: int, lengths=None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 20000, size=(rows, seq), dtype=np.int64)
    lengths = lengths if lengths is not None else rng.integers(seq // 2, seq + 1, size=rows)
    mask = (np.arange(seq)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    types = np.zeros_like(ids)
    types[:, seq // 3 :] = 1
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types * mask}


def _logits(session, feed) -> np.ndarray:
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feed.items() if k in names})[0][:, 0]


def test_every_weight_matmul_is_quantized_and_qkv_share_one_quantization(tiny_export, tmp_path):
    import onnx

    src = tiny_export / "model.onnx"
    out = tmp_path / "per_token.onnx"
    assert quantize_per_token(src, out) == 6 * N_LAYERS  # Q, K, V, attention output, FFN in and out
    ops = collections.Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    assert ops["MatMulIntegerToFloat"] == 6 * N_LAYERS
    assert ops["QuantizeLinear"] == 4 * N_LAYERS  # Q, K and V read one tensor
    assert weight_matmuls(onnx.load(str(out))) == []  # no fp32 weight MatMul left


def test_scores_nearer_fp32_than_dynamic_int8_and_independent_of_batch_companions(tiny_export, tmp_path):
    src = tiny_export / "model.onnx"
    out = tmp_path / "per_token.onnx"
    quantize_per_token(src, out, weight_bits=7)
    fp32, int8, dynamic = _session(src), _session(out), _session(tiny_export / "model_int8.onnx")

    feed = _feed(6, 40, seed=0)
    ref, got, dyn = _logits(fp32, feed), _logits(int8, feed), _logits(dynamic, feed)
    assert 0 < np.abs(got - ref).max() < 0.1 * np.abs(dyn - ref).max()  # quantized, and much closer

    # Row 0 again, with other pairs beside it (same padded length), and alone: its per-token score stays
    # the same; onnxruntime's dynamic int8 (one activation scale per batch tensor) moves.
    other = _feed(6, 40, seed=1)
    for key in feed:
        other[key][0] = feed[key][0]
    alone = {k: v[:1] for k, v in feed.items()}
    assert _logits(int8, other)[0] == got[0] and _logits(int8, alone)[0] == got[0]
    assert abs(_logits(dynamic, other)[0] - dyn[0]) > 1e-5


def test_channel_maxima_match_the_torch_model(tiny_export, tiny_torch_model):
    import torch

    feeds = [_feed(4, 24, seed=s) for s in range(3)]
    name = "/bert/embeddings/LayerNorm/LayerNormalization_output_0"
    got = channel_absmax(tiny_export / "model.onnx", feeds, [name])[name]
    with torch.inference_mode():
        hidden = [
            tiny_torch_model.bert.embeddings(
                input_ids=torch.from_numpy(f["input_ids"]),
                token_type_ids=torch.from_numpy(f["token_type_ids"]),
            )
            for f in feeds
        ]
    want = torch.cat([h.reshape(-1, h.shape[-1]) for h in hidden]).abs().amax(dim=0).numpy()
    assert got.shape == (32,)  # hidden size
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    with pytest.raises(ValueError, match="no calibration feeds"):
        channel_absmax(tiny_export / "model.onnx", [], [name])


def test_smoothing_keeps_the_scores_near_fp32(tiny_export, tmp_path):
    import onnx

    src = tiny_export / "model.onnx"
    out = tmp_path / "smoothed.onnx"
    quantize_per_token(src, out, weight_bits=7, calibration=[_feed(8, 32, seed=s) for s in range(2)])
    graph = onnx.load(str(out)).graph
    assert sum(i.name.endswith("/unsmooth") for i in graph.initializer) == 4 * N_LAYERS

    feed = _feed(6, 40, seed=2)
    ref, got = _logits(_session(src), feed), _logits(_session(out), feed)
    dyn = _logits(_session(tiny_export / "model_int8.onnx"), feed)
    assert 0 < np.abs(got - ref).max() < 0.1 * np.abs(dyn - ref).max()

    with pytest.raises(ValueError, match="weight_bits"):
        quantize_per_token(src, out, weight_bits=4)
