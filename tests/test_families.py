"""The encoder families the export serves (export_conversion.SUPPORTED_MODEL_TYPES), each as a tiny random
model with a tokenizer of its own kind trained offline with the `tokenizers` library (conftest.py):

- xlm-roberta (bge-reranker-v2-m3, bge-reranker-base): Unigram with SentencePiece's ▁ pre-tokenizer,
  `<s> q </s></s> p </s>`, pad id 1, learned positions that start after the padding index;
- deberta-v2 (mxbai-rerank-*-v1, a DeBERTa-v3): Unigram, `[CLS] q [SEP] p [SEP]`, no token types;
- modernbert (gte-reranker-modernbert-base): byte-level BPE behind a plain PreTrainedTokenizerFast, whose
  pair template lives only in tokenizer.json, 8,192 positions;
- electra (ms-marco-electra-base): WordPiece (the bundled vocabulary), token types;
- bert with two logits (softmax[:, 1] is the relevance).

For each: our PairTokenizer's pair ids equal AutoTokenizer(query, passage) with the same truncation, the
real ONNX export agrees with PyTorch at several shapes with padded rows, the score scale is the family's,
and max_length comes from the model, capped by our configured default.
"""

from __future__ import annotations

import numpy as np
import pytest

from rerank_engine.config import EngineConfig, TokenizerConfig
from rerank_engine.probe_pairs import PASSAGES, QUERIES
from rerank_engine.serving.engine import CrossEncoderEngine, sigmoid
from rerank_engine.serving.manifest import read_manifest
from rerank_engine.serving.tokenization import PairTokenizer

pytestmark = pytest.mark.slow

FAMILIES = ["xlm-roberta", "deberta-v2", "modernbert", "electra", "bert-2"]
# the max_length each export must report: from the model's positions and its tokenizer's limit
EXPECTED_MAX_LENGTH = {
    "xlm-roberta": 512,
    "deberta-v2": 512,
    "modernbert": 8192,
    "electra": 512,
    "bert-2": 512,
}


def _words(rng, n: int) -> str:
    words = " ".join(PASSAGES).split()
    return " ".join(rng.choice(words, size=n).tolist())


@pytest.mark.parametrize("family", FAMILIES)
def test_pair_ids_equal_autotokenizer_truncation_included(family, family_model):
    from transformers import AutoTokenizer

    src = family_model(family)
    auto = AutoTokenizer.from_pretrained(str(src))
    config = TokenizerConfig(max_length=48)  # the query is capped at 12 tokens
    ours = PairTokenizer(src, config)
    n_special = auto.num_special_tokens_to_add(pair=True)
    assert n_special == (4 if family == "xlm-roberta" else 3)
    wants_types = "token_type_ids" in auto.model_input_names

    def expect(q, p, **kw):
        enc = auto(q, p, **kw)
        return enc["input_ids"], enc.get("token_type_ids")

    def check(got, i, ids, types):
        assert got.input_ids[i].tolist() == ids, (family, i)
        if wants_types:
            assert got.token_type_ids[i].tolist() == types, (family, i)
        assert got.lengths[i] == len(ids)

    rng = np.random.default_rng(1)
    # short queries (under the cap), passages short and long: the passage is cut (only_second)
    queries = [" ".join(QUERIES[i % 8].split()[:3]) for i in range(12)]
    passages = [_words(rng, n) for n in (1, 3, 8, 20, 40, 80, 120, 5, 60, 200, 2, 33)]
    assert all(len(auto(q, add_special_tokens=False)["input_ids"]) <= ours.query_cap for q in queries)
    got = ours(queries, passages)
    cut = 0
    for i, (q, p) in enumerate(zip(queries, passages, strict=True)):
        ids, types = expect(q, p, truncation="only_second", max_length=48)
        check(got, i, ids, types)
        cut += len(auto(q, p)["input_ids"]) > 48
    assert cut >= 4 and got.lengths.max() == 48  # truncation was exercised

    # long queries with short passages: the query is cut at its cap (only_first, to cap + passage)
    queries = [_words(rng, n) for n in (20, 40, 15)]
    passages = ["flood cover", "a waiting period", "rider"]
    got = ours(queries, passages)
    for i, (q, p) in enumerate(zip(queries, passages, strict=True)):
        n_p = len(auto(p, add_special_tokens=False)["input_ids"])
        assert len(auto(q, add_special_tokens=False)["input_ids"]) > ours.query_cap
        ids, types = expect(q, p, truncation="only_first", max_length=ours.query_cap + n_special + n_p)
        check(got, i, ids, types)


