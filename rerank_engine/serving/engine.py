"""The scoring engine: an exported cross-encoder served by onnxruntime with length bucketing.

    engine = CrossEncoderEngine(EngineConfig.build(model_dir="artifacts/onnx/<key>"))
    result = engine.score(queries, passages)        # fp32 logits and probabilities, input order
    engine.rerank("waiting period?", passages, top_k=5, threshold=0.5)

Three separate steps: tokenize (CPU, returns ids and true lengths) → forward (device, padded arrays only)
→ post-process (fp32 sigmoid). `score_tokenized` joins them with the batch plan; with
`tokenizer.long_passages: chunk_max` the rows are windows of the passages, batched like any pair, and it
gives each passage its best window's logit (`windows.best_of_windows`) before the sigmoid.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rerank_engine.config import EngineConfig
from rerank_engine.errors import ModelFormatError, ModelNotFoundError, require
from rerank_engine.serving.batching import check_coverage, pad_rows, padding_efficiency, plan_batches
from rerank_engine.serving.export_contract import CONTRACT
from rerank_engine.serving.manifest import Manifest, Variant, read_manifest
from rerank_engine.serving.tokenization import (
    PairTokenizer,
    TokenizedPairs,
    check_long_passages,
    pad_token_id,
)
from rerank_engine.serving.validation import check_pairs
from rerank_engine.serving.windows import best_of_windows

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class ScoreResult:
    """One logit and score per (query, passage); the batch figures count rows (windows with chunk_max)."""

    logits: np.ndarray  # float32, relevance logit (two-logit models: logit[1] - logit[0]); chunk_max: MaxP
    scores: np.ndarray  # float32, sigmoid(logits) = probability of relevance
    n_batches: int
    padding_efficiency: float
    real_tokens: int
    windows_scored: int  # rows forwarded: one per pair, or with chunk_max one per window


@dataclass(frozen=True)
class Ranked:
    index: int  # position in the passages given to rerank()
    passage: str
    score: float
    logit: float


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Numerically stable sigmoid, always computed in fp32."""
    x = np.asarray(logits, dtype=np.float32)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def relevance_logits(out):
    """A cross-encoder's raw output [rows, num_labels] → one relevance logit a row: the logit of a one-logit
    head, l1 − l0 of a two-logit one (softmax[:, 1] == sigmoid(l1 − l0)). numpy arrays and torch tensors."""
    return out[:, 1] - out[:, 0] if out.shape[1] == 2 else out[:, 0]


_OOM_MARKERS = ("out of memory", "failed to allocate", "bad_alloc", "bad allocation")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocation failure (onnxruntime raises its own exception types, told apart by message)."""
    return isinstance(exc, MemoryError) or any(m in str(exc).lower() for m in _OOM_MARKERS)


def cuda_driver_present() -> bool:
    """True where an NVIDIA driver is loadable (cheap probe before asking onnxruntime for CUDA)."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


