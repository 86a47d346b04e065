"""The int8 recipe benchmark (`benchmarks/int8_agreement.py`) and the recipe machinery it drives
(`rerank_engine.serving.export_quantization.Int8Recipe`, `int8_node_groups`, `quantize_int8`), on the tiny
random BERT."""

from __future__ import annotations

import json

import pytest

from benchmarks import int8_agreement
from rerank_engine.errors import ModelFormatError
from rerank_engine.serving.export_cache import cache_key
from rerank_engine.serving.export_quantization import INT8_RECIPE, Int8Recipe, int8_node_groups, quantize_int8


def test_node_groups_of_the_tiny_bert(tiny_export):
    import onnx

    groups = int8_node_groups(onnx.load(str(tiny_export / "model.onnx")))
    n_layers = 2  # tests/conftest.py: _bert_config
    assert len(groups["qkv"]) == 3 * n_layers
    assert [len(groups[g]) for g in ("attn_out", "ffn_in", "ffn_out")] == [n_layers] * 3
    assert all("attention/output" in n for n in groups["attn_out"])
    assert all("intermediate" in n for n in groups["ffn_in"])
    assert all("/output/dense" in n and "attention" not in n for n in groups["ffn_out"])
    assert len(groups["embeddings"]) == 3  # word, position and token-type tables
    assert groups["first"] == groups["layer.0"] and groups["last"] == groups["layer.1"]
    assert sorted(groups["layer.0"] + groups["layer.1"]) == sorted(
        groups["qkv"] + groups["attn_out"] + groups["ffn_in"] + groups["ffn_out"]
    )


def test_excluded_groups_stay_fp32(tiny_export, tmp_path):
    import onnx

    out = tmp_path / "int8.onnx"
    quantize_int8(tiny_export / "model.onnx", out, Int8Recipe(exclude=("ffn_out",)), optimized=False)
    nodes = {n.name: n.op_type for n in onnx.load(str(out)).graph.node}
    groups = int8_node_groups(onnx.load(str(tiny_export / "model.onnx")))
    assert all(nodes.get(n) == "MatMul" for n in groups["ffn_out"])  # untouched
    assert all(nodes.get(f"{n}_quant") == "MatMulInteger" for n in groups["ffn_in"])

    with pytest.raises(ModelFormatError, match="matches no node"):
        quantize_int8(tiny_export / "model.onnx", out, Int8Recipe(exclude=("layer.9",)), optimized=False)


def test_the_int8_recipe_is_part_of_the_cache_key():
    args = dict(opset=None, max_length=None, optimize=False, versions={"export_code": "1"})
    other = Int8Recipe(per_channel=not INT8_RECIPE.per_channel)
    assert cache_key("c", **args) == cache_key("c", **args, int8=INT8_RECIPE)
    assert cache_key("c", **args, int8=other) != cache_key("c", **args, int8=INT8_RECIPE)


def test_the_manifest_records_the_int8_recipe(tiny_export):
    from rerank_engine.serving.manifest import read_manifest

    assert read_manifest(tiny_export).variants["int8"].model_extra["recipe"] == INT8_RECIPE.describe()


@pytest.mark.slow
def test_int8_agreement_quick_on_the_tiny_model(tmp_path, tiny_model_dir, tiny_export):
    out = tmp_path / "int8.json"
    argv = ["--model", str(tiny_model_dir), "--export", str(tiny_export), "--synthetic", "2"]
    argv += ["--quick", "--reps", "3", "--work", str(tmp_path / "work"), "--json", str(out)]
    assert int8_agreement.main(argv) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert list(rows) == ["fp32", "int8_shipped", "int8_s8_pertensor", "int8_s8_perchannel_no_ffn_out"]
    assert set(result["recipes"]) == set(rows)
    assert result["workload"]["pairs"] == 40 and result["workload"]["queries"] == 2

    fp32 = rows["fp32"]  # the reference agrees with itself exactly
    assert fp32["max_abs_dscore"] == 0.0 and fp32["mean_abs_dscore"] == 0.0
    assert fp32["top5_overlap_mean"] == 1.0 and fp32["top5_overlap_min"] == 1.0
    assert fp32["ndcg5_delta"] == 0.0 and fp32["ratio_vs_fp32"] == 1.0 and fp32["meets_bar"]
    for name, row in rows.items():
        assert row["pairs_per_s"] > 0 and len(row["seconds"]) == 3, name
        assert row["ratio_vs_fp32"] == pytest.approx(row["pairs_per_s"] / fp32["pairs_per_s"], rel=0.01)
        assert 0.0 <= row["top5_overlap_min"] <= row["top5_overlap_mean"] <= 1.0
        assert row["max_abs_dscore"] >= row["mean_abs_dscore"] >= 0.0
        assert 0.0 <= row["ndcg5"] <= 1.0
    assert rows["int8_shipped"]["max_abs_dscore"] > 0.0  # a different graph, not the fp32 one again

    table = out.with_suffix(".md").read_text().splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("| recipe |"))
    assert table[header].replace("\\|", "").count("|") == 11 and table[header + 1] == "|---" * 10 + "|"
    body = table[header + 2 : header + 2 + len(rows)]
    assert [line.split(" | ")[0] for line in body] == [f"| {name}" for name in rows]
    assert body[0] == "| fp32 | " + f"{fp32['pairs_per_s']:.1f} | 1.00 | 0 | 0 | 1.000 | 1.00 | " + (
        f"{fp32['ndcg5']:.4f} | +0.0000 | yes |"
    )


@pytest.mark.slow
def test_per_token_nbits_and_openvino_rows(tmp_path, tiny_model_dir, tiny_export):
    pytest.importorskip("openvino")
    pytest.importorskip("onnx_ir")
    out = tmp_path / "rows.json"
    keep = "int8_per_token_w7,int8_per_token_w7_smooth0.5,nbits_w8_b32_acc4"
    argv = ["--model", str(tiny_model_dir), "--export", str(tiny_export), "--synthetic", "2", "--quick"]
    argv += ["--per-token", "--nbits", "--openvino", "--rows", keep, "--calib-queries", "1"]
    argv += ["--reps", "3", "--work", str(tmp_path / "work"), "--json", str(out)]
    assert int8_agreement.main(argv) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert list(rows) == ["fp32", *keep.split(","), "openvino_fp32"]
    assert result["recipes"]["int8_per_token_w7_smooth0.5"]["smooth_alpha"] == 0.5
    for name in keep.split(","):
        assert rows[name]["max_abs_dscore"] > 0.0, name  # a quantized graph, not fp32 again
        assert rows[name]["pairs_per_s"] > 0 and len(rows[name]["seconds"]) == 3, name
    # the same fp32 graph on another runtime: the same scores, to float rounding
    assert rows["openvino_fp32"]["max_abs_dscore"] < 1e-5
    assert rows["openvino_fp32"]["top5_overlap_mean"] == 1.0 and rows["openvino_fp32"]["pairs_per_s"] > 0
