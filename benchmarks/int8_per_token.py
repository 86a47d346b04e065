"""int8 with one activation scale per token (issue #9, measured by `benchmarks/int8_agreement.py`):
every weight MatMul of an fp32 ONNX graph rewritten as symmetric per-token int8 activations × per-channel
int8 weights. Not shipped: it ranks closer to fp32 than onnxruntime's dynamic quantization but still
misses the agreement bar (docs/performance.md, "int8 against fp32").

onnxruntime's dynamic quantization gives each batch's activation tensor one scale, so one outlier token
coarsens every other token of the batch, and a pair's score depends on which pairs share its batch. Here
each token row gets its own scale, so a pair's score does not depend on its batch companions, and an
outlier costs precision only in its own row.

For `Y = X · W` (X [..., K] float, W [K, N] a constant), with X seen as rows [T, K]:

    scale = max(ReduceMax(|X|, axis 1), eps) / 127               one scale per token row, [T]
    Xq    = QuantizeLinear(X, scale, zero point 128, axis 0)     uint8, symmetric around 128
    Y     = MatMulIntegerToFloat(Xq, Wq, 1, w_scale, 128) · scale[:, None]     reshaped to [..., N]

with `Wq = Round(W / w_scale)`, `w_scale = max|W[:, n]| / qmax` per output column. MatMuls reading the
same tensor (Q, K and V) share its quantization. `weight_bits=7` (qmax 63) keeps u8 × s8 products summed
in pairs inside int16, which x86 without VNNI (AVX2 `vpmaddubsw`) would otherwise saturate.

With calibration feeds, activation outlier channels are smoothed first (SmoothQuant, Xiao et al. 2023):
`X · W = (X / s) · (s W)` with `s_k = max|X_k|^α / max|W_k|^(1−α)` per input channel k (W: all the
MatMuls reading X), the channel maxima measured by running the fp32 graph on the feeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_EPS = 1e-12


def weight_matmuls(model) -> list:
    """The MatMul nodes of `model` whose second input is a constant 2-D weight."""
    inits = {i.name: i for i in model.graph.initializer}
    return [
        n
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2
    ]


def channel_absmax(fp32_path: str | Path, feeds, tensors: list[str]) -> dict[str, np.ndarray]:
    """max |x| over every token of every feed, per last-axis channel, of each named tensor of the graph."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = onnx.load(str(fp32_path))
    known = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in known:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    out: dict[str, np.ndarray] = {}
    for feed in feeds:
        values = session.run(tensors, {k: v for k, v in feed.items() if k in inputs})
        for name, v in zip(tensors, values, strict=True):
            m = np.abs(v).reshape(-1, v.shape[-1]).max(axis=0)
            out[name] = np.maximum(out[name], m) if name in out else m
    if not out:
        raise ValueError("channel_absmax: no calibration feeds")
    return out


