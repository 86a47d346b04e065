"""Hugging Face sequence-classification model → verified ONNX variants, cached by a content key: the
public entry (`export_model`, `resolve_export`) and the serving precision policy (which variants a job
needs). The steps live beside it: where the model comes from and the cache key (export_cache), the
conversion to ONNX and fp16 (export_conversion), int8 (export_quantization), the checks against PyTorch
(export_validation), all held to one declared contract (export_contract).

A yes/no LLM reranker (a Qwen3-Reranker causal LM) is exported as the one-logit sequence classifier it
converts to (rerank_engine.serving.llm_reranker), its prompt kept in the manifest.

The CLI is `python -m export` (the `export/` folder at the repository root).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from rerank_engine.errors import ConfigError, ModelFormatError
from rerank_engine.serving.export_cache import (
    cache_key,
    cached_manifest,
    default_cache_root,
    install,
    resolve_source,
    tool_versions,
)
from rerank_engine.serving.export_contract import CONTRACT
from rerank_engine.serving.export_conversion import (
    declared_activation,
    external_data_files,
    graph_inputs,
    load_torch,
    onnx_export,
    opset_of,
    optimize_graph,
    supported_max_length,
    to_fp16,
)
from rerank_engine.serving.export_quantization import INT8_RECIPE, quantize_int8
from rerank_engine.serving.export_validation import ProbeSet, check_ranking, validate_fp32
from rerank_engine.serving.hashing import content_hash
from rerank_engine.serving.manifest import MANIFEST_NAME, Manifest, Variant, write_manifest

log = logging.getLogger(__name__)

VARIANT_FILES = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx"}


def export_model(
    model: str | Path,
    out: str | Path | None = None,
    *,
    precisions: Sequence[str] = ("fp32",),
    optimize: bool = False,
    opset: int | None = None,
    max_length: int | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    min_top5_overlap: float = CONTRACT.min_top5_overlap,
) -> Path:
    """Export `model` (hub id or local folder) into `out` (default: the cache, keyed by content).

    Returns the export folder. A folder that already holds this content key and the requested variants
    is returned at once. fp32 is always built: fp16 and int8 derive from it.
    """
    unknown = set(precisions) - set(VARIANT_FILES)
    if unknown:
        raise ConfigError(f"unknown precision(s) {sorted(unknown)}; expected fp32, fp16 or int8")
    src_dir, source = resolve_source(model, revision)
    chash = content_hash(src_dir)
    versions = tool_versions()
    key = cache_key(
        chash, opset=opset, max_length=max_length, optimize=optimize, versions=versions, int8=INT8_RECIPE
    )
    out = Path(out) if out is not None else default_cache_root() / "onnx" / key[:20]
    wanted = list(dict.fromkeys(["fp32", *precisions]))

    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(out.with_name(out.name + ".lock")):  # actors of one node export a key once
        existing = cached_manifest(out, key)
        if existing is not None:
            if all(p in existing.variants for p in wanted):
                return out
            wanted = list(dict.fromkeys([*existing.variants, *wanted]))  # rebuild, keeping what was there

        started = time.perf_counter()
        torch_model, tokenizer, prompt = load_torch(src_dir, trust_remote_code, model)
        num_labels = int(torch_model.config.num_labels)
        if num_labels not in (1, 2):
            raise ModelFormatError(
                f"{model}: num_labels={num_labels}; a cross-encoder needs 1 (sigmoid) or 2 "
                "(softmax[:, 1]) logits"
            )
        declared = declared_activation(src_dir, num_labels, model)
        max_len = supported_max_length(torch_model.config, tokenizer, max_length)

        with tempfile.TemporaryDirectory(prefix="rerank-export-") as tmp:
            work = Path(tmp)
            onnx_export(torch_model, work, opset)
            inputs = graph_inputs(work / VARIANT_FILES["fp32"])
            fp32_path = work / VARIANT_FILES["fp32"]
            if optimize:
                optimize_graph(fp32_path, torch_model.config)
            if external_data_files(fp32_path):  # a graph over 2 GB keeps its weights beside it
                log.info("%s: the fp32 graph keeps its weights in ONNX external data", model)
            probe = ProbeSet(tokenizer, inputs, max_len, prompt)
            ref = probe.torch_logits(torch_model)
            variants = {
                "fp32": Variant(
                    file=VARIANT_FILES["fp32"],
                    precision="fp32",
                    optimized=optimize,
                    validation=validate_fp32(torch_model, fp32_path, inputs),
                    external_data=external_data_files(fp32_path),
                )
            }
            if "fp16" in wanted:
                to_fp16(fp32_path, work / VARIANT_FILES["fp16"])
            if "int8" in wanted:
                quantize_int8(fp32_path, work / VARIANT_FILES["int8"], INT8_RECIPE, optimized=optimize)
            for precision in ("fp16", "int8"):
                if precision in wanted:
                    path = work / VARIANT_FILES[precision]
                    variants[precision] = Variant(
                        file=VARIANT_FILES[precision],
                        precision=precision,
                        optimized=optimize,
                        validation=check_ranking(
                            probe, ref, path, f"{precision} variant of {model}", min_top5_overlap
                        ),
                        external_data=external_data_files(path),
                        **({"recipe": INT8_RECIPE.describe()} if precision == "int8" else {}),
                    )
            tokenizer.save_pretrained(work)
            torch_model.config.save_pretrained(work)
            manifest = Manifest(
                cache_key=key,
                source={**source, "content_hash": chash, "model_type": torch_model.config.model_type},
                opset=opset_of(fp32_path),
                max_length=max_len,
                num_labels=num_labels,
                activation="sigmoid" if num_labels == 1 else "softmax",
                declared_activation=declared,
                inputs=inputs,
                output=CONTRACT.output,
                prompt=prompt,
                variants=variants,
                tool_versions=versions,
                export_seconds=round(time.perf_counter() - started, 2),
            )
            write_manifest(work, manifest)
            install(work, out)
        log.info("exported %s → %s in %.1fs", model, out, time.perf_counter() - started)
        return out


@contextmanager
def exclusive(lock_file: Path):
    """Hold an exclusive lock on `lock_file` (made if absent): a second process waits for the first.
    Where there is no `fcntl` (Windows), no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_file, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def auto_precision(gpu: bool) -> str:
    """What precision "auto" runs: fp16 on CUDA, fp32 on CPU. int8 stays available on request
    (`precision: int8`), but no int8 recipe met issue #9's agreement bar against fp32 on InsuranceQA valid
    (docs/performance.md; reports/history/2026-11-28-throughput/int8_agreement.md)."""
    return "fp16" if gpu else "fp32"


def needed_precisions(precision: str, gpu: bool) -> list[str]:
    """Variants to export for an engine precision setting ("auto": `auto_precision`; fp32 is always built,
    so a GPU job that falls back to the CPU finds its fp32 graph)."""
    if precision != "auto":
        return [precision]
    return [auto_precision(gpu)]


def resolve_export(model: str | Path, precisions: Sequence[str] = ("fp32",)) -> Path:
    """An export folder for `model`: itself if it already is one, else the cached export (built once
    per machine and content key)."""
    if (Path(model) / MANIFEST_NAME).is_file():
        return Path(model)
    return export_model(model, precisions=precisions)
