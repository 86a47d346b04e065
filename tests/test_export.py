"""The export: a real tiny model → ONNX, validated against PyTorch, cached by content key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rerank_engine.config import EngineConfig
from rerank_engine.errors import ExportValidationError, ModelFormatError, ModelNotFoundError
from rerank_engine.serving.batching import pad_rows
from rerank_engine.serving.engine import CrossEncoderEngine
from rerank_engine.serving.export_contract import CONTRACT
from rerank_engine.serving.export_validation import validate_fp32
from rerank_engine.serving.hashing import content_hash
from rerank_engine.serving.manifest import read_manifest

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_manifest_fields(tiny_export, tiny_model_dir):
    manifest = read_manifest(tiny_export)
    assert manifest.inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest.output == "logits"
    assert isinstance(manifest.opset, int) and manifest.opset >= 14
    assert manifest.num_labels == 1
    assert manifest.activation == "sigmoid"
    assert manifest.score_scale == "probability"
    assert manifest.max_length == 512  # BERT positions and the tokenizer's model_max_length
    assert set(manifest.variants) == {"fp32", "int8"}
    assert manifest.variants["fp32"].file == "model.onnx"
    assert manifest.variants["int8"].file == "model_int8.onnx"
    for variant in manifest.variants.values():
        assert (tiny_export / variant.file).is_file()
    fp32 = manifest.variants["fp32"].validation
    assert fp32["max_abs_diff_logit"] <= fp32["atol"] == CONTRACT.fp32_atol
    assert "top5_overlap_mean" in manifest.variants["int8"].validation
    assert {"torch", "transformers", "optimum", "onnx", "onnxruntime", "export_code"} <= set(
        manifest.tool_versions
    )
    assert manifest.source["content_hash"] == content_hash(tiny_model_dir)
    assert manifest.source["model"] == str(tiny_model_dir)
    assert manifest.model_id == f"{tiny_model_dir.name}@{manifest.source['content_hash'][:12]}"
    # the folder is self-contained: the engine's tokenizer loads from it
    assert (tiny_export / "tokenizer.json").is_file() and (tiny_export / "config.json").is_file()


@pytest.fixture(scope="module")
def fp32_engine(tiny_export):
    return CrossEncoderEngine(EngineConfig.build(model_dir=tiny_export, precision="fp32"))


@pytest.mark.parametrize(("batch", "seq"), [(1, 1), (1, 7), (3, 13), (2, 31), (4, 65), (2, 257)])
def test_fp32_forward_matches_torch(fp32_engine, tiny_torch_model, batch, seq):
    import torch

    rng = np.random.default_rng(batch * 1000 + seq)
    ids = rng.integers(5, tiny_torch_model.config.vocab_size, size=(batch, seq), dtype=np.int64)
    lengths = rng.integers(1, seq + 1, size=batch)
    lengths[0] = seq  # one full row, the others padded
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    types = ((np.arange(seq)[None, :] >= seq // 2) * mask).astype(np.int64)
    ids = np.where(mask == 1, ids, 0)
    with torch.inference_mode():
        ref = tiny_torch_model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.from_numpy(types),
        ).logits.numpy()[:, 0]
    got = fp32_engine.forward(ids, mask, types)
    assert got.shape == (batch,) and got.dtype == np.float32
    diff = float(np.max(np.abs(got - ref)))
    assert diff <= 1e-4, f"max |Δlogit| {diff:.3g} at ({batch}, {seq})"


def test_export_again_is_cached(tiny_export, tiny_model_dir):
    from rerank_engine.serving.exporting import export_model

    onnx_file = tiny_export / "model.onnx"
    before = (onnx_file.stat().st_mtime_ns, (tiny_export / "model_int8.onnx").stat().st_mtime_ns)
    started = time.perf_counter()
    out = export_model(tiny_model_dir, tiny_export, precisions=["fp32", "int8"], min_top5_overlap=0.0)
    seconds = time.perf_counter() - started
    assert out == tiny_export
    assert (onnx_file.stat().st_mtime_ns, (tiny_export / "model_int8.onnx").stat().st_mtime_ns) == before
    assert seconds < 2.0, f"cached export took {seconds:.2f}s"
    # a subset of what is there is also served from the cache
    assert export_model(tiny_model_dir, tiny_export, precisions=["int8"]) == tiny_export
    assert onnx_file.stat().st_mtime_ns == before[0]


def test_asking_for_another_precision_adds_it(two_logit_model_dir, two_logit_export, copy_export):
    from rerank_engine.serving.exporting import export_model

    folder = copy_export(two_logit_export)
    assert set(read_manifest(folder).variants) == {"fp32"}
    out = export_model(two_logit_model_dir, folder, precisions=["int8"], min_top5_overlap=0.0)
    assert out == folder
    manifest = read_manifest(folder)
    assert set(manifest.variants) == {"fp32", "int8"}
    assert (folder / "model_int8.onnx").is_file()
    engine = CrossEncoderEngine(EngineConfig.build(model_dir=folder, precision="int8"))
    assert engine.precision == "int8"
    assert np.isfinite(engine.score(["a query"], ["a passage"]).scores).all()


def test_two_logit_model_scores_softmax_of_second_logit(
    two_logit_export, two_logit_model_dir, random_pairs, reference
):
    import torch
    from transformers import AutoModelForSequenceClassification

    manifest = read_manifest(two_logit_export)
    assert manifest.num_labels == 2 and manifest.activation == "softmax"
    engine = CrossEncoderEngine(EngineConfig.build(model_dir=two_logit_export))
    assert engine.precision == "fp32"  # the only variant exported
    queries, passages = random_pairs(12, seed=3)
    result = engine.score(queries, passages)
    model = AutoModelForSequenceClassification.from_pretrained(str(two_logit_model_dir)).eval()
    logits = reference(model, engine.tokenize(queries, passages))
    assert logits.shape == (12, 2)
    expected = torch.softmax(torch.from_numpy(logits), dim=-1)[:, 1].numpy()
    assert np.max(np.abs(result.scores - expected)) <= 1e-5
    assert np.max(np.abs(result.logits - (logits[:, 1] - logits[:, 0]))) <= 1e-4


def test_missing_model_raises_model_not_found(tmp_path):
    from rerank_engine.serving.exporting import export_model

    with pytest.raises(ModelNotFoundError, match="does-not-exist"):
        export_model(tmp_path / "does-not-exist", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match=r"config\.json"):
        export_model(empty, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_three_labels_is_a_format_error(tmp_path, bundled_tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    from rerank_engine.serving.exporting import export_model

    config = BertConfig(
        vocab_size=bundled_tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    src = tmp_path / "three"
    BertForSequenceClassification(config).save_pretrained(src)
    bundled_tokenizer.save_pretrained(src)
    with pytest.raises(ModelFormatError, match="num_labels=3"):
        export_model(src, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_unknown_precision_is_rejected(tiny_model_dir, tmp_path):
    from rerank_engine.serving.exporting import export_model

    with pytest.raises(ValueError, match="bf16"):
        export_model(tiny_model_dir, tmp_path / "out", precisions=["bf16"])


def test_validate_fp32_passes_on_the_right_model(tiny_export, tiny_torch_model):
    inputs = read_manifest(tiny_export).inputs
    report = validate_fp32(tiny_torch_model, tiny_export / "model.onnx", inputs)
    assert report["max_abs_diff_logit"] <= CONTRACT.fp32_atol
    assert [tuple(s) for s in report["shapes"]] == list(CONTRACT.shapes)


def test_validate_fp32_raises_with_the_largest_difference(tiny_export, tiny_torch_model, tiny_model_dir):
    import torch
    from transformers import BertForSequenceClassification

    inputs = read_manifest(tiny_export).inputs
    # With atol 0 any nonzero difference raises; ONNX and PyTorch rarely agree to the last bit.
    try:
        report = validate_fp32(tiny_torch_model, tiny_export / "model.onnx", inputs, atol=0.0)
    except ExportValidationError as exc:
        assert exc.max_abs_diff > 0.0
        assert exc.shape in CONTRACT.shapes
        assert exc.tolerance == 0.0
        assert "max |Δlogit|" in str(exc)
    else:
        assert report["max_abs_diff_logit"] == 0.0
    # A different model against the first one's graph must fail at the default tolerance.
    torch.manual_seed(1)
    other = BertForSequenceClassification(tiny_torch_model.config).eval()
    with pytest.raises(ExportValidationError) as info:
        validate_fp32(other, tiny_export / "model.onnx", inputs)
    err = info.value
    assert err.max_abs_diff > CONTRACT.fp32_atol
    assert err.tolerance == CONTRACT.fp32_atol
    assert err.shape in CONTRACT.shapes
    assert f"{err.shape}" in str(err)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "export", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )


def test_cli_exports_and_prints_json(tiny_model_dir, tmp_path):
    out = tmp_path / "cli-out"
    proc = _run_cli("--model", str(tiny_model_dir), "--out", str(out), "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["out"] == str(out)
    assert set(report["variants"]) == {"fp32"}
    assert report["variants"]["fp32"]["max_abs_diff_logit"] <= CONTRACT.fp32_atol
    assert report["model_id"] == read_manifest(out).model_id


def test_cli_missing_model_exits_2(tmp_path):
    missing = tmp_path / "no-such-model"
    proc = _run_cli("--model", str(missing), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert str(missing) in proc.stderr
    assert proc.stdout == ""


def test_cli_package_runs_the_library_export():
    import export
    import rerank_engine.serving.exporting

    assert export.export_model is rerank_engine.serving.exporting.export_model


def test_content_hash_covers_sharded_weights(tmp_path, tiny_torch_model, bundled_tokenizer):
    """Two checkpoints with the same config and tokenizer but different weights must not share a cache key.

    `save_pretrained` shards weights into model-0000k-of-0000n.safetensors (+ model.safetensors.index.json)
    above `max_shard_size`; content_hash only reads the fixed names in WEIGHT_FILES, so sharded weights are
    not hashed at all and export_model serves the first model's ONNX for the second.
    """
    import torch
    from transformers import BertForSequenceClassification

    hashes = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(tiny_torch_model.config)
        folder = tmp_path / f"sharded-{seed}"
        model.save_pretrained(folder, max_shard_size="1MB")
        bundled_tokenizer.save_pretrained(folder)
        assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1  # really sharded
        hashes.append(content_hash(folder))
    assert hashes[0] != hashes[1], "different sharded weights hash the same: the export cache would collide"


def test_calibration_files_beside_the_weights_keep_the_model_id(tmp_path, tiny_model_dir):
    """jobs.calibrate writes threshold.json and fusion.json into the model folder, bound to the model id:
    writing them must not change that id (the binding would break itself)."""
    import shutil

    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    before = content_hash(folder)
    for name in ("threshold.json", "fusion.json", "README.md"):
        (folder / name).write_text('{"value": 0.5}')
        assert content_hash(folder) == before, name
    (folder / "config.json").write_text((folder / "config.json").read_text().replace("}", ', "x": 1}', 1))
    assert content_hash(folder) != before  # a real model file still counts


# -- checkpoints that are not cross-encoders ---------------------------------------------------------


def _tiny_bert_config(vocab_size: int, **kw):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        **kw,
    )


@pytest.fixture(scope="module")
def bare_encoder_dir(tmp_path_factory, bundled_tokenizer) -> Path:
    """A bare BertModel checkpoint (what `bert-base-uncased` is): no classification head."""
    from transformers import BertModel

    out = tmp_path_factory.mktemp("bare-bert")
    BertModel(_tiny_bert_config(bundled_tokenizer.vocab_size)).save_pretrained(out)
    bundled_tokenizer.save_pretrained(out)
    return out


def test_a_checkpoint_without_a_trained_head_is_refused(bare_encoder_dir, tmp_path):
    """transformers would load it as BertForSequenceClassification with a random `classifier` (a warning
    only): every score would be noise. The export and the job's resolve_export refuse it by name."""
    from rerank_engine.serving.exporting import export_model, resolve_export

    with pytest.raises(
        ModelFormatError, match=r"classifier\.bias, classifier\.weight would be newly"
    ) as info:
        export_model(bare_encoder_dir, tmp_path / "out")
    assert "BertModel" in str(info.value) and "fine-tune" in str(info.value)
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(ModelFormatError, match=r"classifier\.weight"):
        resolve_export(bare_encoder_dir)  # what the job and its rerank actors call


