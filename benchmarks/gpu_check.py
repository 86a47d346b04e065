"""GPU check (issue #9): PyTorch fp16 against our ONNX fp16 on the CUDA provider, both length-bucketed with
the same batch plans, over a sweep of `max_batch_tokens` × `max_batch_rows`; pairs/s, model FLOP
utilisation against the GPU's dense fp16 peak, and parity of fp16 against fp32. Meant to finish in
≤ 8 minutes on one H100 (`--budget-s` stops the sweep early and says so).

    python -m benchmarks.gpu_check [--model models/insurance-minilm-l6-ce] [--pairs 20000] \
        --json reports/gpu/latest.json

Where CUDA is absent (torch without CUDA, or onnxruntime without the CUDA provider) the CUDA parts are
skipped, and say so; a small CPU run of the same code paths (PyTorch fp32 and ONNX fp32, bucketed, and
their parity) keeps the script tested on machines without a GPU.

Pairs: InsuranceQA test questions, each with its gold answers and InsuranceQA's own negatives up to 20
(no recall index needed), when the data extra is installed; else random word pairs. Tokenization is done
once, up front (the job tokenizes in a CPU stage); timings cover padding, host→device copies and the
forward pass.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import DEFAULT_MODEL, machine
from benchmarks.variants import Shapes
from benchmarks.workloads import synthetic_workloads
from rerank_engine.serving.agreement import spearman, top_k_overlap
from rerank_engine.serving.batching import pad_rows, plan_batches

# Dense (no sparsity) fp16/bf16 tensor-core peak of an H100 SXM, TFLOP/s (NVIDIA's datasheet: 1,979 with
# sparsity). The PCIe card's is 756.
PEAK_FP16_TFLOPS = {"H100 SXM": 989.0, "H100 PCIe": 756.0, "H200": 989.0}
SWEEP = [(8192, 128), (16384, 256), (32768, 256), (32768, 512), (65536, 512), (65536, 1024), (131072, 1024)]
QUICK_SWEEP = [(8192, 128), (32768, 512)]


def load_pairs(n: int, synthetic: bool) -> tuple[list[str], list[str], str]:
    """(queries, passages, description): grouped by query, 20 pairs a query."""
    if not synthetic:
        try:
            from rerank_engine.data.insuranceqa import load_answers, load_split

            answers = load_answers()
            qs, ps = [], []
            for q in load_split("test"):
                docs = (list(q.answers) + list(q.negatives))[:20]
                qs += [q.text] * len(docs)
                ps += [answers[d] for d in docs]
                if len(ps) >= n:
                    break
            return qs[:n], ps[:n], "InsuranceQA test: gold answers + InsuranceQA negatives, 20 a question"
        except ImportError:
            pass
    w = synthetic_workloads(max(1, -(-n // 20)))[0]
    return w.queries[:n], w.passages[:n], "synthetic random word pairs, 20 a query"


def peak_tflops(name: str) -> tuple[float, str]:
    for key, value in PEAK_FP16_TFLOPS.items():
        if all(part in name for part in key.split()):
            return value, key
    if "H100" in name:
        return PEAK_FP16_TFLOPS["H100 SXM"], "H100 SXM (assumed)"
    return PEAK_FP16_TFLOPS["H100 SXM"], f"H100 SXM (no table entry for {name!r})"


class TorchBucketed:
    """PyTorch on the same batch plans as the engine: pad each batch to its longest row, forward, logit."""

    def __init__(self, model_dir: str | Path, device: str, dtype):
        import torch
        from transformers import AutoModelForSequenceClassification

        self.torch, self.device = torch, device
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32)
            .eval()
            .to(device=device, dtype=dtype)
        )
        self.takes_types = "token_type_ids" in inspect.signature(self.model.forward).parameters

    def __call__(self, pairs, plan, pad_id: int) -> np.ndarray:
        from rerank_engine.serving.engine import relevance_logits

        torch = self.torch
        out = []
        with torch.inference_mode():
            for batch in plan:
                ids, mask = pad_rows([pairs.input_ids[i] for i in batch.indices], batch.padded_length, pad_id)
                feed = {"input_ids": ids, "attention_mask": mask}
                if self.takes_types and pairs.token_type_ids is not None:
                    feed["token_type_ids"], _ = pad_rows(
                        [pairs.token_type_ids[i] for i in batch.indices], batch.padded_length, 0
                    )
                feed = {k: torch.from_numpy(v).to(self.device, non_blocking=True) for k, v in feed.items()}
                logits = self.model(**feed).logits.float()
                out.append((batch.indices, relevance_logits(logits)))
        logits = np.empty(len(pairs), dtype=np.float32)
        for indices, values in out:  # .cpu() syncs once per batch, after every forward has been queued
            logits[indices] = values.cpu().numpy()
        return logits


def timed(fn, reps: int) -> tuple[float, np.ndarray]:
    fn()  # warm-up (kernels, allocator, ORT's first run)
    times, result = [], None
    for _ in range(reps):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def parity(ref: np.ndarray, got: np.ndarray, group: int = 20) -> dict:
    """fp32 probabilities `ref` vs `got`: max |Δscore|, per-group top-5 overlap and Spearman means."""
    from rerank_engine.serving.engine import sigmoid

    a, b = sigmoid(ref), sigmoid(got)
    groups = [slice(i, min(i + group, len(a))) for i in range(0, len(a), group)]
    return {
        "max_abs_dscore": float(np.max(np.abs(a - b))),
        "max_abs_dlogit": float(np.max(np.abs(ref - got))),
        "top5_overlap_mean": float(np.mean([top_k_overlap(a[g], b[g], 5) for g in groups])),
        "spearman_mean": float(np.nanmean([spearman(a[g], b[g]) for g in groups])),
        "nonfinite": int(np.sum(~np.isfinite(got))),
    }


def run(args) -> dict:
    import onnxruntime as ort
    import torch

    from rerank_engine.config import EngineConfig, TokenizerConfig
    from rerank_engine.serving.engine import CUDA, CrossEncoderEngine
    from rerank_engine.serving.exporting import export_model, resolve_export
    from rerank_engine.serving.tokenization import PairTokenizer

    cuda = torch.cuda.is_available() and CUDA in ort.get_available_providers()
    result = {
        "machine": machine(),
        "model": str(args.model),
        "cuda": cuda,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "ort_providers_available": ort.get_available_providers(),
        "skipped": [],
    }
    if not cuda:
        why = (
            "torch sees no CUDA device"
            if not torch.cuda.is_available()
            else "no CUDA provider in onnxruntime"
        )
        for part in (
            "PyTorch fp16 (CUDA)",
            "ONNX fp16 (CUDA provider)",
            "fp16 vs fp32 parity",
            "MFU vs peak",
        ):
            result["skipped"].append(f"{part}: {why}")
            print(f"SKIPPED {part}: {why}")
    precisions = ["fp32", "fp16"] if cuda else ["fp32"]
    if args.export:
        export_dir = Path(args.export)
    elif cuda:
        export_dir = export_model(args.model, precisions=precisions)  # the cache, keyed by content
    else:
        export_dir = resolve_export(args.model, precisions)
    n = args.pairs if cuda else min(args.pairs, args.cpu_pairs)
    queries, passages, source = load_pairs(n, args.synthetic)
    tokenizer = PairTokenizer(export_dir, TokenizerConfig(max_length=args.max_length))
    pairs = tokenizer(queries, passages)
    flops = Shapes.of(export_dir).flops(pairs.lengths)
    result |= {
        "pairs": len(pairs),
        "pairs_source": source,
        "max_length": args.max_length,
        "mean_tokens": round(float(pairs.lengths.mean()), 1),
        "model_gflop": round(flops / 1e9, 1),
    }

    device, dtype, precision = ("cuda", torch.float16, "fp16") if cuda else ("cpu", torch.float32, "fp32")
    if not cuda:
        torch.set_num_threads(args.cpu_threads)
    peak, peak_name = (None, None)
    if cuda:
        result["gpu"] = torch.cuda.get_device_name(0)
        peak, peak_name = peak_tflops(result["gpu"])
        result["peak_fp16_tflops"] = {"value": peak, "assumed_card": peak_name}
    torch_model = TorchBucketed(args.model, device, dtype)
    sweep = (QUICK_SWEEP if args.quick or not cuda else SWEEP)[: (None if cuda else 1)]
    rows, started, engines = [], time.perf_counter(), {}
    for max_tokens, max_rows in sweep:
        if time.perf_counter() - started > args.budget_s:
            result["skipped"].append(
                f"sweep stopped at {max_tokens}/{max_rows}: past --budget-s {args.budget_s}"
            )
            break
        plan = plan_batches(pairs.lengths, max_batch_tokens=max_tokens, max_batch_rows=max_rows)
        engine = CrossEncoderEngine(
            EngineConfig.build(
                model_dir=export_dir,
                precision=precision,
                provider="cuda" if cuda else "cpu",
                intra_op_threads=0 if cuda else args.cpu_threads,
                tokenizer={"max_length": args.max_length},
                batching={"max_batch_tokens": max_tokens, "max_batch_rows": max_rows},
            )
        )
        engines[(max_tokens, max_rows)] = engine

        def torch_run(plan=plan):
            out = torch_model(pairs, plan, tokenizer.pad_id)
            if cuda:
                torch.cuda.synchronize()
            return out

        t_torch, torch_logits = timed(torch_run, args.reps)
        t_onnx, onnx_result = timed(lambda e=engine: e.score_tokenized(pairs), args.reps)
        row = {
            "max_batch_tokens": max_tokens,
            "max_batch_rows": max_rows,
            "batches": len(plan),
            "padding_efficiency": round(onnx_result.padding_efficiency, 4),
            "onnx_provider": engine.providers[0],
            f"torch_{precision}_pairs_per_s": round(len(pairs) / t_torch, 1),
            f"onnx_{precision}_pairs_per_s": round(len(pairs) / t_onnx, 1),
            "onnx_vs_torch": round(t_torch / t_onnx, 3),
            "torch_vs_onnx_max_abs_dscore": parity(torch_logits, onnx_result.logits)["max_abs_dscore"],
        }
        if peak:
            row["torch_mfu"] = round(flops / t_torch / (peak * 1e12), 4)
            row["onnx_mfu"] = round(flops / t_onnx / (peak * 1e12), 4)
        rows.append(row)
        print(json.dumps(row))
    result["sweep"] = rows
    if rows:
        best_torch = max(rows, key=lambda r: r[f"torch_{precision}_pairs_per_s"])
        best_onnx = max(rows, key=lambda r: r[f"onnx_{precision}_pairs_per_s"])
        ratio = best_onnx[f"onnx_{precision}_pairs_per_s"] / best_torch[f"torch_{precision}_pairs_per_s"]
        result["best"] = {"torch": best_torch, "onnx": best_onnx, "onnx_vs_torch_best": round(ratio, 3)}
        if cuda:
            result["targets"] = [
                {
                    "target": "ONNX fp16 ≥ 1.3× PyTorch fp16 pairs/s (best of each)",
                    "value": round(ratio, 3),
                    "met": ratio >= 1.3,
                },
                {
                    "target": "≥ 25 % of dense fp16 peak (best ONNX)",
                    "value": best_onnx["onnx_mfu"],
                    "met": best_onnx["onnx_mfu"] >= 0.25,
                },
            ]

    # Parity: fp16 against the fp32 reference (PyTorch fp32 on the same device) on a subset.
    if cuda and rows:
        k = min(len(pairs), args.parity_pairs)
        sub = tokenizer(queries[:k], passages[:k])
        plan = plan_batches(sub.lengths, max_batch_tokens=16384, max_batch_rows=256)
        ref = TorchBucketed(args.model, device, torch.float32)(sub, plan, tokenizer.pad_id)
        best_key = (best_onnx["max_batch_tokens"], best_onnx["max_batch_rows"])
        result["parity_vs_fp32"] = {
            "pairs": k,
            "torch_fp16": parity(ref, torch_model(sub, plan, tokenizer.pad_id)),
            "onnx_fp16": parity(ref, engines[best_key].score_tokenized(sub).logits),
        }
    elif rows:  # CPU: the same code paths in fp32; PyTorch and ONNX must agree to export tolerance
        result["parity_cpu_fp32"] = {"torch_vs_onnx_max_abs_dscore": rows[0]["torch_vs_onnx_max_abs_dscore"]}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="Hugging Face model folder")
    p.add_argument("--export", default=None, help="its export folder (default: exported/cached here)")
    p.add_argument("--pairs", type=int, default=20_000)
    p.add_argument("--cpu-pairs", type=int, default=200, help="pairs for the CPU run where CUDA is absent")
    p.add_argument("--cpu-threads", type=int, default=2)
    p.add_argument("--parity-pairs", type=int, default=4000)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="two sweep points only")
    p.add_argument("--synthetic", action="store_true", help="random word pairs instead of InsuranceQA")
    p.add_argument("--budget-s", type=float, default=360.0, help="stop the sweep after this many seconds")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    started = time.perf_counter()
    result = run(args)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result.get(k) for k in ("cuda", "skipped", "best", "targets", "wall_s")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