class CrossEncoderEngine:
    """Loads one exported model once; scores (query, passage) pairs."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.manifest: Manifest = read_manifest(config.model_dir)
        self.session, self.precision = self._open_session()
        self.providers: list[str] = self.session.get_providers()
        self.input_names = [i.name for i in self.session.get_inputs()]
        unknown = [n for n in self.input_names if n not in CONTRACT.inputs]
        missing = [n for n in CONTRACT.required_inputs if n not in self.input_names]
        if unknown or missing:
            raise ModelFormatError(
                f"{self.model_path}: graph inputs {self.input_names} are not a cross-encoder's "
                f"(missing {missing}, unknown {unknown}); expected {list(CONTRACT.required_inputs)} "
                f"and optionally {', '.join(CONTRACT.optional_inputs)}"
            )
        tokenizer = config.tokenizer.served_by(self.manifest.max_length, config.model_dir)
        if tokenizer is not config.tokenizer:
            self.config = config = config.model_copy(update={"tokenizer": tokenizer})
        check_long_passages(config.tokenizer, self.manifest.prompt, config.model_dir)
        self._tokenizer: PairTokenizer | None = None
        pad = pad_token_id(config.model_dir)
        if self.manifest.prompt is not None:  # an LLM reranker's graph pools at the last non-pad token
            pad = self.manifest.prompt.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.pad_id

    # -- loading -------------------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def tokenizer(self) -> PairTokenizer:
        """Built on first use: a rerank actor scores pairs that the tokenize stage tokenized and never
        needs one (building it imports transformers)."""
        if self._tokenizer is None:
            self._tokenizer = PairTokenizer(self.config.model_dir, self.config.tokenizer)
        return self._tokenizer

    @property
    def device(self) -> str:
        return "cuda" if self.providers and self.providers[0] == CUDA else "cpu"

    def _open_session(self):
        ort = require("onnxruntime", package="onnxruntime-gpu")
        cfg, variants = self.config, self.manifest.variants
        want_cuda = cfg.provider == "cuda" or (cfg.provider == "auto" and cuda_driver_present())
        if want_cuda and CUDA in ort.get_available_providers():
            precision = self._pick(["fp16", "fp32"] if cfg.precision == "auto" else [cfg.precision])
            session = self._session(ort, variants[precision], [CUDA, CPU])
            if session.get_providers()[0] == CUDA:
                return session, precision
            log.warning("CUDA provider asked for but not available; falling back to %s", CPU)
            if cfg.provider == "cuda":
                log.warning("provider 'cuda' requested; running on %s instead", session.get_providers())
        if cfg.precision == "fp16":
            log.warning("fp16 needs the CUDA provider, which is not available; running fp32 on CPU")
        # auto on CPU is fp32 (exporting.auto_precision); int8 runs only when asked for
        cpu_order = {"auto": ["fp32"], "fp16": ["fp32"]}.get(cfg.precision, [cfg.precision])
        precision = self._pick(cpu_order)
        return self._session(ort, variants[precision], [CPU]), precision

    def _pick(self, order: list[str]) -> str:
        for precision in order:
            if precision in self.manifest.variants:
                return precision
        raise ModelNotFoundError(
            f"{self.config.model_dir} has no {' or '.join(order)} variant (it has "
            f"{sorted(self.manifest.variants)}); export it with `python -m export --precision {order[0]}`"
        )

    def _session(self, ort, variant: Variant, providers: list[str]):
        file = variant.file
        path = Path(self.config.model_dir) / file
        if not path.resolve().is_relative_to(Path(self.config.model_dir).resolve()):
            raise ModelFormatError(
                f"manifest file {file!r} points outside the model folder {self.config.model_dir}"
            )
        if not path.is_file():
            raise ModelNotFoundError(f"{path} is listed in the manifest but missing")
        for data in variant.external_data:
            if not (path.parent / data).is_file():
                raise ModelNotFoundError(
                    f"{path.parent / data} (external data of {file}) is listed in the manifest but missing"
                )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if self.config.intra_op_threads:
            options.intra_op_num_threads = self.config.intra_op_threads
            options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt graphs
            raise ModelFormatError(f"{path} cannot be loaded by onnxruntime: {exc}") from None
        self.model_path = path
        return session

    # -- the three steps -----------------------------------------------------------------------------

    def tokenize(self, queries: Sequence[str], passages: Sequence[str]) -> TokenizedPairs:
        return self.tokenizer(queries, passages)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids=None) -> np.ndarray:
        """Padded int64 arrays → fp32 relevance logits, one per row."""
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = (
                token_type_ids if token_type_ids is not None else np.zeros_like(input_ids)
            )
        return relevance_logits(np.asarray(self.run_graph(feed), dtype=np.float32))

    def run_graph(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's raw output [rows, num_labels] for one padded batch."""
        (out,) = self.session.run([self.manifest.output], feed)
        return out

    @staticmethod
    def postprocess(logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits)

    # -- composed ------------------------------------------------------------------------------------

    def score_tokenized(self, pairs: TokenizedPairs) -> ScoreResult:
        b, cuda = self.config.batching, self.device == "cuda"
        cheapest = b.cuts == "cheapest" or (b.cuts == "auto" and not cuda)
        plan = plan_batches(  # measured on 2 CPU cores: benchmarks/engine_variants.py
            pairs.lengths,
            max_batch_tokens=b.max_batch_tokens,
            max_batch_rows=b.max_batch_rows,
            pad_multiple=b.pad_multiple or (8 if cuda else 1),
            bucketing=b.bucketing,
            batch_cost_tokens=b.batch_cost_tokens if cheapest else None,
        )
        check_coverage(plan, len(pairs))
        logits = np.full(len(pairs), np.nan, dtype=np.float32)
        filled = np.zeros(len(pairs), dtype=np.int64)
        for batch in plan:
            logits[batch.indices] = self._forward_rows(pairs, batch.indices, batch.padded_length)
            filled[batch.indices] += 1
        if not np.all(filled == 1):
            raise RuntimeError(f"scoring lost or repeated pairs: {np.flatnonzero(filled != 1)[:5].tolist()}")
        if pairs.windows is not None:  # chunk_max: each passage's logit is its best window's
            logits = best_of_windows(logits, pairs.windows)
        return ScoreResult(
            logits=logits,
            scores=self.postprocess(logits),
            n_batches=len(plan),
            padding_efficiency=padding_efficiency(pairs.lengths, plan),
            real_tokens=int(pairs.lengths.sum()),
            windows_scored=len(pairs),
        )

    def _forward_rows(self, pairs: TokenizedPairs, indices: np.ndarray, padded_length: int) -> np.ndarray:
        """Forward the rows `indices`; a batch the device cannot allocate is split in halves and retried."""
        ids, mask = pad_rows([pairs.input_ids[i] for i in indices], padded_length, self.pad_id)
        types = None
        if pairs.token_type_ids is not None and "token_type_ids" in self.input_names:
            types, _ = pad_rows([pairs.token_type_ids[i] for i in indices], padded_length, 0)
        try:
            return self.forward(ids, mask, types)
        except Exception as exc:
            if len(indices) < 2 or not is_out_of_memory(exc):
                raise
        half = len(indices) // 2
        log.warning(
            "a batch of %d × %d tokens ran out of memory; retrying in halves", len(indices), padded_length
        )
        return np.concatenate(
            [
                self._forward_rows(pairs, indices[:half], padded_length),
                self._forward_rows(pairs, indices[half:], padded_length),
            ]
        )

    def score(self, queries: Sequence[str], passages: Sequence[str]) -> ScoreResult:
        """Score pairs in input order. Raises InputError naming the first pair that cannot be scored."""
        check_pairs(queries, passages)
        return self.score_tokenized(self.tokenize(queries, passages))

    def rerank(
        self, query: str, passages: Sequence[str], top_k: int = 5, threshold: float | None = None
    ) -> list[Ranked]:
        """One query: score, sort by probability (ties by input position), keep top_k, drop < threshold."""
        if top_k < 1:
            raise ValueError(f"top_k must be ≥ 1, got {top_k}")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a probability in [0, 1], got {threshold}")
        if len(passages) == 0:
            return []
        result = self.score([query] * len(passages), passages)
        order = np.lexsort((np.arange(len(passages)), -result.scores))[:top_k]
        ranked = [
            Ranked(int(i), passages[i], float(result.scores[i]), float(result.logits[i])) for i in order
        ]
        if threshold is not None:
            ranked = [r for r in ranked if r.score >= threshold]
        return ranked
