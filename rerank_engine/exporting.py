"""Hugging Face sequence-classification model → verified ONNX variants, cached by a content key.

A yes/no LLM reranker (a Qwen3-Reranker causal LM) is exported as the one-logit sequence classifier it
converts to (rerank_engine.llm_reranker), its prompt kept in the manifest.

The CLI is `python -m export` (the `export/` folder at the repository root).

The export contract is declared once (`CONTRACT`) and checked against the PyTorch reference.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from rerank_engine.batching import pad_rows
from rerank_engine.errors import ConfigError, ExportValidationError, ModelFormatError, ModelNotFoundError
from rerank_engine.hashing import content_hash
from rerank_engine.llm_reranker import LLM_RERANKERS, PromptEncoder, YesNoPrompt
from rerank_engine.manifest import MANIFEST_NAME, Manifest, Variant, read_manifest, write_manifest
from rerank_engine.metrics import ranking_agreement
from rerank_engine.probe_pairs import probe_groups

log = logging.getLogger(__name__)

# "2": exports refuse a newly initialised head and unsupported model types, and list external data; a
# cached export made before (perhaps of a checkpoint without a head) is rebuilt through those checks
EXPORT_CODE_VERSION = "2"
VARIANT_FILES = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx"}


@dataclass(frozen=True)
class Contract:
    """What every exported cross-encoder graph looks like."""

    inputs: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")  # every name a graph may take
    optional_inputs: tuple[str, ...] = ("token_type_ids",)  # fed only where the graph declares it
    output: str = "logits"  # [rows, num_labels]: what validation, the probe and the engine (manifest) read
    fp32_atol: float = 1e-4
    # (batch, sequence) shapes fp32 is validated at: the graph runs at all of them, so both axes are dynamic
    shapes: tuple[tuple[int, int], ...] = ((1, 8), (2, 13), (3, 31), (4, 64), (5, 127), (2, 200))
    min_top5_overlap: float = 0.8  # fp16 / int8 variants, mean over probe queries

    @property
    def required_inputs(self) -> tuple[str, ...]:
        """The inputs every graph takes (input_ids, attention_mask)."""
        return tuple(n for n in self.inputs if n not in self.optional_inputs)


CONTRACT = Contract()


def default_cache_root() -> Path:
    return Path(os.environ.get("RERANK_ENGINE_CACHE", Path.home() / ".cache" / "rerank-engine"))


# -- resolving the source ------------------------------------------------------------------------------


def resolve_source(model: str | Path, revision: str | None = None) -> tuple[Path, dict]:
    """A local folder as is, or a hub id downloaded (or found in the HF cache). Returns (dir, source)."""
    path = Path(model)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json; expected a Hugging Face model folder")
        return path, {"model": str(model), "revision": None}
    if str(model).startswith((".", "/", "~")) or str(model).count("/") > 1:
        raise ModelNotFoundError(f"model folder {model} does not exist")
    from huggingface_hub import snapshot_download

    try:
        local = Path(snapshot_download(repo_id=str(model), revision=revision))
    except Exception as exc:
        raise ModelNotFoundError(
            f"{model!r} is neither a local folder nor a reachable Hugging Face hub id: {exc}"
        ) from None
    return local, {"model": str(model), "revision": local.name}


def _installed_version(distribution: str, module: str) -> str:
    """The installed version from the package metadata, without importing the package (importing torch,
    transformers and optimum costs a rerank actor ~5 s of start-up on 2 cores just to find a cached
    export); the module's `__version__` where there is no metadata."""
    from importlib import import_module, metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return import_module(module).__version__


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime  # its distribution may be onnxruntime or onnxruntime-gpu; the import is cheap

    return {
        "torch": _installed_version("torch", "torch"),
        "transformers": _installed_version("transformers", "transformers"),
        "optimum": _installed_version("optimum", "optimum.version"),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "export_code": EXPORT_CODE_VERSION,
    }


