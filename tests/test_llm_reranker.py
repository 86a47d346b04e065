"""Yes/no LLM rerankers (Qwen3-Reranker) served as one-logit sequence classifiers (llm_reranker.py).

A tiny random `Qwen3ForCausalLM` (2 layers, hidden 32; `qwen3_dir` in tests/conftest.py) with a byte-level
BPE tokenizer of Qwen2's kind trained offline (its pre-tokenizer regex, <|im_start|> / <|im_end|> /
<|endoftext|>, <think> tokens). The reference is the model card's: prefix + `<Instruct>: … <Query>: …
<Document>: …` + suffix, padded on the left, softmax([logit("no"), logit("yes")])[yes] of the causal LM at
the last position.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_engine.config import EngineConfig, JobConfig, TokenizerConfig
from rerank_engine.errors import ConfigError, ModelFormatError
from rerank_engine.probe_pairs import PASSAGES, QUERIES
from rerank_engine.serving.engine import CrossEncoderEngine
from rerank_engine.serving.llm_reranker import QWEN3_RERANKER, PromptEncoder
from rerank_engine.serving.manifest import read_manifest
from rerank_engine.serving.tokenization import PairTokenizer

pytestmark = pytest.mark.slow


def _card_ids(model_dir, queries, passages, *, max_length=8192, instruction=None):
    """The model card's inputs: prefix ids + the body tokenized as one text (cut to what the prefix and
    suffix leave) + suffix ids, padded on the left."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    p = QWEN3_RERANKER
    prefix = tokenizer.encode(p.prefix, add_special_tokens=False)
    suffix = tokenizer.encode(p.suffix, add_special_tokens=False)
    bodies = [p.text(instruction or p.instruction, q, d) for q, d in zip(queries, passages, strict=True)]
    inputs = tokenizer(
        bodies,
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=max_length - len(prefix) - len(suffix),
    )
    inputs["input_ids"] = [prefix + ids + suffix for ids in inputs["input_ids"]]
    return tokenizer, tokenizer.pad(inputs, padding=True, return_tensors="pt")