def quantize_per_token(
    fp32_path: str | Path,
    out: str | Path,
    *,
    weight_bits: int = 8,
    calibration=None,
    alpha: float = 0.5,
) -> int:
    """Write the per-token int8 graph of `fp32_path` to `out`; `calibration` (feeds: dicts of padded
    int64 inputs) turns on smoothing with strength `alpha`.
    MatMuls that read the same tensor (an attention block's Q, K and V) share one quantization of it.
    Returns how many MatMuls were quantized."""
    import onnx
    from onnx import helper, numpy_helper

    if weight_bits not in (7, 8):
        raise ValueError(f"weight_bits must be 7 or 8, got {weight_bits}")
    qmax = 2 ** (weight_bits - 1) - 1
    model = onnx.load(str(fp32_path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    targets = weight_matmuls(model)
    readers: dict[str, list] = {}  # input tensor -> the weight MatMuls reading it
    for node in targets:
        readers.setdefault(node.input[0], []).append(node)
    target_outputs = {n.output[0] for n in targets}  # unique in a graph; node names may be empty
    xmax = channel_absmax(fp32_path, calibration, sorted(readers)) if calibration is not None else {}
    const = {
        "pt_eps": np.array(_EPS, dtype=np.float32),
        "pt_inv127": np.array(1 / 127, dtype=np.float32),
        "pt_one": np.array(1.0, dtype=np.float32),
        "pt_zero_point": np.array(128, dtype=np.uint8),
        "pt_zero_points": np.array([128], dtype=np.uint8),
        "pt_axis1": np.array([1], dtype=np.int64),
        "pt_start": np.array([0], dtype=np.int64),
        "pt_stop": np.array([-1], dtype=np.int64),
    }
    new_inits = [numpy_helper.from_array(v, k) for k, v in const.items()]
    smooths: dict[str, np.ndarray | None] = {}  # input tensor -> its smoothing, once its quantization is in
    nodes, replaced = [], set()

    def add(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def weight(matmul) -> np.ndarray:
        return numpy_helper.to_array(inits[matmul.input[1]]).astype(np.float32)

    for node in graph.node:
        if node.output[0] not in target_outputs:
            nodes.append(node)
            continue
        x = node.input[0]
        q = f"{x}/pt"
        if x not in smooths:  # the first MatMul reading x: [..., K] -> rows [T, K] -> uint8 rows
            smooth = None
            if x in xmax:  # one smoothing for every MatMul reading x
                wmax = np.max([np.abs(weight(n)).max(axis=1) for n in readers[x]], axis=0)
                smooth = np.clip(
                    np.maximum(xmax[x], _EPS) ** alpha / np.maximum(wmax, _EPS) ** (1 - alpha), 1e-5, 1e5
                )
            smooths[x] = smooth
            k = int(inits[node.input[1]].dims[0])
            new_inits.append(numpy_helper.from_array(np.array([-1, k], dtype=np.int64), f"{q}/rows_shape"))
            rows = add("Reshape", [x, f"{q}/rows_shape"], f"{q}/rows")
            if smooth is not None:
                new_inits.append(numpy_helper.from_array((1 / smooth).astype(np.float32), f"{q}/unsmooth"))
                rows = add("Mul", [rows, f"{q}/unsmooth"], f"{q}/smoothed")
            amax = add("ReduceMax", [add("Abs", [rows], f"{q}/abs"), "pt_axis1"], f"{q}/amax0", keepdims=0)
            scale = add("Mul", [add("Max", [amax, "pt_eps"], f"{q}/amax"), "pt_inv127"], f"{q}/scale")
            points = add("Expand", ["pt_zero_points", add("Shape", [scale], f"{q}/n")], f"{q}/points")
            add("QuantizeLinear", [rows, scale, points], f"{q}/xq", axis=0)
            add("Unsqueeze", [scale, "pt_axis1"], f"{q}/row_scale")
            add("Slice", [add("Shape", [x], f"{q}/shape"), "pt_start", "pt_stop"], f"{q}/lead")
        smooth = smooths[x]
        w = weight(node) * (smooth[:, None] if smooth is not None else 1.0)
        w_scale = np.maximum(np.abs(w).max(axis=0), _EPS) / qmax
        p = f"{node.output[0]}/pt"
        new_inits += [
            numpy_helper.from_array(np.clip(np.round(w / w_scale), -qmax, qmax).astype(np.int8), f"{p}/wq"),
            numpy_helper.from_array(w_scale.astype(np.float32), f"{p}/w_scale"),
            numpy_helper.from_array(np.array([w.shape[1]], dtype=np.int64), f"{p}/n"),
        ]
        replaced.add(node.input[1])
        inputs = [f"{q}/xq", f"{p}/wq", "pt_one", f"{p}/w_scale", "pt_zero_point"]
        cols = add("MatMulIntegerToFloat", inputs, f"{p}/cols", domain="com.microsoft")
        y = add("Mul", [cols, f"{q}/row_scale"], f"{p}/y")
        shape = add("Concat", [f"{q}/lead", f"{p}/n"], f"{p}/out_shape", axis=0)
        nodes.append(helper.make_node("Reshape", [y, shape], [node.output[0]], name=f"{p}/out"))
    still_used = {i for n in nodes for i in n.input}
    kept = [i for i in graph.initializer if i.name not in replaced or i.name in still_used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return len(targets)
