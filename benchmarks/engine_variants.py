"""Side-by-side engine variants on the same real pairs: ONNX fp32 / int8, with and without the ORT
transformer optimizer, unbucketed / bucketed with greedy cuts / bucketed with the cheapest cuts. Prints
pairs/s (median of reps, variants interleaved so machine noise hits all alike), ratios to fp32 unbucketed,
and padding efficiency.

    python -m benchmarks.engine_variants [--model models/insurance-minilm-l6-ce] [--queries 40] [--reps 3]

Pairs: recall top-20 of the first N InsuranceQA test questions over all answers (needs the data extra).
`python -m benchmarks.throughput` runs this grid next to the PyTorch and sentence-transformers baselines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from rerank_engine.config import EngineConfig
from rerank_engine.serving.engine import CrossEncoderEngine
from rerank_engine.serving.exporting import export_model


def real_pairs(n_queries: int) -> tuple[list[str], list[str]]:
    """The `real` workload of `benchmarks.throughput` (bi-encoder top-20 over all InsuranceQA answers)."""
    from benchmarks.workloads import insuranceqa_workloads

    real, _ = insuranceqa_workloads(n_queries, 0)
    return real.queries, real.passages


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.engine_variants")
    p.add_argument("--model", default="models/insurance-minilm-l6-ce")
    p.add_argument("--queries", type=int, default=40)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="artifacts/bench")
    args = p.parse_args(argv)
    queries, passages = real_pairs(args.queries)
    plain = export_model(args.model, Path(args.out) / "plain", precisions=["fp32", "int8"])
    opt = export_model(args.model, Path(args.out) / "optimized", precisions=["fp32", "int8"], optimize=True)
    batchings = {  # the CPU default is the last: no padding to a multiple of 8, cheapest cuts
        "unbucketed": {"bucketing": False, "pad_multiple": 8},
        "bucketed": {"cuts": "greedy", "pad_multiple": 8},
        "bucketed_cheapest_cuts": {"cuts": "cheapest", "pad_multiple": 1},
    }
    variants = {}
    for name, folder in (("plain", plain), ("optimized", opt)):
        for precision in ("fp32", "int8"):
            for batching, settings in batchings.items():
                if name == "optimized" and batching == "bucketed_cheapest_cuts":
                    continue
                variants[f"{precision}/{name}/{batching}"] = CrossEncoderEngine(
                    EngineConfig.build(
                        model_dir=folder,
                        precision=precision,
                        intra_op_threads=args.threads,
                        batching=settings,
                    )
                )
    pairs = {name: e.tokenize(queries, passages) for name, e in variants.items()}
    times = {name: [] for name in variants}
    results = {}
    for _ in range(args.reps):
        for name, engine in variants.items():
            t = time.perf_counter()
            results[name] = engine.score_tokenized(pairs[name])
            times[name].append(time.perf_counter() - t)
    base = "fp32/plain/unbucketed"
    ref = results[base].scores
    table = {}
    for name in variants:
        pps = len(passages) / statistics.median(times[name])
        table[name] = {
            "pairs_per_s": round(pps, 1),
            "ratio_vs_fp32_unbucketed": round(pps * statistics.median(times[base]) / len(passages), 2),
            "padding_efficiency": round(results[name].padding_efficiency, 3),
            "max_abs_dscore_vs_fp32": float(np.max(np.abs(results[name].scores - ref))),
        }
    print(json.dumps({"pairs": len(passages), "threads": args.threads, "variants": table}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
