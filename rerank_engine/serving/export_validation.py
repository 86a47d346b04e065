"""The export's checks against the PyTorch reference: the fp32 graph's raw logits at the contract's
(batch, sequence) shapes, within `CONTRACT.fp32_atol`; an fp16 / int8 variant's ranking of the probe
queries' passages, by mean top-5 overlap. Each raises an ExportValidationError reporting the largest
difference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rerank_engine.errors import ExportValidationError
from rerank_engine.probe_pairs import probe_groups
from rerank_engine.serving.agreement import ranking_agreement
from rerank_engine.serving.batching import pad_rows
from rerank_engine.serving.export_contract import CONTRACT
from rerank_engine.serving.llm_reranker import PromptEncoder, YesNoPrompt


def cpu_session(path: Path):
    """An onnxruntime session of the graph at `path` on the CPU provider, warnings off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def run_output(session, inputs: list[str], feed: dict[str, np.ndarray]) -> np.ndarray:
    """The contract's output of `session` on `feed`, fed only the graph's `inputs`."""
    return session.run([CONTRACT.output], {k: v for k, v in feed.items() if k in inputs})[0]


def validate_fp32(torch_model, onnx_path: Path, inputs: list[str], atol: float = CONTRACT.fp32_atol) -> dict:
    """Compare raw logits at several (batch, sequence) shapes with padded rows; raise on the largest diff."""
    import torch

    rng = np.random.default_rng(0)
    session = cpu_session(onnx_path)
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
        got = run_output(session, inputs, feed)
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
        session = cpu_session(path)
        return {
            i: _relevance(np.asarray(run_output(session, self.inputs, feed), dtype=np.float32))
            for i, feed in self._feeds()
        }


def _relevance(logits: np.ndarray) -> np.ndarray:
    from rerank_engine.serving.engine import relevance_logits, sigmoid

    return sigmoid(relevance_logits(logits))


def check_ranking(
    probe: ProbeSet, ref: dict[int, np.ndarray], path: Path, what: str, min_top5_overlap: float
) -> dict:
    """Ranking agreement of the graph at `path` (an fp16 / int8 variant, `what` names it) with the PyTorch
    fp32 reference `ref` over the probe; an ExportValidationError below `min_top5_overlap`."""
    agreement = ranking_agreement(ref, probe.onnx_logits(path))
    if agreement["top5_overlap_mean"] < min_top5_overlap:
        raise ExportValidationError(
            f"{what} ranks differently from PyTorch fp32: "
            f"mean top-5 overlap "
            f"{agreement['top5_overlap_mean']:.3f} < {min_top5_overlap} "
            f"(Spearman {agreement['spearman_mean']:.3f}, max |Δscore| "
            f"{agreement['max_abs_diff_score']:.4f})",
            max_abs_diff=agreement["max_abs_diff_score"],
            shape=(len(ref), len(probe.groups[0][1])),
            tolerance=min_top5_overlap,
        )
    return agreement
