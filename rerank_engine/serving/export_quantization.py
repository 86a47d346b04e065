"""The int8 variant: how it is quantized from the fp32 graph (`Int8Recipe`, the shipped `INT8_RECIPE`),
the groups of weight nodes a recipe can leave in fp32, and the quantization itself (onnxruntime's dynamic
quantization). `benchmarks/int8_agreement.py` measures recipes against fp32."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rerank_engine.errors import ModelFormatError
from rerank_engine.serving.export_conversion import external_data_files


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
