"""Distillation (rerank_engine/training/distill.py) on a tiny random 4-layer BERT teacher with a WordPiece
tokenizer trained here with the `tokenizers` library, over mined records written by the mining code's own
writer: the student's kept layers, the loss going down, the teacher-logit cache, exact resume, and the
student through the real ONNX export."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from rerank_engine.errors import ConfigError
from rerank_engine.probe_pairs import PASSAGES, QUERIES
from rerank_engine.training.distill import DistillConfig, kept_layers

N_TEACHER_LAYERS = 4


def _wordpiece_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    # A vocabulary built, not trained: the WordPiece trainer orders tied tokens differently from run to
    # run, which gave the random teacher other embeddings each run and made the loss figures below vary.
    words = sorted(
        {
            w
            for t in QUERIES + PASSAGES
            for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t))
        }
    )
    chars = sorted({c for w in words for c in w})
    vocab = [*specials, *chars, *(f"##{c}" for c in chars), *(w for w in words if len(w) > 1)]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.decoder = decoders.WordPiece()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return BertTokenizerFast(
        tokenizer_object=tok,
        **dict(
            unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]"
        ),
        model_max_length=512,
    )


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A tiny random 4-layer BertForSequenceClassification (one logit), weights spread enough that the
    logits differ from pair to pair."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = _wordpiece_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=N_TEACHER_LAYERS, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512, num_labels=1, initializer_range=0.2,
    )  # fmt: skip
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("teacher")
    BertForSequenceClassification(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[dict]:
    """Mined records as the mining job writes them: each probe query, its passage, 5 other passages."""
    from rerank_engine.training.hard_negatives import MinedQuery, read_records, write_records

    texts = {f"a{i}": p for i, p in enumerate(PASSAGES)}
    mined = [
        MinedQuery(f"q{i}", q, (f"a{i}",), tuple(f"a{(i + k) % len(PASSAGES)}" for k in range(1, 6)))
        for i, q in enumerate(QUERIES)
    ]
    path = write_records(mined, texts, tmp_path_factory.mktemp("mined") / "mined_train.jsonl")
    return read_records(path)


def _config(**kw) -> DistillConfig:
    values = dict(
        layers=2, n_negatives=3, groups_per_step=3, steps=30, lr=1e-3, warmup_share=0.0, max_length=48,
        checkpoint_every=10, eval_every=1000, teacher_chunk_pairs=16,
    )  # fmt: skip
    return DistillConfig.build(**{**values, **kw})


def _evalset():
    from rerank_engine.training.scoring import EvalSet

    cands = [[PASSAGES[(i + k) % len(PASSAGES)] for k in range(6)] for i in range(len(QUERIES))]
    ids = [[f"a{(i + k) % len(PASSAGES)}" for k in range(6)] for i in range(len(QUERIES))]
    return EvalSet(list(QUERIES), cands, ids, [{f"a{i}"} for i in range(len(QUERIES))])


def test_kept_layers_are_evenly_spaced_and_keep_the_last():
    assert kept_layers(3, 6) == [1, 3, 5]
    assert kept_layers(2, 4) == [1, 3]
    assert kept_layers(1, 4) == [3]
    assert kept_layers(4, 4) == [0, 1, 2, 3]
    assert kept_layers([0, 2], 4) == [0, 2]
    for bad in (5, [0, 4], [2, 1], []):
        with pytest.raises(ConfigError):
            kept_layers(bad, 4)
    for bad in (dict(layers=0), dict(layers=[3, 1]), dict(select_on="fused")):
        with pytest.raises(ConfigError):
            DistillConfig.build(**bad)
    # what does not change the trajectory does not change the key a checkpoint is checked against
    assert DistillConfig.build(threads=2, eval_every=7).key() == DistillConfig.build().key()
    assert DistillConfig.build(layers=[1, 3, 5]).key() != DistillConfig.build().key()


@pytest.mark.slow
@pytest.mark.parametrize("layers", [[0, 2], 2])
def test_the_student_keeps_the_chosen_layers_exactly(tmp_path, teacher_dir, layers):
    import torch
    from transformers import AutoModelForSequenceClassification

    from rerank_engine.serving.hashing import content_hash
    from rerank_engine.training.distill import make_student

    out = make_student(teacher_dir, layers, tmp_path / "student")
    kept = [0, 2] if layers == [0, 2] else [1, 3]
    student, info = AutoModelForSequenceClassification.from_pretrained(str(out), output_loading_info=True)
    teacher = AutoModelForSequenceClassification.from_pretrained(str(teacher_dir))
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    assert student.config.distilled_from == {
        "teacher": teacher_dir.name,
        "teacher_content_hash": content_hash(teacher_dir),
        "teacher_layers": N_TEACHER_LAYERS,
        "kept_layers": kept,
    }
    t = teacher.state_dict()

    def source(name: str) -> str:  # the teacher weight a student weight was copied from
        found = re.search(r"encoder\.layer\.(\d+)\.", name)
        return (
            name
            if found is None
            else name.replace(found.group(0), f"encoder.layer.{kept[int(found.group(1))]}.")
        )

    for name, tensor in student.state_dict().items():
        assert torch.equal(tensor, t[source(name)]), name
    for part in ("embeddings.word_embeddings.weight", "pooler.dense.weight"):
        assert torch.equal(student.state_dict()[f"bert.{part}"], t[f"bert.{part}"])
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert (out / "tokenizer.json").is_file()


def _distill_loss_now(model_dir, teacher_dir, records, config) -> float:
    """The distillation loss over every record's full group (eval mode, no dropout)."""
    import torch

    from rerank_engine.config import TokenizerConfig
    from rerank_engine.serving.tokenization import PairTokenizer
    from rerank_engine.training.distill import distill_loss, record_pairs
    from rerank_engine.training.scoring import load_model, score_pairs

    tok = TokenizerConfig(max_length=config.max_length)
    queries, passages = record_pairs(records)
    width = 1 + len(records[0]["neg"])
    scores = {}
    for name, folder in (("student", model_dir), ("teacher", teacher_dir)):
        model = load_model(folder, seed=0, require_head=True)
        scores[name] = torch.from_numpy(score_pairs(model, PairTokenizer(folder, tok), queries, passages))
    return float(
        distill_loss(config.loss, scores["student"].view(-1, width), scores["teacher"].view(-1, width))
    )