def test_cli_refuses_a_checkpoint_without_a_head(bare_encoder_dir, tmp_path):
    proc = _run_cli("--model", str(bare_encoder_dir), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "classifier.weight" in proc.stderr and "no trained sequence-classification head" in proc.stderr
    assert proc.stdout == ""


def test_a_causal_lm_checkpoint_is_refused(tmp_path, bundled_tokenizer):
    """A LlamaForCausalLM, which transformers would load as LlamaForSequenceClassification with a newly
    initialised `score.weight` (Qwen3ForCausalLM, the shape of Qwen3-Reranker, is served as a yes/no LLM
    reranker instead: tests/test_llm_reranker.py)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rerank_engine.serving.exporting import export_model

    config = LlamaConfig(
        vocab_size=bundled_tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, pad_token_id=0,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    bundled_tokenizer.save_pretrained(tmp_path / "llama")
    with pytest.raises(ModelFormatError, match=r"score\.weight would be newly initialised") as info:
        export_model(tmp_path / "llama", tmp_path / "out")
    assert "causal LM (LlamaForCausalLM)" in str(info.value)
    assert "served for the model types qwen3 only" in str(info.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_an_unsupported_model_type_names_itself_and_the_supported_ones(tmp_path, bundled_tokenizer):
    from transformers import GPT2Config, GPT2ForSequenceClassification, ViTConfig

    from rerank_engine.serving.export_conversion import SUPPORTED_MODEL_TYPES
    from rerank_engine.serving.exporting import export_model

    supported = ", ".join(SUPPORTED_MODEL_TYPES)
    assert {"bert", "xlm-roberta", "deberta-v2", "modernbert", "electra"} <= set(SUPPORTED_MODEL_TYPES)
    # a trained head, but a family whose export and pair template no test proves
    gpt2 = GPT2Config(vocab_size=bundled_tokenizer.vocab_size, n_embd=32, n_layer=1, n_head=2, num_labels=1)
    GPT2ForSequenceClassification(gpt2).save_pretrained(tmp_path / "gpt2")
    bundled_tokenizer.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ModelFormatError, match="model type 'gpt2' is not supported") as info:
        export_model(tmp_path / "gpt2", tmp_path / "out")
    assert supported in str(info.value)
    # a model type with no sequence-classification model at all
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "vit")
    with pytest.raises(ModelFormatError, match="model type 'vit' is not supported") as info:
        export_model(tmp_path / "vit", tmp_path / "out")
    assert supported in str(info.value)
    # a model type transformers does not know
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "not-a-model"}))
    with pytest.raises(ModelFormatError, match="model type 'not-a-model' is not supported") as info:
        export_model(tmp_path / "odd", tmp_path / "out")
    assert supported in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_graph_over_2gb_keeps_its_weights_in_external_data(
    tiny_model_dir, tiny_torch_model, tmp_path, monkeypatch, copy_export, random_pairs, reference
):
    """bge-reranker-v2-m3 is ~2.2 GB in fp32, over protobuf's 2 GB: its graph keeps the weights in ONNX
    external data. The tiny BERT is forced through that path with optimum's own switch; every variant
    built from it (optimized fp32 and int8; fp16 from the plain graph) is listed with its data files and
    loads back from a copy of the folder with PyTorch's scores."""
    from rerank_engine.serving.export_validation import cpu_session, run_output
    from rerank_engine.serving.exporting import export_model

    monkeypatch.setenv("FORCE_ONNX_EXTERNAL_DATA", "1")
    queries, passages = random_pairs(24, seed=9)
    for optimize, precisions in ((True, ["fp32", "int8"]), (False, ["fp32", "fp16"])):
        src = tmp_path / f"export-{optimize}"
        export_model(tiny_model_dir, src, precisions=precisions, optimize=optimize, min_top5_overlap=0.0)
        manifest = read_manifest(src)
        # optimum names it model.onnx_data; onnxruntime's optimizer rewrites it as model.onnx.data
        assert manifest.variants["fp32"].external_data == [
            "model.onnx.data" if optimize else "model.onnx_data"
        ]
        listed = {
            "manifest.json",
            *(f for v in manifest.variants.values() for f in [v.file, *v.external_data]),
        }
        assert {p.name for p in src.glob("*.onnx*")} <= listed  # no stale data file left behind
        for variant in manifest.variants.values():
            assert variant.external_data, variant.precision
            data = sum((src / f).stat().st_size for f in variant.external_data)
            assert (src / variant.file).stat().st_size < 0.1 * data  # the weights are outside the graph
        folder = copy_export(src, f"moved-{optimize}")  # data found relative to the graph, wherever it lies
        engine = CrossEncoderEngine(EngineConfig.build(model_dir=folder, precision="fp32"))
        pairs = engine.tokenize(queries, passages)
        ref = reference(tiny_torch_model, pairs)[:, 0]
        assert np.max(np.abs(engine.score(queries, passages).logits - ref)) <= 1e-4
        other = precisions[1]
        if other == "int8":
            got = CrossEncoderEngine(EngineConfig.build(model_dir=folder, precision="int8")).score(
                queries, passages
            )
            assert np.max(np.abs(got.logits - ref)) <= 5e-2
        else:  # fp16 runs on CUDA only in the engine: load it with onnxruntime directly
            ids, mask = pad_rows(pairs.input_ids, int(pairs.lengths.max()), engine.pad_id)
            types, _ = pad_rows(pairs.token_type_ids, int(pairs.lengths.max()), 0)
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            got = run_output(cpu_session(folder / "model_fp16.onnx"), manifest.inputs, feed)[:, 0]
            assert np.max(np.abs(got - ref)) <= 1e-2
    (folder / "model.onnx_data").unlink()
    with pytest.raises(ModelNotFoundError, match=r"model\.onnx_data \(external data of model\.onnx\)"):
        CrossEncoderEngine(EngineConfig.build(model_dir=folder, precision="fp32"))


def test_fp16_of_an_optimized_graph_loads_and_scores_as_pytorch(
    tiny_model_dir, tiny_torch_model, tmp_path, random_pairs, reference
):
    """The tiny model's LayerNorms all hold their init values, so the optimizer merges their weights into
    one initializer: the fp16 converter then wrote the same Cast once per LayerNorm, and a blocked
    SkipLayerNormalization got fp16 and fp32 inputs; onnxruntime refused both graphs."""
    from rerank_engine.serving.export_validation import cpu_session, run_output
    from rerank_engine.serving.exporting import export_model

    queries, passages = random_pairs(24, seed=4)
    out = export_model(
        tiny_model_dir, tmp_path / "opt16", precisions=["fp32", "fp16"], optimize=True, min_top5_overlap=0.0
    )
    manifest = read_manifest(out)
    assert manifest.variants["fp16"].optimized
    engine = CrossEncoderEngine(EngineConfig.build(model_dir=out, precision="fp32"))
    pairs = engine.tokenize(queries, passages)
    ref = reference(tiny_torch_model, pairs)[:, 0]
    ids, mask = pad_rows(pairs.input_ids, int(pairs.lengths.max()), engine.pad_id)
    types, _ = pad_rows(pairs.token_type_ids, int(pairs.lengths.max()), 0)
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    # CUDA only in the engine
    got = run_output(cpu_session(out / "model_fp16.onnx"), manifest.inputs, feed)[:, 0]
    assert np.max(np.abs(got - ref)) <= 1e-2


def test_an_export_cached_before_the_head_check_is_rebuilt_through_it(
    bare_encoder_dir, tiny_export, copy_export
):
    """An export the old code made of a headless checkpoint (with a random head) sits in the cache under
    the old export-code version: asking again must not serve it but refuse the checkpoint."""
    from rerank_engine.serving.export_cache import cache_key, tool_versions
    from rerank_engine.serving.exporting import export_model

    stale = copy_export(tiny_export, "stale")  # stands for the old export of bare_encoder_dir
    manifest = json.loads((stale / "manifest.json").read_text())
    manifest["cache_key"] = cache_key(
        content_hash(bare_encoder_dir),
        opset=None,
        max_length=None,
        optimize=False,
        versions={**tool_versions(), "export_code": "1"},
    )
    (stale / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFormatError, match=r"classifier\.weight"):
        export_model(bare_encoder_dir, stale, precisions=["fp32", "int8"])


def test_two_processes_exporting_one_model_at_once_export_it_once(tmp_path, tiny_model_dir):
    """A node's tokenize and rerank actors resolve the same model at the same moment: the second waits
    for the first's export (a lock per content key) and reads it, instead of exporting over it."""
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "from rerank_engine.serving.exporting import export_model\n"
        "print(export_model(sys.argv[1]))\n"
    )
    env = {**os.environ, "RERANK_ENGINE_CACHE": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tiny_model_dir)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    folders = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(folders) == 1  # the same cached export
    exported = sum(err.count("exported ") for _, err in outs)
    assert exported == 1, [err[-2000:] for _, err in outs]
    manifest = read_manifest(folders.pop())
    assert set(manifest.variants) == {"fp32"}