def cache_key(
    chash: str,
    *,
    opset: int | None,
    max_length: int | None,
    optimize: bool,
    versions: dict[str, str],
    int8: Int8Recipe | None = None,
) -> str:
    """The export's content key: weights, export settings, tool versions and the int8 recipe (a changed
    recipe must not reuse an int8 graph built by the old one)."""
    blob = json.dumps(
        {
            "content": chash,
            "opset": opset,
            "max_length": max_length,
            "optimize": optimize,
            "tools": versions,
            "int8": (int8 or INT8_RECIPE).describe(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


# -- the export ----------------------------------------------------------------------------------------


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

    existing = _cached(out, key)
    if existing is not None:
        if all(p in existing.variants for p in wanted):
            return out
        wanted = list(dict.fromkeys([*existing.variants, *wanted]))  # rebuild, keeping what was there

    started = time.perf_counter()
    torch_model, tokenizer, prompt = _load_torch(src_dir, trust_remote_code, model)
    num_labels = int(torch_model.config.num_labels)
    if num_labels not in (1, 2):
        raise ModelFormatError(
            f"{model}: num_labels={num_labels}; a cross-encoder needs 1 (sigmoid) or 2 (softmax[:, 1]) logits"
        )
    declared = declared_activation(src_dir, num_labels, model)
    max_len = _max_length(torch_model.config, tokenizer, max_length)

    with tempfile.TemporaryDirectory(prefix="rerank-export-") as tmp:
        work = Path(tmp)
        _onnx_export(torch_model, work, opset)
        inputs = _graph_inputs(work / VARIANT_FILES["fp32"])
        fp32_path = work / VARIANT_FILES["fp32"]
        if optimize:
            _optimize(fp32_path, torch_model.config)
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
            _to_fp16(fp32_path, work / VARIANT_FILES["fp16"])
        if "int8" in wanted:
            quantize_int8(fp32_path, work / VARIANT_FILES["int8"], INT8_RECIPE, optimized=optimize)
        for precision in ("fp16", "int8"):
            if precision in wanted:
                agreement = ranking_agreement(ref, probe.onnx_logits(work / VARIANT_FILES[precision]))
                variants[precision] = Variant(
                    file=VARIANT_FILES[precision],
                    precision=precision,
                    optimized=optimize,
                    validation=agreement,
                    external_data=external_data_files(work / VARIANT_FILES[precision]),
                    **({"recipe": INT8_RECIPE.describe()} if precision == "int8" else {}),
                )
                if agreement["top5_overlap_mean"] < min_top5_overlap:
                    raise ExportValidationError(
                        f"{precision} variant of {model} ranks differently from PyTorch fp32: "
                        f"mean top-5 overlap "
                        f"{agreement['top5_overlap_mean']:.3f} < {min_top5_overlap} "
                        f"(Spearman {agreement['spearman_mean']:.3f}, max |Δscore| "
                        f"{agreement['max_abs_diff_score']:.4f})",
                        max_abs_diff=agreement["max_abs_diff_score"],
                        shape=(len(ref), len(probe.groups[0][1])),
                        tolerance=min_top5_overlap,
                    )
        tokenizer.save_pretrained(work)
        torch_model.config.save_pretrained(work)
        manifest = Manifest(
            cache_key=key,
            source={**source, "content_hash": chash, "model_type": torch_model.config.model_type},
            opset=_opset_of(fp32_path),
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
        _install(work, out)
    log.info("exported %s → %s in %.1fs", model, out, time.perf_counter() - started)
    return out


def _cached(out: Path, key: str) -> Manifest | None:
    if not (out / MANIFEST_NAME).is_file():
        return None
    try:
        manifest = read_manifest(out)
    except Exception:
        return None
    if manifest.cache_key != key:
        return None
    if not all((out / f).is_file() for v in manifest.variants.values() for f in [v.file, *v.external_data]):
        return None
    return manifest


def _install(work: Path, out: Path) -> None:
    """Move a finished export into place; the manifest goes last so a half-copied folder is never used."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for item in work.iterdir():
        if item.name != MANIFEST_NAME:
            target = out / item.name
            if target.is_dir():
                shutil.rmtree(target)
            shutil.move(str(item), target)
    shutil.move(str(work / MANIFEST_NAME), out / MANIFEST_NAME)


# The model types whose export, pair template and score scale the tests prove (tests/test_families.py;
# the README's model-family table). Anything else is refused by name.
SUPPORTED_MODEL_TYPES = ("bert", "distilbert", "electra", "xlm-roberta", "deberta-v2", "modernbert")


def _unsupported(model, model_type: str, why: str) -> ModelFormatError:
    return ModelFormatError(
        f"{model}: model type {model_type!r} is not supported ({why}); supported model types: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}; as yes/no LLM rerankers (a *ForCausalLM checkpoint): "
        f"{', '.join(LLM_RERANKERS)}"
    )


def _load_torch(src_dir: Path, trust_remote_code: bool, model=None):
    """(model, tokenizer, prompt): the checkpoint as a sequence-classification model, refused unless
    every weight of it, the classification head included, comes from the checkpoint (transformers would
    fill a missing head with random weights and only log a warning: every score would be noise). A yes/no
    LLM reranker is converted to one (`llm_reranker.load_llm_reranker`) and comes with its prompt; any
    other checkpoint with None."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from rerank_engine.llm_reranker import llm_reranker_prompt, load_llm_reranker

    model = model or src_dir
    try:
        config = AutoConfig.from_pretrained(str(src_dir), trust_remote_code=trust_remote_code)
    except (KeyError, ValueError) as exc:
        model_type = _config_value(src_dir, "model_type")
        raise _unsupported(model, model_type, f"transformers does not know it: {exc}") from None
    prompt = llm_reranker_prompt(config)
    if prompt is not None:
        return load_llm_reranker(src_dir, model, prompt, trust_remote_code)
    try:
        torch_model, info = AutoModelForSequenceClassification.from_pretrained(
            str(src_dir),
            torch_dtype=torch.float32,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
        )
    except ValueError as exc:
        if "Unrecognized configuration class" not in str(exc):
            raise
        why = "transformers has no sequence-classification model for it"
        raise _unsupported(model, config.model_type, why) from None
    fresh = sorted(info["missing_keys"])
    if fresh:
        raise ModelFormatError(head_missing_message(model, config, fresh))
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise _unsupported(model, config.model_type, "its export and pair template are untested")
    tokenizer = AutoTokenizer.from_pretrained(
        str(src_dir), use_fast=True, trust_remote_code=trust_remote_code
    )
    return torch_model.eval(), tokenizer, None


def head_missing_message(model, config, missing: Sequence[str]) -> str:
    """What to tell the user whose checkpoint lacks weights of the classification model."""
    architectures = ", ".join(getattr(config, "architectures", None) or ["unknown"])
    hint = (
        "point `model` at a trained cross-encoder (a *ForSequenceClassification checkpoint with its head), "
        "or fine-tune one from this checkpoint first (rerank_engine.training, `base_model:` in the "
        "jobs/finetune_reranker.py config)"
    )
    if "ForCausalLM" in architectures:
        hint = (
            f"it is a causal LM ({architectures}): yes/no LLM rerankers are served for the model types "
            f"{', '.join(LLM_RERANKERS)} only (Qwen3-Reranker's prompt), not {config.model_type!r}; {hint}"
        )
    return (
        f"{model}: the checkpoint ({architectures}) has no trained sequence-classification head: "
        f"{', '.join(missing)} would be newly initialised with random values and every score would be "
        f"noise; {hint}"
    )


# sentence-transformers' CrossEncoder stores the activation its predict() applies to the logits; these
# are the ones the engine's output reproduces ("sigmoid" / "softmax": the `score` column, the
# probability; "identity": the `logit` column, which is what predict returns then).
_ST_ACTIVATIONS = {
    1: {"torch.nn.modules.activation.Sigmoid": "sigmoid", "torch.nn.modules.linear.Identity": "identity"},
    2: {"torch.nn.modules.activation.Softmax": "softmax", "torch.nn.modules.linear.Identity": "identity"},
}


def declared_activation(src_dir: Path, num_labels: int, model=None) -> str | None:
    """The activation a sentence-transformers CrossEncoder checkpoint declares, looked up where
    sentence-transformers looks (config_sentence_transformers.json, then config.json's
    `sentence_transformers.activation_fn`, then the pre-v4 `sbert_ce_default_activation_function`);
    None for a plain transformers checkpoint. One the engine cannot reproduce is a ModelFormatError."""
    path = None
    st_file = Path(src_dir) / "config_sentence_transformers.json"
    if st_file.is_file():
        path = json.loads(st_file.read_text()).get("activation_fn")
    if path is None:
        config = json.loads((Path(src_dir) / "config.json").read_text())
        path = (config.get("sentence_transformers") or {}).get("activation_fn") or config.get(
            "sbert_ce_default_activation_function"
        )
    if path is None:
        return None
    known = _ST_ACTIVATIONS[num_labels]
    if path not in known:
        raise ModelFormatError(
            f"{model or src_dir}: its sentence-transformers config declares the activation {path!r}, which "
            f"the engine does not reproduce for {num_labels} logit(s); expected one of {sorted(known)}"
        )
    return known[path]


def _config_value(src_dir: Path, key: str) -> str:
    try:
        return str(json.loads((Path(src_dir) / "config.json").read_text()).get(key))
    except (OSError, ValueError, AttributeError):
        return "unknown"


def _max_length(config, tokenizer, requested: int | None) -> int:
    limit = int(config.max_position_embeddings)
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):
        limit -= int(config.pad_token_id or 1) + 1  # learned positions start after the padding index
    if 0 < tokenizer.model_max_length < 100_000:
        limit = min(limit, int(tokenizer.model_max_length))
    if requested is not None:
        if requested > limit:
            raise ConfigError(f"max_length {requested} exceeds what the model supports ({limit})")
        return requested
    return limit


def _onnx_export(model, work: Path, opset: int | None) -> None:
    from optimum.exporters.onnx import onnx_export_from_model

    onnx_export_from_model(model, work, task="text-classification", opset=opset, do_validation=False)
    (work / "config.json").unlink(missing_ok=True)


def _graph_inputs(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    names = [i.name for i in graph.input if i.name not in initializers]
    if any(n not in names for n in CONTRACT.required_inputs):
        raise ModelFormatError(
            f"exported graph {path} takes {names}; expected {' and '.join(CONTRACT.required_inputs)}"
        )
    return names


def external_data_files(path: Path) -> list[str]:
    """The external-data files the ONNX graph at `path` keeps tensors in, relative to its folder: a
    protobuf file cannot exceed 2 GB, so bigger graphs (bge-reranker-v2-m3 in fp32) keep their weights
    beside it. optimum writes them so above 2 GB (or with FORCE_ONNX_EXTERNAL_DATA=1)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    graph = onnx.load(str(path), load_external_data=False)
    return sorted({ExternalDataInfo(t).location for t in _get_all_tensors(graph) if uses_external_data(t)})


def _opset_of(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _optimize(path: Path, config) -> None:
    """ORT transformer optimizer (attention / LayerNorm / GELU fusion), in place."""
    from onnxruntime.transformers import optimizer

    before = external_data_files(path)
    opt = optimizer.optimize_model(
        str(path),
        model_type="bert",
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
        opt_level=1,
        use_gpu=False,
    )
    opt.save_model_to_file(str(path), use_external_data_format=bool(before))
    for stale in set(before) - set(external_data_files(path)):
        (path.parent / stale).unlink()


def _drop_repeated_nodes(graph) -> None:
    """Remove exact repeats of a node (same name, op, inputs, outputs, attributes), keeping the first.

    The fp16 converter inserts one fp16→fp32 Cast per (initializer, blocked consumer) with a name and
    output taken from the initializer alone: where the optimizer had merged equal initializers (LayerNorm
    weights still at their init values) several LayerNorms share one, and the same Cast appears once per
    consumer, which onnxruntime refuses ("two nodes with same node name")."""
    seen, kept = set(), []
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            kept.append(node)
    if len(kept) < len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)


def _to_fp16(fp32_path: Path, out: Path) -> None:
    """fp16 weights and activations with fp32 inputs/outputs (the sigmoid stays fp32 in the engine)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    external = bool(external_data_files(fp32_path))
    model = onnx.load(str(fp32_path))
    # plain LayerNormalization stays fp32 (fp16 overflow); the optimizer's fused SkipLayerNormalization
    # runs on fp16 tensors and accumulates in fp32 itself, and blocking it leaves it with mixed types
    model16 = convert_float_to_float16(model, keep_io_types=True, op_block_list=["LayerNormalization"])
    _drop_repeated_nodes(model16.graph)
    if external:  # half of a graph over 2 GB may still be over it
        onnx.save(model16, str(out), save_as_external_data=True, location=f"{out.name}_data")
    else:
        onnx.save(model16, str(out))


@dataclass(frozen=True, kw_only=True)
class Int8Recipe:
    """How the int8 variant is quantized from the fp32 graph: onnxruntime's dynamic quantization (int8
    weights, activations quantized per call), with named groups of weights left in fp32.

    Groups (`int8_node_groups`): "embeddings" (the embedding-table Gathers), "qkv", "attn_out", "ffn_in",
    "ffn_out" (the weight MatMuls of every layer), "layer.<i>", "first", "last" (all weight MatMuls of a
    layer). `benchmarks/int8_agreement.py` measures recipes against fp32 on labelled InsuranceQA valid pairs.
    """

    per_channel: bool = True
    weight_type: Literal["QInt8", "QUInt8"] = "QInt8"
    reduce_range: bool = False
    exclude: tuple[str, ...] = ()

    def describe(self) -> dict:
        return {
            "method": "dynamic",
            "per_channel": self.per_channel,
            "weight_type": self.weight_type,
            "reduce_range": self.reduce_range,
            "exclude": list(self.exclude),
        }


# The int8 variant (on request; not the CPU default): per-channel signed weights, everything quantizable
# quantized (the embedding tables and every weight MatMul). benchmarks/int8_agreement.py compares recipes.
INT8_RECIPE = Int8Recipe()

_LAYER = re.compile(r"layer\.(\d+)/")


def int8_node_groups(model) -> dict[str, list[str]]:
    """Names of the nodes dynamic quantization would touch in `model` (an onnx ModelProto), by group.

    Weight MatMuls are told apart by position and shape, not by architecture-specific names: within a
    layer (the `layer.<i>/` in optimum's node names), the MatMuls whose weight is [hidden, hidden] are the
    attention projections (the last of them the output projection), [hidden, ffn] is the FFN's first and
    [ffn, hidden] its second (output) MatMul."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    groups: dict[str, list[str]] = {"embeddings": [], "qkv": [], "attn_out": [], "ffn_in": [], "ffn_out": []}
    square: dict[int, list[str]] = {}
    layers: dict[int, list[str]] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[0] in inits:
            groups["embeddings"].append(node.name)
            continue
        if node.op_type != "MatMul" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        match = _LAYER.search(node.name)
        if match is None:
            continue
        layer = int(match.group(1))
        layers.setdefault(layer, []).append(node.name)
        rows, cols = inits[node.input[1]][-2:]
        if rows == cols:
            square.setdefault(layer, []).append(node.name)
        else:
            groups["ffn_in" if rows < cols else "ffn_out"].append(node.name)
    for names in square.values():
        groups["qkv"] += names[:-1]
        groups["attn_out"] += names[-1:]
    for layer, names in sorted(layers.items()):
        groups[f"layer.{layer}"] = names
    if layers:
        groups["first"], groups["last"] = layers[min(layers)], layers[max(layers)]
    return groups


def quantize_int8(fp32_path: Path, out: Path, recipe: Int8Recipe = INT8_RECIPE, *, optimized: bool) -> None:
    """Build the int8 graph of `recipe` from the fp32 graph at `fp32_path`."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude: list[str] = []
    if recipe.exclude:
        groups = int8_node_groups(onnx.load(str(fp32_path), load_external_data=False))
        for name in recipe.exclude:
            if not groups.get(name):
                raise ModelFormatError(
                    f"int8 recipe excludes {name!r}, which matches no node of {fp32_path} "
                    f"(groups found: {sorted(k for k, v in groups.items() if v)})"
                )
            exclude += groups[name]
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT} if optimized else {}
    quantize_dynamic(
        str(fp32_path),
        str(out),
        weight_type=getattr(QuantType, recipe.weight_type),
        per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range,
        nodes_to_exclude=sorted(set(exclude)) or None,
        extra_options=extra,
        use_external_data_format=bool(external_data_files(fp32_path)),
    )


# -- validation ----------------------------------------------------------------------------------------


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _run(session, inputs: list[str], feed: dict[str, np.ndarray]) -> np.ndarray:
    return session.run([CONTRACT.output], {k: v for k, v in feed.items() if k in inputs})[0]


def validate_fp32(torch_model, onnx_path: Path, inputs: list[str], atol: float = CONTRACT.fp32_atol) -> dict:
    """Compare raw logits at several (batch, sequence) shapes with padded rows; raise on the largest diff."""
    import torch

    rng = np.random.default_rng(0)
    session = _session(onnx_path)
    vocab = int(torch_model.config.vocab_size)
    worst, worst_shape = 0.0, (0, 0)
    for batch, seq in CONTRACT.shapes:
        seq = min(seq, int(torch_model.config.max_position_embeddings) - 2)
        ids = rng.integers(5, vocab, size=(batch, seq), dtype=np.int64)
        lengths = rng.integers(max(1, seq // 2), seq + 1, size=batch)
        lengths[0] = seq
        mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
        types = np.zeros_like(ids)
        types[:, seq // 3 :] = 1
        types *= mask
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        with torch.inference_mode():
            ref = torch_model(
                **{k: torch.from_numpy(v) for k, v in feed.items() if k in inputs}
            ).logits.numpy()
        got = _run(session, inputs, feed)
        diff = float(np.max(np.abs(ref - got)))
        if diff > worst:
            worst, worst_shape = diff, (batch, seq)
    if worst > atol:
        raise ExportValidationError(
            f"{onnx_path} disagrees with PyTorch: max |Δlogit| {worst:.3g} at (batch, seq) {worst_shape} "
            f"> tolerance {atol}",
            max_abs_diff=worst,
            shape=worst_shape,
            tolerance=atol,
        )
    return {
        "max_abs_diff_logit": worst,
        "worst_shape": list(worst_shape),
        "atol": atol,
        "shapes": [list(s) for s in CONTRACT.shapes],
    }


class ProbeSet:
    """The hand-written probe queries × passages, tokenized once, for ranking agreement (an LLM reranker's
    in its prompt, rows padded on the right)."""

    def __init__(self, tokenizer, inputs: list[str], max_length: int, prompt: YesNoPrompt | None = None):
        self.inputs = inputs
        self.groups = probe_groups()
        if prompt is not None:
            encode = PromptEncoder(tokenizer, prompt, max_length=max_length, query_cap=max_length // 4)
            self.encoded = []
            for q, ps in self.groups:
                rows = encode([q] * len(ps), ps)
                ids, mask = pad_rows(rows, max(len(r) for r in rows), prompt.pad_token_id)
                self.encoded.append({"input_ids": ids, "attention_mask": mask})
        else:
            self.encoded = [
                tokenizer(
                    [q] * len(ps),
                    ps,
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="np",
                )
                for q, ps in self.groups
            ]

    def _feeds(self):
        for i, enc in enumerate(self.encoded):
            yield i, {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in self.inputs}

    def torch_logits(self, model) -> dict[int, np.ndarray]:
        import torch

        out = {}
        with torch.inference_mode():
            for i, feed in self._feeds():
                logits = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.float().numpy()
                out[i] = _relevance(logits)
        return out

    def onnx_logits(self, path: Path) -> dict[int, np.ndarray]:
        session = _session(path)
        return {
            i: _relevance(np.asarray(_run(session, self.inputs, feed), dtype=np.float32))
            for i, feed in self._feeds()
        }


def _relevance(logits: np.ndarray) -> np.ndarray:
    from rerank_engine.engine import relevance_logits, sigmoid

    return sigmoid(relevance_logits(logits))


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
