"""A Hugging Face checkpoint → the fp32 ONNX graph and its fp16 variant: the checkpoint loaded as a
sequence-classification model (refused where its head would be newly initialised or its model type is
untested; a yes/no LLM reranker converted, rerank_engine.serving.llm_reranker), optimum's export, the graph's
inputs checked against the contract, ORT's transformer optimizer, the fp16 conversion, and ONNX external
data for graphs over 2 GB. Heavy libraries are imported inside the functions that use them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rerank_engine.errors import ConfigError, ModelFormatError
from rerank_engine.serving.export_contract import CONTRACT
from rerank_engine.serving.llm_reranker import LLM_RERANKERS

# -- the checkpoint ------------------------------------------------------------------------------------

# The model types whose export, pair template and score scale the tests prove (tests/test_families.py;
# the README's model-family table). Anything else is refused by name.
SUPPORTED_MODEL_TYPES = ("bert", "distilbert", "electra", "xlm-roberta", "deberta-v2", "modernbert")


def _unsupported(model, model_type: str, why: str) -> ModelFormatError:
    return ModelFormatError(
        f"{model}: model type {model_type!r} is not supported ({why}); supported model types: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}; as yes/no LLM rerankers (a *ForCausalLM checkpoint): "
        f"{', '.join(LLM_RERANKERS)}"
    )


def load_torch(src_dir: Path, trust_remote_code: bool, model=None):
    """(model, tokenizer, prompt): the checkpoint as a sequence-classification model, refused unless
    every weight of it, the classification head included, comes from the checkpoint (transformers would
    fill a missing head with random weights and only log a warning: every score would be noise). A yes/no
    LLM reranker is converted to one (`llm_reranker.load_llm_reranker`) and comes with its prompt; any
    other checkpoint with None."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from rerank_engine.serving.llm_reranker import llm_reranker_prompt, load_llm_reranker

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


def supported_max_length(config, tokenizer, requested: int | None) -> int:
    """The longest sequence the model takes (its positions, the tokenizer's limit), or `requested` where it
    is no longer; a ConfigError where it is."""
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


# -- the graph -----------------------------------------------------------------------------------------


def onnx_export(model, work: Path, opset: int | None) -> None:
    from optimum.exporters.onnx import onnx_export_from_model

    onnx_export_from_model(model, work, task="text-classification", opset=opset, do_validation=False)
    (work / "config.json").unlink(missing_ok=True)


def graph_inputs(path: Path) -> list[str]:
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


def opset_of(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def optimize_graph(path: Path, config) -> None:
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


def to_fp16(fp32_path: Path, out: Path) -> None:
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