def _card_scores(model_dir, queries, passages, *, instruction=None) -> np.ndarray:
    """softmax([no, yes])[yes] of the causal LM at the last position, the model card's way."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer, inputs = _card_ids(model_dir, queries, passages, instruction=instruction)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    no, yes = tokenizer.convert_tokens_to_ids("no"), tokenizer.convert_tokens_to_ids("yes")
    with torch.inference_mode():
        last = model(**inputs).logits[:, -1, :]
    return torch.softmax(torch.stack([last[:, no], last[:, yes]], dim=1), dim=1)[:, 1].numpy()


def _pairs(n: int = 24, seed: int = 3):
    """Queries (some ending in "?", whose tokens join the next newline in one text) × passages of many
    lengths."""
    rng = np.random.default_rng(seed)
    words = " ".join(PASSAGES).split()
    queries = [QUERIES[i % len(QUERIES)] + ("?" if i % 3 == 0 else "") for i in range(n)]
    passages = [" ".join(rng.choice(words, size=int(rng.integers(1, 40))).tolist()) for _ in range(n)]
    return queries, passages


def test_prompted_pair_ids_equal_the_model_cards(qwen3_export):
    """The tokenize step (PairTokenizer on the export, what the engine and the job's tokenize stage run)
    gives the model card's ids, with the default and with a configured instruction, cut or not."""
    queries, passages = _pairs()
    for instruction, max_length in [(None, 512), ("Find the policy clause that answers the question", 512)]:
        ours = PairTokenizer(qwen3_export, TokenizerConfig(max_length=max_length, instruction=instruction))
        got = ours(queries, passages)
        _, card = _card_ids(qwen3_export, queries, passages, max_length=max_length, instruction=instruction)
        for i in range(len(queries)):
            want = card["input_ids"][i][card["attention_mask"][i].bool()].tolist()
            assert got.input_ids[i].tolist() == want, i
            assert got.lengths[i] == len(want)
        assert len(set(got.lengths.tolist())) > 10  # lengths differ: the padding is exercised below
    # a passage past the window: its tail is cut, as the model card's truncation cuts it
    long = [" ".join(["flood damage claims"] * 200)] * 2
    ours = PairTokenizer(qwen3_export, TokenizerConfig(max_length=200))
    got = ours(queries[:2], long)
    _, card = _card_ids(qwen3_export, queries[:2], long, max_length=200)
    assert got.lengths.tolist() == [200, 200]
    assert [x.tolist() for x in got.input_ids] == card["input_ids"].tolist()
    assert got.input_ids[0][-len(ours._prompted.suffix) :].tolist() == ours._prompted.suffix


@pytest.mark.parametrize("tied", [True, False])
def test_converted_classifier_is_the_causal_lms_yes_no_softmax(tied, tmp_path, build_qwen3):
    """sigmoid(classifier logit) on right-padded rows = softmax([no, yes])[yes] of the causal LM at each
    row's last real token = the model card's left-padded reference, to 1e-5; with tied embeddings (0.6B,
    4B) and an untied LM head (8B)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rerank_engine.serving.batching import pad_rows
    from rerank_engine.serving.llm_reranker import to_sequence_classifier, yes_no_token_ids

    src = build_qwen3(tmp_path / "qwen3", tied=tied)
    lm = AutoModelForCausalLM.from_pretrained(str(src)).eval()
    assert (lm.lm_head.weight is lm.model.embed_tokens.weight) == tied
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    no, yes = yes_no_token_ids(tokenizer, QWEN3_RERANKER, src)
    assert (no, yes) == (tokenizer.convert_tokens_to_ids("no"), tokenizer.convert_tokens_to_ids("yes"))
    classifier = to_sequence_classifier(lm, (no, yes), tokenizer.pad_token_id)
    assert type(classifier).__name__ == "Qwen3ForSequenceClassification"
    torch.testing.assert_close(classifier.score.weight[0], lm.lm_head.weight[yes] - lm.lm_head.weight[no])

    queries, passages = _pairs(12, seed=4)
    rows = PromptEncoder(tokenizer, QWEN3_RERANKER, max_length=512, query_cap=128)(queries, passages)
    lengths = np.array([len(r) for r in rows])
    assert len(set(lengths.tolist())) > 6
    ids, mask = pad_rows(rows, int(lengths.max()), tokenizer.pad_token_id)  # right padding
    feed = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    with torch.inference_mode():
        got = torch.sigmoid(classifier(**feed).logits[:, 0]).numpy()
        lm_logits = lm(**feed).logits[torch.arange(len(rows)), torch.from_numpy(lengths - 1)]
    at_last = torch.softmax(lm_logits[:, [no, yes]], dim=1)[:, 1].numpy()
    np.testing.assert_allclose(got, at_last, atol=1e-5)
    card = _card_scores(src, queries, passages)
    np.testing.assert_allclose(got, card, atol=1e-5)
    assert np.ptp(card) > 1e-3, f"scores barely move ({np.ptp(card):.3g}): the check would prove little"


def test_export_scores_as_the_model_card(qwen3_export, qwen3_dir):
    """The ONNX export (one logit, input_ids + attention_mask, prompt and token ids in the manifest), the
    engine's length-bucketed right-padded batches, against the model card's reference."""
    from transformers import AutoModelForCausalLM

    from rerank_engine.serving.export_contract import CONTRACT
    from rerank_engine.serving.export_validation import validate_fp32
    from rerank_engine.serving.llm_reranker import to_sequence_classifier

    manifest = read_manifest(qwen3_export)
    assert manifest.source["model_type"] == "qwen3"
    assert (manifest.num_labels, manifest.activation) == (1, "sigmoid")
    assert manifest.inputs == ["input_ids", "attention_mask"]
    prompt = manifest.prompt
    assert prompt is not None and prompt.name == "qwen3-reranker" and prompt.tokens == ("no", "yes")
    tokenizer, _ = _card_ids(qwen3_dir, ["q"], ["p"])
    assert prompt.token_ids == (tokenizer.convert_tokens_to_ids("no"), tokenizer.convert_tokens_to_ids("yes"))
    assert prompt.pad_token_id == tokenizer.pad_token_id
    assert manifest.max_length == 512  # the model's positions (its tokenizer's 131,072 is no limit)
    # the export's own check (random ids at CONTRACT.shapes, rows padded), rerun on the converted model
    lm = AutoModelForCausalLM.from_pretrained(str(qwen3_dir)).eval()
    classifier = to_sequence_classifier(lm, prompt.token_ids, prompt.pad_token_id)
    report = validate_fp32(classifier, qwen3_export / "model.onnx", manifest.inputs)
    assert report["max_abs_diff_logit"] <= CONTRACT.fp32_atol
    assert manifest.variants["fp32"].validation["max_abs_diff_logit"] <= CONTRACT.fp32_atol

    engine = CrossEncoderEngine(EngineConfig.build(model_dir=qwen3_export, tokenizer={"max_length": 512}))
    assert engine.pad_id == tokenizer.pad_token_id
    queries, passages = _pairs(40, seed=5)
    result = engine.score(queries, passages)
    assert result.padding_efficiency < 1.0  # rows were padded (on the right)
    card = _card_scores(qwen3_dir, queries, passages)
    np.testing.assert_allclose(result.scores, card, atol=1e-5)
    np.testing.assert_allclose(result.logits, np.log(card) - np.log1p(-card), atol=1e-4)

    # a configured instruction reaches the prompt (and the scores move with it)
    instruction = "Find the policy clause that answers the question"
    engine = CrossEncoderEngine(
        EngineConfig.build(model_dir=qwen3_export, tokenizer={"max_length": 512, "instruction": instruction})
    )
    with_instruction = engine.score(queries, passages).scores
    np.testing.assert_allclose(
        with_instruction, _card_scores(qwen3_dir, queries, passages, instruction=instruction), atol=1e-5
    )
    assert np.max(np.abs(with_instruction - result.scores)) > 1e-4


def test_the_jobs_stages_score_through_the_prompt(qwen3_export, qwen3_dir, tmp_path):
    """The job's tokenize and rerank stages, called directly (no Ray), score the model card's way."""
    from rerank_engine.job.stages import RerankStage, TokenizeStage, logged_candidates

    queries, passages = _pairs(6, seed=6)
    docs = {f"d{i}": p for i, p in enumerate(passages)}
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": list(docs), "text": list(docs.values())}), corpus)
    config = JobConfig.build(
        model=str(qwen3_export), precision="fp32", k_recall=6, k_rerank=3, threshold=0.0,
        tokenizer={"max_length": 512},
    )  # fmt: skip
    batch = {"query_id": ["a", "b"], "query": queries[:2], "candidates": [list(docs), list(docs)[:3]]}
    tokenized = TokenizeStage(
        corpus_path=str(corpus), model_source=qwen3_export, columns=config.columns, tokenizer=config.tokenizer
    )(logged_candidates(batch, columns=config.columns))
    reranked = RerankStage(config.engine(qwen3_export, threads=1))(tokenized)
    got = reranked.column("__rerank_logits").to_pylist()
    for row, query in enumerate(queries[:2]):
        ids = tokenized.column("__rerank_cand_ids").to_pylist()[row]
        card = _card_scores(qwen3_dir, [query] * len(ids), [docs[d] for d in ids])
        np.testing.assert_allclose(1 / (1 + np.exp(-np.asarray(got[row]))), card, atol=1e-5)


def test_yes_or_no_not_a_single_token_is_refused(tmp_path, build_qwen3):
    """A tokenizer without a single "yes" token: the export and the job's resolve_export refuse it, naming
    the model and the tokens expected."""
    from transformers import AutoTokenizer

    from rerank_engine.serving.exporting import export_model, resolve_export

    src = build_qwen3(tmp_path / "qwen3-no-yes", drop_word="yes")
    assert "yes" not in AutoTokenizer.from_pretrained(str(src)).get_vocab()
    for call in (lambda: export_model(src, tmp_path / "out"), lambda: resolve_export(src)):
        with pytest.raises(ModelFormatError) as info:
            call()
        message = str(info.value)
        assert str(src) in message and "qwen3-reranker" in message
        assert "['no', 'yes']" in message and "'yes' is not" in message and "single token" in message
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_max_length_too_short_for_the_prompt_is_refused(qwen3_export):
    with pytest.raises(ConfigError, match="leaves no room for the passage in the qwen3-reranker prompt"):
        PairTokenizer(qwen3_export, TokenizerConfig(max_length=64))


def test_an_instruction_for_a_cross_encoder_is_refused(tiny_model_dir):
    with pytest.raises(ConfigError, match=r"tokenizer\.instruction is set, but .* is not an LLM reranker"):
        PairTokenizer(tiny_model_dir, TokenizerConfig(instruction="Find the answer"))


def test_chunk_max_is_refused_for_an_llm_reranker(qwen3_export):
    """An LLM reranker's prompt cuts the passage's tail at max_length; windows of it are not served: the
    tokenizer and the engine refuse chunk_max by name, and point to max_length."""
    config = TokenizerConfig(max_length=512, long_passages="chunk_max")
    with pytest.raises(ConfigError, match=r"long_passages 'chunk_max' is for cross-encoders.*max_length"):
        PairTokenizer(qwen3_export, config)
    with pytest.raises(ConfigError, match=r"qwen3-reranker prompt"):
        CrossEncoderEngine(EngineConfig.build(model_dir=qwen3_export, precision="fp32", tokenizer=config))