def _torch_logits(model, pairs, pad_id: int, inputs: list[str]) -> np.ndarray:
    """PyTorch on the same pairs, every row padded to the longest with `pad_id`; token types only where
    the graph takes them (ModernBERT's forward has no such argument)."""
    import torch

    from rerank_engine.serving.batching import pad_rows

    length = int(pairs.lengths.max())
    ids, mask = pad_rows(pairs.input_ids, length, pad_id)
    feed = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if "token_type_ids" in inputs:
        feed["token_type_ids"] = torch.from_numpy(pad_rows(pairs.token_type_ids, length, 0)[0])
    with torch.inference_mode():
        return model(**feed).logits.float().numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_export_matches_torch_with_padded_rows(family, family_dirs, random_pairs):
    import torch
    from transformers import AutoModelForSequenceClassification

    from rerank_engine.serving.export_contract import CONTRACT
    from rerank_engine.serving.export_validation import validate_fp32

    src, out = family_dirs(family)
    manifest = read_manifest(out)
    model = AutoModelForSequenceClassification.from_pretrained(str(src)).eval()
    num_labels = 2 if family == "bert-2" else 1
    assert manifest.source["model_type"] == family.removesuffix("-2")
    assert manifest.num_labels == num_labels
    assert manifest.activation == ("softmax" if num_labels == 2 else "sigmoid")
    assert ("token_type_ids" in manifest.inputs) == (family in ("electra", "bert-2"))
    # the export's own check (random ids at CONTRACT.shapes, rows padded), rerun and reported
    report = validate_fp32(model, out / "model.onnx", manifest.inputs)
    assert report["max_abs_diff_logit"] <= CONTRACT.fp32_atol
    assert len(report["shapes"]) >= 5

    # the engine on real pairs of this family's tokenizer, in length-bucketed batches padded with the
    # family's pad id, against PyTorch with every row padded to the longest
    engine = CrossEncoderEngine(EngineConfig.build(model_dir=out, tokenizer={"max_length": 96}))
    queries, passages = random_pairs(40, seed=5, max_words=90)
    pairs = engine.tokenize(queries, passages)
    assert len(set(pairs.lengths.tolist())) > 10 and pairs.lengths.max() == 96  # ragged, some cut
    result = engine.score_tokenized(pairs)
    assert result.padding_efficiency < 1.0  # rows were padded
    assert engine.pad_id == model.config.pad_token_id
    logits = _torch_logits(model, pairs, engine.pad_id, manifest.inputs)
    assert logits.shape == (40, num_labels)
    spread = float(np.ptp(logits[:, -1]))
    assert spread > 1e-2, f"logits barely move ({spread:.3g}): the parity check would prove little"
    if num_labels == 1:
        np.testing.assert_allclose(result.logits, logits[:, 0], atol=1e-4)
        np.testing.assert_allclose(
            result.scores, torch.sigmoid(torch.from_numpy(logits[:, 0])).numpy(), atol=1e-5
        )
    else:
        np.testing.assert_allclose(result.logits, logits[:, 1] - logits[:, 0], atol=1e-4)
        softmax = torch.softmax(torch.from_numpy(logits), dim=-1)[:, 1].numpy()
        np.testing.assert_allclose(result.scores, softmax, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_max_length_from_the_model_capped_by_the_configured_default(family, family_dirs):
    _, out = family_dirs(family)
    manifest = read_manifest(out)
    assert manifest.max_length == EXPECTED_MAX_LENGTH[family]
    default = TokenizerConfig().max_length
    engine = CrossEncoderEngine(EngineConfig.build(model_dir=out))
    assert engine.tokenizer.config.max_length == min(default, manifest.max_length)
    long = " ".join(["flood"] * 3000)
    assert engine.tokenize(["query"], [long]).lengths[0] == min(default, manifest.max_length)


def test_a_model_shorter_than_the_default_is_served_at_its_own_length(tmp_path, build_family):
    """An XLM-R with 130 learned positions serves 128 tokens (130 − pad id 1 − 1) when max_length is left
    at its default (256), and refuses a max_length set beyond that."""
    from rerank_engine.errors import ConfigError
    from rerank_engine.serving.exporting import export_model

    src = build_family("xlm-roberta", tmp_path / "src", max_position_embeddings=130)
    out = export_model(src, tmp_path / "out")
    assert read_manifest(out).max_length == 128
    engine = CrossEncoderEngine(EngineConfig.build(model_dir=out))
    long = " ".join(["flood"] * 500)
    assert engine.tokenize(["q"], [long]).lengths[0] == 128
    assert np.isfinite(engine.score(["q"], [long]).scores).all()  # the last position exists
    with pytest.raises(ConfigError, match="exceeds the model's max_length 128"):
        CrossEncoderEngine(EngineConfig.build(model_dir=out, tokenizer={"max_length": 256}))


@pytest.mark.parametrize("activation", ["Sigmoid", "Identity"])
def test_a_sentence_transformers_activation_is_followed(activation, family_dirs, tmp_path, random_pairs):
    """A CrossEncoder saved by sentence-transformers declares the activation its predict() applies:
    Sigmoid → our `score` is what predict returns, Identity → our `logit` is."""
    import torch
    from sentence_transformers import CrossEncoder

    from rerank_engine.serving.exporting import export_model

    src, _ = family_dirs("xlm-roberta")
    st_dir = tmp_path / "st"
    CrossEncoder(str(src), activation_fn=getattr(torch.nn, activation)(), max_length=256).save(str(st_dir))
    out = export_model(st_dir, tmp_path / "out")
    manifest = read_manifest(out)
    assert manifest.declared_activation == activation.lower()
    engine = CrossEncoderEngine(EngineConfig.build(model_dir=out, tokenizer={"max_length": 256}))
    queries, passages = random_pairs(16, seed=2, max_words=25)
    assert engine.tokenize(queries, passages).lengths.max() < 256  # no truncation: theirs cuts otherwise
    predicted = CrossEncoder(str(st_dir)).predict(list(zip(queries, passages, strict=True)), batch_size=4)
    result = engine.score(queries, passages)
    column = result.scores if activation == "Sigmoid" else result.logits
    np.testing.assert_allclose(column, predicted, atol=1e-4)
    if activation == "Identity":
        assert (predicted < 0).any() or (predicted > 1).any()  # really logits, not probabilities
        np.testing.assert_allclose(result.scores, sigmoid(predicted), atol=1e-4)


def test_an_activation_the_engine_cannot_reproduce_is_refused(family_dirs, tmp_path):
    import torch
    from sentence_transformers import CrossEncoder

    from rerank_engine.errors import ModelFormatError
    from rerank_engine.serving.exporting import export_model

    src, _ = family_dirs("electra")
    CrossEncoder(str(src), activation_fn=torch.nn.Tanh()).save(str(tmp_path / "st"))
    with pytest.raises(ModelFormatError, match=r"torch\.nn\.modules\.activation\.Tanh"):
        export_model(tmp_path / "st", tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()