def _weights_of(run_dir: Path, into: Path) -> Path:
    """The checkpoint's student weights saved as a model folder."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(run_dir / "student"))
    model.load_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"])
    model.save_pretrained(into)
    AutoTokenizer.from_pretrained(str(run_dir / "student")).save_pretrained(into)
    return into


@pytest.mark.slow
@pytest.mark.parametrize(
    "kw", [dict(loss="margin_mse"), dict(loss="mse"), dict(loss="margin_mse", label_weight=0.5)]
)
def test_a_few_steps_of_distillation_lower_the_distillation_loss(tmp_path, teacher_dir, records, kw):
    from rerank_engine.training.distill import distill

    config = _config(**kw)
    state = distill(
        config,
        records,
        tmp_path / "run",
        teacher=teacher_dir,
        teacher_cache=tmp_path / "cache",
        progress=False,
    )
    assert state["step"] == 30
    before = _distill_loss_now(tmp_path / "run" / "student", teacher_dir, records, config)
    after = _distill_loss_now(_weights_of(tmp_path / "run", tmp_path / "after"), teacher_dir, records, config)
    assert after < 0.5 * before, (before, after)


@pytest.mark.slow
def test_the_teacher_logits_are_computed_once_and_resume_after_an_interruption(
    tmp_path, teacher_dir, records, monkeypatch
):
    from rerank_engine.config import TokenizerConfig
    from rerank_engine.training import distill as module

    calls = []
    real = module.score_pairs

    def counted(model, tokenizer, queries, passages):
        calls.append(len(queries))
        if fail_after is not None and len(calls) > fail_after:
            raise KeyboardInterrupt("interrupted")
        return real(model, tokenizer, queries, passages)

    monkeypatch.setattr(module, "score_pairs", counted)
    queries, passages = module.record_pairs(records)
    tok = TokenizerConfig(max_length=48)
    n = len(queries)  # 8 records × 6 = 48 pairs: 3 chunks of 16

    fail_after = 2  # killed during the third chunk
    with pytest.raises(KeyboardInterrupt):
        module.teacher_logits(
            teacher_dir, queries, passages, tmp_path / "c", tok, chunk_pairs=16, progress=False
        )
    assert calls == [16, 16, 16]
    fail_after, calls[:] = None, []
    resumed = module.teacher_logits(teacher_dir, queries, passages, tmp_path / "c", tok, chunk_pairs=16)
    assert calls == [16]  # only the chunk that was lost
    calls[:] = []
    whole = module.teacher_logits(teacher_dir, queries, passages, tmp_path / "fresh", tok, chunk_pairs=16)
    assert calls == [16, 16, 16] and resumed.shape == (n,)
    np.testing.assert_allclose(resumed, whole, atol=1e-6)

    calls[:] = []
    again = module.teacher_logits(teacher_dir, queries, passages, tmp_path / "c", tok, chunk_pairs=16)
    assert calls == [] and np.array_equal(again, resumed)  # hit: no teacher forward at all
    module.teacher_logits(teacher_dir, queries, passages, tmp_path / "c", TokenizerConfig(max_length=32))
    assert calls == [n]  # another max_length is another key

    # a distillation run and its rerun in a new folder: the teacher scores the pairs in the first only
    config = _config(steps=2, max_length=40)
    calls[:] = []
    module.distill(
        config, records, tmp_path / "r1", teacher=teacher_dir, teacher_cache=tmp_path / "c", progress=False
    )
    assert sum(calls) == n
    calls[:] = []
    module.distill(
        config, records, tmp_path / "r2", teacher=teacher_dir, teacher_cache=tmp_path / "c", progress=False
    )
    assert calls == []


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_interrupted_distillation_resumes_exactly(
    tmp_path, teacher_dir, records, assert_same_checkpoint, precision
):
    """Stopped at step 7 and resumed, a run ends with the same weights and losses as one left alone, in
    either training precision (the fine-tuning loop's `precision`, shared by distillation)."""

    from rerank_engine.training.distill import distill

    config = _config(
        steps=14,
        warmup_share=0.2,
        checkpoint_every=3,
        label_weight=0.5,
        label_loss="bce",
        precision=precision,
    )
    cache = tmp_path / "cache"
    whole = distill(
        config, records, tmp_path / "whole", teacher=teacher_dir, teacher_cache=cache, progress=False
    )
    first = distill(
        config,
        records,
        tmp_path / "split",
        teacher=teacher_dir,
        teacher_cache=cache,
        stop_at=7,
        progress=False,
    )
    assert first["step"] == 7
    rest = distill(
        config, records, tmp_path / "split", teacher=teacher_dir, teacher_cache=cache, progress=False
    )
    assert rest["step"] == 14
    assert_same_checkpoint(tmp_path / "whole", tmp_path / "split")
    assert rest["last_losses"] == whole["last_losses"][-len(rest["last_losses"]) :]
    with pytest.raises(ValueError, match="another config"):  # the checkpoint is checked against the config
        distill(
            _config(steps=14, lr=5e-4), records, tmp_path / "split", teacher=teacher_dir, teacher_cache=cache,
            progress=False,
        )  # fmt: skip


@pytest.mark.slow
def test_the_best_student_exports_to_onnx_and_scores_as_in_pytorch(tmp_path, teacher_dir, records, reference):
    from transformers import AutoModelForSequenceClassification

    from rerank_engine.config import EngineConfig
    from rerank_engine.serving.engine import CrossEncoderEngine
    from rerank_engine.serving.exporting import export_model
    from rerank_engine.serving.manifest import read_manifest
    from rerank_engine.training.distill import distill

    config = _config(steps=4, eval_every=4)
    state = distill(
        config, records, tmp_path / "run", teacher=teacher_dir, teacher_cache=tmp_path / "cache",
        evalset=_evalset(), progress=False,
    )  # fmt: skip
    best = tmp_path / "run" / "best"
    assert state["best_step"] == 4 and (best / "tokenizer.json").is_file()
    export = export_model(best, tmp_path / "export", precisions=["fp32"])
    manifest = read_manifest(export)
    assert manifest.variants["fp32"].validation["max_abs_diff_logit"] <= 1e-4
    engine = CrossEncoderEngine(EngineConfig.build(model_dir=export, precision="fp32"))
    queries = [q for q in QUERIES for _ in range(3)]
    passages = [PASSAGES[(i * 5 + k) % len(PASSAGES)] for i in range(len(QUERIES)) for k in range(3)]
    pairs = engine.tokenize(queries, passages)
    got = engine.score_tokenized(pairs).logits
    model = AutoModelForSequenceClassification.from_pretrained(str(best)).eval()
    assert model.config.num_hidden_layers == 2
    want = reference(model, pairs, engine.pad_id)[:, 0]
    assert np.max(np.abs(got - want)) <= 1e-4
    assert np.std(want) > 1e-3  # the scores are not all the same: the comparison means something


def test_the_job_takes_layers_as_a_count_or_indices():
    import argparse

    from jobs.distill import layers_arg

    assert layers_arg("3") == 3
    assert layers_arg("1,3,5") == [1, 3, 5]
    with pytest.raises(argparse.ArgumentTypeError):
        layers_arg("three")


@pytest.mark.slow
def test_the_teachers_valid_figures_are_those_of_its_reranking(tmp_path, teacher_dir):
    """What the job reports next to the student: the teacher's figures, from its cached logits."""
    from rerank_engine.config import TokenizerConfig
    from rerank_engine.serving.tokenization import PairTokenizer
    from rerank_engine.training.distill import teacher_figures
    from rerank_engine.training.scoring import evaluate, load_model

    got = teacher_figures(teacher_dir, _evalset(), tmp_path / "cache", _config())
    teacher = load_model(teacher_dir, seed=0, require_head=True)
    want = evaluate(teacher, PairTokenizer(teacher_dir, TokenizerConfig(max_length=48)), _evalset())
    assert got == pytest.approx(want)
    assert got == pytest.approx(teacher_figures(teacher_dir, _evalset(), tmp_path / "cache", _config()))
