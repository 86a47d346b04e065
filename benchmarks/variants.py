"""The benchmarks' model shapes and FLOPs, and the variants that score a workload (issue #9).

- `Shapes`: a model's encoder shapes and FLOPs per pair; `Gemm`: the machine's GEMM rates at those shapes.
- A `NaiveTorch` (the seed's reranker), B `STCrossEncoder` (sentence-transformers), C `EngineVariant` (our
  engine, one config) and `engine_variants` (the C grid `benchmarks.throughput` times).
- `experiment_variants`: other int8 graphs built from the export's fp32 graph (`derived_export`, static QDQ
  calibrated by `CalibrationReader`, which `benchmarks.int8_agreement` uses too).
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.workloads import Workload

# -- model shapes and FLOPs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Shapes:
    layers: int
    hidden: int
    ffn: int

    @classmethod
    def of(cls, model_dir: str | Path) -> Shapes:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        return cls(int(cfg["num_hidden_layers"]), int(cfg["hidden_size"]), int(cfg["intermediate_size"]))

    def flops(self, lengths: np.ndarray) -> float:
        """Encoder FLOPs (2 per multiply-add) for pairs of these true lengths: projections, FFN, attention."""
        n = np.asarray(lengths, dtype=np.float64)
        linear = 2.0 * n * (4 * self.hidden * self.hidden + 2 * self.hidden * self.ffn)
        attention = 4.0 * n * n * self.hidden
        return float(self.layers * np.sum(linear + attention))


class Gemm:
    """The machine's limit for this model's shapes: the FFN GEMMs ([tokens, h]×[h, ffn] then
    [tokens, ffn]×[ffn, h]) in PyTorch fp32, onnxruntime fp32 and onnxruntime dynamic int8
    (DynamicQuantizeLinear + MatMulInteger, what the int8 export runs). `measure` times them once in every
    repetition, between the variants, so the GEMM rate sees the same machine load as the model does."""

    KINDS = ("torch_fp32_gflops", "ort_fp32_gflops", "ort_int8_gflops")

    def __init__(self, shapes: Shapes, tokens: int, threads: int):
        import onnx
        import onnxruntime as ort
        import torch
        from onnx import TensorProto, helper, numpy_helper
        from onnxruntime.quantization import QuantType, quantize_dynamic

        h, f = shapes.hidden, shapes.ffn
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((tokens, h), dtype=np.float32)
        w1 = rng.standard_normal((h, f), dtype=np.float32) * 0.05
        w2 = rng.standard_normal((f, h), dtype=np.float32) * 0.05
        self.flops = 2.0 * tokens * h * f * 2
        self.describe = {"tokens": tokens, "shapes": f"[{tokens},{h}]x[{h},{f}] + [{tokens},{f}]x[{f},{h}]"}
        self.samples = {k: [] for k in self.KINDS}
        torch.set_num_threads(threads)
        self.torch = torch
        self.tw = (torch.from_numpy(self.x), torch.from_numpy(w1), torch.from_numpy(w2))
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w1"], ["y"]), helper.make_node("MatMul", ["y", "w2"], ["z"])],
            "ffn",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", h])],
            [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["t", h])],
            [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 9  # onnx 1.23 defaults to IR 14, which onnxruntime 1.31 rejects
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3
        self.sessions = {}
        with tempfile.TemporaryDirectory() as tmp:
            fp32, int8 = Path(tmp) / "ffn.onnx", Path(tmp) / "ffn_int8.onnx"
            onnx.save(model, str(fp32))
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
            for kind, path in (("ort_fp32_gflops", fp32), ("ort_int8_gflops", int8)):
                self.sessions[kind] = ort.InferenceSession(
                    str(path), options, providers=["CPUExecutionProvider"]
                )
        self.sample()  # warm-up, not kept
        self.samples = {k: [] for k in self.KINDS}

    def sample(self) -> None:
        """One timing of each kind (best of 3 calls: the limit, not the noise)."""
        tx, tw1, tw2 = self.tw
        fns = {"torch_fp32_gflops": lambda: (tx @ tw1) @ tw2}
        for kind, sess in self.sessions.items():
            fns[kind] = lambda s=sess: s.run(None, {"x": self.x})
        with self.torch.inference_mode():
            for kind, fn in fns.items():
                best = float("inf")
                for _ in range(3):
                    t = time.perf_counter()
                    fn()
                    best = min(best, time.perf_counter() - t)
                self.samples[kind].append(self.flops / best / 1e9)

    def rates(self, since: int = 0) -> dict:
        """Median GFLOP/s of each kind over the samples from index `since` on."""
        return {
            **self.describe,
            **{k: round(statistics.median(v[since:]), 1) for k, v in self.samples.items() if v[since:]},
            "samples": len(self.samples["torch_fp32_gflops"][since:]),
        }


# -- the variants --------------------------------------------------------------------------------------


@dataclass
class Run:
    scores: np.ndarray
    padding_efficiency: float | None


class NaiveTorch:
    """A: per query, HF tokenizer padding=True over its pairs, PyTorch fp32 forward, sigmoid."""

    def __init__(self, model_dir: str | Path, threads: int):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch.set_num_threads(threads)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), dtype=torch.float32
        ).eval()

    def score_group(self, query: str, passages: list[str], max_length: int) -> tuple[np.ndarray, int, int]:
        from rerank_engine.serving.engine import relevance_logits

        enc = self.tokenizer(
            [query] * len(passages),
            passages,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        with self.torch.inference_mode():
            logits = self.model(**enc).logits.float()
        mask = enc["attention_mask"]
        return self.torch.sigmoid(relevance_logits(logits)).numpy(), int(mask.sum()), int(mask.numel())

    def __call__(self, w: Workload) -> Run:
        scores, real, padded = [], 0, 0
        for g in w.groups():
            s, r, p = self.score_group(w.queries[g.start], w.passages[g], w.max_length)
            scores.append(s)
            real, padded = real + r, padded + p
        return Run(np.concatenate(scores).astype(np.float32), real / padded)


class STCrossEncoder:
    """B: sentence-transformers CrossEncoder.predict, batch size 32, sigmoid (the local folder, no hub)."""

    def __init__(self, model_dir: str | Path, threads: int):
        import torch
        from sentence_transformers import CrossEncoder

        torch.set_num_threads(threads)
        self.model_dir, self.torch, self.cls = str(model_dir), torch, CrossEncoder
        self.models = {}

    def _model(self, max_length: int):
        if max_length not in self.models:
            self.models[max_length] = self.cls(
                self.model_dir,
                device="cpu",
                max_length=max_length,
                local_files_only=True,
                activation_fn=self.torch.nn.Sigmoid(),
                model_kwargs={"dtype": self.torch.float32},
            )
        return self.models[max_length]

    def __call__(self, w: Workload) -> Run:
        model = self._model(w.max_length)
        scores = model.predict(
            list(zip(w.queries, w.passages, strict=True)), batch_size=32, show_progress_bar=False
        )
        return Run(np.asarray(scores, dtype=np.float32).reshape(-1), None)


class EngineVariant:
    """C: our engine, one config; an engine per max_length (the tokenizer setting is part of the config)."""

    def __init__(self, export_dir: str | Path, *, precision: str, threads: int, batching: dict):
        self.kwargs = dict(
            model_dir=export_dir,
            precision=precision,
            provider="cpu",
            intra_op_threads=threads,
            batching=batching,
        )
        self.engines = {}

    engine_class = None  # None: rerank_engine.serving.engine.CrossEncoderEngine

    def engine(self, max_length: int):
        from rerank_engine.config import EngineConfig
        from rerank_engine.serving.engine import CrossEncoderEngine

        if max_length not in self.engines:
            self.engines[max_length] = (self.engine_class or CrossEncoderEngine)(
                EngineConfig.build(**self.kwargs, tokenizer={"max_length": max_length})
            )
        return self.engines[max_length]

    def __call__(self, w: Workload) -> Run:
        result = self.engine(w.max_length).score(w.queries, w.passages)
        return Run(result.scores, result.padding_efficiency)


def engine_variants(export_dir: Path, threads: int, quick: bool) -> dict[str, EngineVariant]:
    """The C grid: fp32 / int8, bucketed / input order, a few token budgets (fewer with --quick)."""
    grid = [
        ("fp32", False, 8192),
        ("fp32", True, 8192),
        ("int8", False, 8192),
        ("int8", True, 8192),
        ("int8", True, 2048),
    ]
    if not quick:
        grid += [("fp32", True, 2048), ("int8", True, 4096), ("int8", True, 16384), ("int8", True, 32768)]
    return {
        f"C_onnx_{p}_{'bucketed' if b else 'inputorder'}_{t}": EngineVariant(
            export_dir,
            precision=p,
            threads=threads,
            batching={"bucketing": b, "max_batch_tokens": t, "max_batch_rows": max(128, t // 32)},
        )
        for p, b, t in grid
    }


# -- experiments: other int8 graphs, built here from the export's fp32 graph ----------------------------


def derived_export(export_dir: Path, out: Path, build: Callable[[Path, Path], None]) -> Path:
    """A copy of the export folder (tokenizer, config, manifest) whose model_int8.onnx is built by `build`."""
    from rerank_engine.serving.manifest import Variant, read_manifest, write_manifest

    if (out / "model_int8.onnx").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in export_dir.iterdir():
        if f.is_file() and not f.name.endswith(".onnx"):
            shutil.copy2(f, tmp / f.name)
    manifest = read_manifest(export_dir)
    build(export_dir / manifest.variants["fp32"].file, tmp / "model_int8.onnx")
    if "int8" not in manifest.variants:  # an fp32-only export: list the graph built here
        manifest.variants["int8"] = Variant(file="model_int8.onnx", precision="int8")
        write_manifest(tmp, manifest)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


class CalibrationReader:
    """Calibration batches for static quantization: tokenized InsuranceQA valid pairs, one query per batch
    (each question's first 2 positives and 14 negatives, questions `start` to `start + n_queries`)."""

    def __init__(self, export_dir: Path, n_queries: int, start: int = 0):
        from rerank_engine.config import TokenizerConfig
        from rerank_engine.data.insuranceqa import load_answers, load_split
        from rerank_engine.serving.batching import pad_rows
        from rerank_engine.serving.manifest import read_manifest
        from rerank_engine.serving.tokenization import PairTokenizer

        answers = load_answers()
        tok = PairTokenizer(export_dir, TokenizerConfig(max_length=256))
        inputs = read_manifest(export_dir).inputs
        self.feeds = []
        for q in load_split("valid")[start : start + n_queries]:
            docs = list(q.answers[:2]) + list(q.negatives[:14])
            pairs = tok([q.text] * len(docs), [answers[d] for d in docs])
            length = int(pairs.lengths.max())
            ids, mask = pad_rows(pairs.input_ids, length, tok.pad_id)
            types, _ = pad_rows(pairs.token_type_ids, length, 0)
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            self.feeds.append({k: v for k, v in feed.items() if k in inputs})
        self._it = iter(self.feeds)

    def get_next(self):
        return next(self._it, None)


def experiment_variants(export_dir: Path, threads: int, out_root: Path) -> dict[str, EngineVariant]:
    """int8 per-tensor, uint8 weights, static QDQ (MatMul only, calibrated on valid), and one thread."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    def dynamic(per_channel: bool, weight_type):
        return lambda src, dst: quantize_dynamic(
            str(src), str(dst), weight_type=weight_type, per_channel=per_channel
        )

    def static(src, dst):
        quantize_static(
            str(src),
            str(dst),
            CalibrationReader(export_dir, 32),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )

    builds = {
        "pertensor": dynamic(False, QuantType.QInt8),
        "u8weights": dynamic(True, QuantType.QUInt8),
        "static_qdq": static,
    }
    out = {}
    bucketed = {"bucketing": True, "max_batch_tokens": 8192}
    for name, build in builds.items():
        try:
            folder = derived_export(Path(export_dir), out_root / f"{Path(export_dir).name}-{name}", build)
        except Exception as exc:  # an experiment that cannot be built is reported, not fatal
            print(f"experiment {name}: could not build ({type(exc).__name__}: {exc})")
            continue
        out[f"X_onnx_int8_{name}_bucketed_8192"] = EngineVariant(
            folder, precision="int8", threads=threads, batching=bucketed
        )
    out["X_onnx_int8_bucketed_8192_1thread"] = EngineVariant(
        export_dir, precision="int8", threads=1, batching=bucketed
    )
    return out
