"""int8 recipes against the fp32 ONNX graph, side by side on labelled InsuranceQA **valid** pairs (issue #9).

    python -m benchmarks.int8_agreement [--quick] [--queries 100] [--sensitivity] [--static] \
        --json reports/throughput/int8_agreement.json

Every row scores the same pairs with our engine (bucketed, 8,192 tokens, tokenization included); the int8
graphs are built here from the export's fp32 graph (`rerank_engine.serving.export_quantization.quantize_int8`,
static QDQ with `onnxruntime.quantization.quantize_static`). Per row: pairs/s (median of `--reps` interleaved
repetitions) and its ratio to fp32, agreement with fp32 (max and mean |Δscore|, per-query top-5 overlap mean
and min) and NDCG@5 on the gold labels with its difference from fp32. The bar (issue #9): mean top-5
overlap ≥ 0.98 and |ΔNDCG@5| ≤ 0.005.

Pairs: bi-encoder top-20 over all 27,413 answers of the first `--queries` valid questions (the test split is
never used here). `--sensitivity` adds untimed rows that quantize one group of weights only, to find which
ones carry the error; `--static` adds static QDQ rows calibrated (`--static-methods`: MinMax, Percentile,
Entropy) on pool pairs of the valid questions after the measured ones. `--per-token` adds int8 graphs with a
scale per token (`benchmarks/int8_per_token.py`, plain and smoothed), `--nbits` onnxruntime's MatMulNBits
(block-quantized weights; needs onnx_ir), `--openvino` the fp32 graph run by OpenVINO. `--synthetic N`
replaces the pairs with random word pairs (what the test runs on a tiny model). Writes the JSON and a
markdown table beside it (`.md`).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_MODEL, machine, shown_path
from benchmarks.variants import CalibrationReader, EngineVariant, Shapes, derived_export
from benchmarks.workloads import Workload, agreement, labelled_top20, recall_candidates, synthetic_workloads
from rerank_engine.serving.engine import CrossEncoderEngine
from rerank_engine.serving.export_quantization import INT8_RECIPE, Int8Recipe

BAR_OVERLAP, BAR_NDCG = 0.98, 0.005
BUCKETED = {"bucketing": True, "max_batch_tokens": 8192}
GROUPS = ("embeddings", "qkv", "attn_out", "ffn_in", "ffn_out")  # disjoint; together: every quantized node


@dataclass(frozen=True)
class Row:
    """One graph to score: `build(fp32_path, out_path)` writes its int8 file (None: the export's fp32)."""

    name: str
    build: Callable[[Path, Path], None] | None
    describe: dict
    timed: bool = True


def dynamic(name: str, recipe: Int8Recipe, timed: bool = True) -> Row:
    from rerank_engine.serving.export_quantization import quantize_int8

    return Row(
        name,
        lambda src, dst: quantize_int8(src, dst, recipe, optimized=False),
        recipe.describe(),
        timed,
    )


def dynamic_rows(quick: bool) -> list[Row]:
    """The shipped recipe, its settings varied one at a time, and groups of weights kept in fp32 (a row
    whose recipe is the shipped one is listed once)."""
    rows = [
        dynamic("int8_shipped", INT8_RECIPE),
        dynamic("int8_s8_perchannel", Int8Recipe()),
        dynamic("int8_s8_pertensor", Int8Recipe(per_channel=False)),
        dynamic("int8_s8_perchannel_no_ffn_out", Int8Recipe(exclude=("ffn_out",))),
    ]
    if not quick:
        attention = ("embeddings", "ffn_in", "ffn_out")
        rows += [
            dynamic("int8_u8_perchannel", Int8Recipe(weight_type="QUInt8")),
            dynamic("int8_u8_pertensor", Int8Recipe(weight_type="QUInt8", per_channel=False)),
            dynamic("int8_s8_perchannel_reduce_range", Int8Recipe(reduce_range=True)),
            dynamic("int8_s8_perchannel_no_embeddings", Int8Recipe(exclude=("embeddings",))),
            dynamic("int8_s8_perchannel_no_attn_out", Int8Recipe(exclude=("attn_out",))),
            dynamic("int8_s8_perchannel_no_first", Int8Recipe(exclude=("first",))),
            dynamic("int8_s8_perchannel_no_last", Int8Recipe(exclude=("last",))),
            dynamic("int8_s8_perchannel_no_ffn_out_attn_out", Int8Recipe(exclude=("ffn_out", "attn_out"))),
            dynamic("int8_s8_perchannel_attention_only", Int8Recipe(exclude=attention)),
            dynamic("int8_s8_perchannel_attention_only_no_first", Int8Recipe(exclude=(*attention, "first"))),
        ]
    seen: set[str] = set()
    unique = []
    for row in rows:
        key = json.dumps(row.describe, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


def per_token_rows(export_dir: Path, calib_queries: int, start: int) -> list[Row]:
    """A scale per token row (`benchmarks.int8_per_token`) with 8-bit and 7-bit weights, and smoothed
    (SmoothQuant) with channel maxima from valid pool pairs of the questions after the measured ones."""
    from benchmarks.int8_per_token import quantize_per_token

    def build(bits: int, alpha: float | None):
        def run(src: Path, dst: Path) -> None:
            smoothing = {}
            if alpha is not None:
                feeds = CalibrationReader(export_dir, calib_queries, start=start).feeds
                smoothing = {"calibration": feeds, "alpha": alpha}
            quantize_per_token(src, dst, weight_bits=bits, **smoothing)

        return run

    desc = {"method": "per-token activations, per-channel weights (benchmarks.int8_per_token)"}
    rows = []
    for bits, alpha in ((8, None), (7, None), (8, 0.5), (7, 0.5), (7, 0.8)):
        name, describe = f"int8_per_token_w{bits}", {**desc, "weight_bits": bits}
        if alpha is not None:
            name += f"_smooth{alpha}"
            describe |= {"smooth_alpha": alpha, "calibration_pairs": calib_queries * 16}
        rows.append(Row(name, build(bits, alpha), describe))
    return rows


def nbits_rows() -> list[Row]:
    """onnxruntime's MatMulNBits: block-quantized weights; accuracy_level 4 computes in int8 with the
    activations quantized per block of `block_size` along K (a scale per token per block)."""

    def build(bits: int, block: int, level: int):
        def run(src: Path, dst: Path) -> None:
            import onnx
            from onnxruntime.quantization.matmul_nbits_quantizer import (
                DefaultWeightOnlyQuantConfig,
                MatMulNBitsQuantizer,
            )

            config = DefaultWeightOnlyQuantConfig(
                block_size=block, is_symmetric=True, accuracy_level=level, bits=bits
            )
            q = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=config)
            q.process()
            q.model.save_model_to_file(str(dst), use_external_data_format=False)

        return run

    rows = []
    for bits, block, level in ((8, 32, 4), (8, 128, 4), (4, 32, 4), (8, 32, 0)):
        rows.append(
            Row(
                f"nbits_w{bits}_b{block}_acc{level}",
                build(bits, block, level),
                {"method": "MatMulNBits", "bits": bits, "block_size": block, "accuracy_level": level},
            )
        )
    return rows


def sensitivity_rows(n_layers: int) -> list[Row]:
    """Untimed: only one group, or only the first or last layer, quantized (per-channel signed weights)."""
    rows = [
        dynamic(f"only_{g}", Int8Recipe(exclude=tuple(o for o in GROUPS if o != g)), timed=False)
        for g in GROUPS
    ]
    layers = [f"layer.{i}" for i in range(n_layers)]
    for name, keep in (("only_first_layer", layers[0]), ("only_last_layer", layers[-1])):
        others = tuple(o for o in layers if o != keep)
        rows.append(dynamic(name, Int8Recipe(exclude=("embeddings", *others)), timed=False))
    return rows


def static_rows(export_dir: Path, calib_queries: int, start: int, methods: list[str]) -> list[Row]:
    """Static QDQ of the weight MatMuls (u8 activations, s8 per-channel weights), calibrated on valid.

    Percentile and Entropy keep every calibration activation in memory: 320 pairs of MiniLM-L6 took more
    than 17 GB (killed here), MinMax a few hundred MB."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    def build(method: CalibrationMethod):
        def run(src: Path, dst: Path) -> None:
            import onnx

            from rerank_engine.serving.export_quantization import int8_node_groups

            groups = int8_node_groups(onnx.load(str(src), load_external_data=False))
            nodes = [n for g in ("qkv", "attn_out", "ffn_in", "ffn_out") for n in groups[g]]
            quantize_static(
                str(src),
                str(dst),
                CalibrationReader(export_dir, calib_queries, start=start),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["MatMul"],
                nodes_to_quantize=nodes,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
            )

        return run

    desc = {"method": "static QDQ", "calibration_pairs": calib_queries * 16, "first_valid_question": start}
    return [
        Row(f"int8_static_{m.name.lower()}", build(m), {**desc, "calibrate": m.name})
        for m in (getattr(CalibrationMethod, name) for name in methods)
    ]


def valid_workload(n_queries: int) -> Workload:
    from rerank_engine.data.insuranceqa import load_answers, load_split

    questions = load_split("valid")[:n_queries]
    return labelled_top20(
        "valid",
        questions,
        recall_candidates(questions),
        load_answers(),
        f"bi-encoder top-20 of the first {n_queries} InsuranceQA valid questions, max_length 256",
    )


# -- measuring -----------------------------------------------------------------------------------------


def compare(w: Workload, scores: np.ndarray, ref: np.ndarray, ref_ndcg: float | None) -> dict:
    """Agreement with fp32 (`workloads.agreement`, plus mean |Δscore| and the worst query's overlap)."""
    from rerank_engine.serving.agreement import top_k_overlap

    got = agreement(w, scores, ref)
    out = {
        "max_abs_dscore": got["max_abs_dscore_vs_A"],
        "mean_abs_dscore": float(np.mean(np.abs(scores - ref))) if len(ref) else 0.0,
        "top5_overlap_mean": got["top5_overlap_vs_A"],
        "top5_overlap_min": float(min(top_k_overlap(ref[g], scores[g], 5) for g in w.groups())),
        "ndcg5": got.get("ndcg5"),
    }
    out["ndcg5_delta"] = (
        None if out["ndcg5"] is None or ref_ndcg is None else round(out["ndcg5"] - ref_ndcg, 4)
    )
    out["meets_bar"] = bool(
        out["top5_overlap_mean"] >= BAR_OVERLAP
        and (out["ndcg5_delta"] is None or abs(out["ndcg5_delta"]) <= BAR_NDCG)
    )
    return out


class OpenVinoEngine(CrossEncoderEngine):
    """Our engine (tokenization, batch plan, order restored) with the export's fp32 graph run by
    OpenVINO's CPU runtime (fp32 inference precision) instead of onnxruntime (`--openvino`)."""

    def __init__(self, config):
        import openvino as ov

        super().__init__(config)
        settings = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if config.intra_op_threads:
            settings["INFERENCE_NUM_THREADS"] = config.intra_op_threads
        self.compiled = ov.Core().compile_model(str(self.model_path), "CPU", settings)
        self.request = self.compiled.create_infer_request()

    def run_graph(self, feed):
        return self.request.infer(feed)[self.compiled.output(self.manifest.output)]


class OpenVinoVariant(EngineVariant):
    engine_class = OpenVinoEngine


def build_variants(export_dir: Path, rows: list[Row], threads: int, work: Path) -> dict[str, EngineVariant]:
    variants = {"fp32": EngineVariant(export_dir, precision="fp32", threads=threads, batching=BUCKETED)}
    for row in rows:
        started = time.perf_counter()
        tag = hashlib.sha256(json.dumps(row.describe, sort_keys=True).encode()).hexdigest()[:8]
        folder = derived_export(export_dir, work / f"{export_dir.name}-{row.name}-{tag}", row.build)
        print(f"  built {row.name} in {time.perf_counter() - started:.1f}s")
        variants[row.name] = EngineVariant(folder, precision="int8", threads=threads, batching=BUCKETED)
    return variants


def measure(
    w: Workload, variants: dict[str, EngineVariant], timed: set[str], reps: int, time_queries: int
) -> dict:
    """Scores of every variant on all of `w` (one pass each, for agreement); pairs/s of the `timed` ones on
    the first `time_queries` queries of `w`, `reps` times, interleaved (fp32 first in each repetition)."""
    n = len(w.starts) - 1
    cut = w.starts[min(time_queries, n)] if time_queries else len(w)
    sub = Workload(w.name, w.queries[:cut], w.passages[:cut], [s for s in w.starts if s <= cut], w.max_length)
    scores: dict[str, np.ndarray] = {}
    for name, fn in variants.items():  # also loads sessions and makes first-run allocations
        t = time.perf_counter()
        scores[name] = fn(w).scores
        print(f"  scored {name}: {len(w)} pairs in {time.perf_counter() - t:.1f}s")
    times: dict[str, list[float]] = {name: [] for name in variants if name in timed}
    for rep in range(reps):
        for name in times:
            t = time.perf_counter()
            variants[name](sub)
            times[name].append(time.perf_counter() - t)
        print(f"  rep {rep + 1}/{reps}: " + ", ".join(f"{n} {t[-1]:.1f}s" for n, t in times.items()))
    ref = scores["fp32"]
    ref_ndcg = agreement(w, ref, ref).get("ndcg5")
    fp32_pps = len(sub) / statistics.median(times["fp32"])
    table = {}
    for name in variants:
        row: dict = {"pairs_per_s": None, "ratio_vs_fp32": None, "seconds": None}
        if name in times:
            pps = len(sub) / statistics.median(times[name])
            row = {
                "pairs_per_s": round(pps, 2),
                "ratio_vs_fp32": round(pps / fp32_pps, 3),
                "seconds": [round(t, 3) for t in times[name]],
            }
        table[name] = {**row, **compare(w, scores[name], ref, ref_ndcg)}
    return table, len(sub)


# -- report --------------------------------------------------------------------------------------------


def _fmt(x, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def markdown(result: dict) -> str:
    w = result["workload"]
    lines = [
        f"int8 recipes vs fp32 ONNX, {result['date']}, {result['machine']}; model {result['model']}, "
        f"{result['threads']} threads, bucketed 8,192 tokens; pairs/s on the first {w['timed_pairs']} pairs, "
        f"median of {result['reps']} interleaved reps" + (" (--quick)" if result["quick"] else ""),
        "",
        f"**{w['name']}**: {w['pairs']} pairs, {w['queries']} queries, {w['note']}; "
        f"fp32 NDCG@5 {_fmt(result['fp32_ndcg5'], '.4f')} over {w['labelled_queries']} queries with a "
        f"gold answer among the candidates. Bar: top-5 overlap ≥ {BAR_OVERLAP}, |ΔNDCG@5| ≤ {BAR_NDCG}.",
        "",
        "| recipe | pairs/s | ×fp32 | max \\|Δscore\\| | mean \\|Δscore\\| | top-5 overlap | min overlap "
        "| NDCG@5 | ΔNDCG@5 | meets bar |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in result["rows"].items():
        lines.append(
            f"| {name} | {_fmt(v['pairs_per_s'], '.1f')} | {_fmt(v['ratio_vs_fp32'], '.2f')} "
            f"| {v['max_abs_dscore']:.3g} | {v['mean_abs_dscore']:.3g} | {v['top5_overlap_mean']:.3f} "
            f"| {v['top5_overlap_min']:.2f} | {_fmt(v['ndcg5'], '.4f')} | {_fmt(v['ndcg5_delta'], '+.4f')} "
            f"| {'yes' if v['meets_bar'] else 'no'} |"
        )
    best = result.get("best")
    lines += [
        "",
        f"Fastest recipe meeting the bar and faster than fp32: {best}."
        if best
        else "No int8 recipe meets the bar and is faster than fp32.",
    ]
    return "\n".join(lines) + "\n"


def fastest_meeting_bar(rows: dict) -> str | None:
    ok = {
        k: v
        for k, v in rows.items()
        if k != "fp32" and v["meets_bar"] and v["ratio_vs_fp32"] is not None and v["ratio_vs_fp32"] > 1.0
    }
    return max(ok, key=lambda k: ok[k]["pairs_per_s"]) if ok else None


# -- main ----------------------------------------------------------------------------------------------


def run(args) -> dict:
    from rerank_engine.serving.exporting import resolve_export

    export_dir = Path(args.export) if args.export else resolve_export(args.model, ["fp32"])
    n_queries = 8 if args.quick and not args.synthetic else args.queries
    if args.synthetic:
        w = synthetic_workloads(args.synthetic)[0]
        w.name = "synthetic"
    else:
        w = valid_workload(n_queries)
    shapes = Shapes.of(export_dir)
    rows = dynamic_rows(args.quick)
    if args.per_token:
        rows += per_token_rows(export_dir, args.calib_queries, n_queries)
    if args.nbits:
        rows += nbits_rows()
    if args.sensitivity:
        rows += sensitivity_rows(shapes.layers)
    if args.static:
        rows += static_rows(export_dir, args.calib_queries, n_queries, args.static_methods.split(","))
    if args.rows:
        rows = [r for r in rows if r.name in args.rows.split(",")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    variants = build_variants(export_dir, rows, args.threads, work)
    timed = {"fp32"} | {r.name for r in rows if r.timed}
    recipes = {"fp32": {"method": "none (the export's fp32 graph)"}} | {r.name: r.describe for r in rows}
    if args.openvino:
        variants["openvino_fp32"] = OpenVinoVariant(
            export_dir, precision="fp32", threads=args.threads, batching=BUCKETED
        )
        timed.add("openvino_fp32")
        recipes["openvino_fp32"] = {"method": "the fp32 graph on OpenVINO's CPU runtime", "f32": True}
    table, timed_pairs = measure(w, variants, timed, args.reps, args.time_queries)
    labels = w.labels if w.labels is not None else np.zeros(len(w))
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "model": str(args.model),
        "export": shown_path(export_dir),
        "threads": args.threads,
        "reps": args.reps,
        "quick": bool(args.quick),
        "workload": {
            "name": w.name,
            "pairs": len(w),
            "queries": len(w.starts) - 1,
            "labelled_queries": int(sum(labels[g].sum() > 0 for g in w.groups())),
            "note": w.note,
            "timed_pairs": timed_pairs,
        },
        "fp32_ndcg5": table["fp32"]["ndcg5"],
        "recipes": recipes,
        "rows": table,
    }
    result["best"] = fastest_meeting_bar(table)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.int8_agreement", description=__doc__.splitlines()[0]
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="Hugging Face model folder")
    p.add_argument("--export", default=None, help="its export folder (default: the cached export)")
    p.add_argument("--quick", action="store_true", help="8 valid questions, three recipes")
    p.add_argument("--queries", type=int, default=100, help="valid questions (× their recall top-20)")
    p.add_argument("--synthetic", type=int, default=0, help="N random queries × 20 instead of InsuranceQA")
    p.add_argument("--sensitivity", action="store_true", help="rows quantizing one group / layer only")
    p.add_argument("--static", action="store_true", help="static QDQ rows, one per calibration method")
    p.add_argument(
        "--static-methods",
        default="MinMax",
        help="comma-separated: MinMax, Percentile, Entropy (memory-hungry)",
    )
    p.add_argument("--per-token", action="store_true", help="rows with a scale per token (int8_per_token)")
    p.add_argument("--nbits", action="store_true", help="MatMulNBits rows (needs onnx_ir)")
    p.add_argument("--openvino", action="store_true", help="a row running the fp32 graph on OpenVINO")
    p.add_argument("--rows", default="", help="comma-separated row names to keep (default: all)")
    p.add_argument("--calib-queries", type=int, default=20, help="static: valid questions × 16 pool pairs")
    p.add_argument(
        "--time-queries", type=int, default=0, help="time on the first N queries only (0: all of them)"
    )
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="artifacts/bench/int8", help="where the int8 graphs are built")
    p.add_argument("--json", required=True, help="where to write the JSON (the table goes beside it, .md)")
    args = p.parse_args(argv)
    if args.reps < 3:
        p.error("--reps must be ≥ 3 (medians of at least three repetitions)")
    started = time.perf_counter()
    result = run(args)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    table = markdown(result)
    out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
