"""Score fusion: the reranker's logit plus the bi-encoder's cosine, read as one calibrated probability.

The cross-encoder and the bi-encoder know different things: the first reads query and passage together,
the second was trained on a billion pairs. On InsuranceQA valid the shipped reranker alone barely moves
NDCG@5 past recall; the two together do better than either (the figures are in `fusion.json`'s record
and in docs/quality.md). Fusion is the standard remedy (score interpolation) and costs nothing at run time:
the recall stage already hands every candidate's cosine to the rerank stage.

    fused logit = scale · (logit + recall_weight · recall_score) + bias
    score       = sigmoid(fused logit)

`fit` chooses `recall_weight` on labelled questions (valid, never test) for the best NDCG@k of the rerank
top-k, then `scale` and `bias` by logistic regression of relevance on `logit + recall_weight · cosine`
over every candidate (Platt scaling), so the score reads as a probability of relevance. The threshold
is then calibrated on the fused score and kept in the same record (`jobs.calibrate` does all three).

`fusion.json` (`score_policy.FUSION_FILE`) lives beside the model, bound to the reranker's model id and
to the bi-encoder whose cosines it was fitted on: the job applies it only where both match
(`JobConfig.fusion`, resolved by `rerank_engine.quality.score_policy`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rerank_engine.errors import InputError, ScaleMismatchError
from rerank_engine.files import read_json_record, write_json
from rerank_engine.quality.metrics import ndcg_at_k

WEIGHTS = tuple(float(w) for w in np.arange(0.0, 60.01, 2.5))  # recall_weight grid (cosine units)


@dataclass(frozen=True, kw_only=True)
class Fusion:
    recall_weight: float
    scale: float = 1.0
    bias: float = 0.0
    model_id: str  # the reranker the weights were fitted for
    recall_model: str  # the bi-encoder whose cosines they were fitted on
    threshold: float | None = None  # calibrated on the fused score
    calibration: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if not all(np.isfinite([self.recall_weight, self.scale, self.bias])):
            raise ValueError(f"fusion weights must be finite: {self.weights()}")
        if self.scale <= 0:
            raise ValueError(f"fusion scale must be positive (it keeps the order), got {self.scale}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"a probability threshold must lie in [0, 1], got {self.threshold}")

    def weights(self) -> dict[str, float]:
        return {"recall_weight": self.recall_weight, "scale": self.scale, "bias": self.bias}

    def fused_logits(self, logits, recall_scores) -> np.ndarray:
        logits = np.asarray(logits, dtype=np.float64)
        recall_scores = np.asarray(recall_scores, dtype=np.float64)
        return self.scale * (logits + self.recall_weight * recall_scores) + self.bias

    def scores(self, logits, recall_scores) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.fused_logits(logits, recall_scores)))

    def score_id(self) -> str:
        """What the fused scores are scores of: thresholds calibrated on them are bound to this."""
        return f"{self.model_id}+recall({self.recall_model})x{self.recall_weight:g}"

    def to_dict(self) -> dict:
        return {
            **self.weights(),
            "model_id": self.model_id,
            "recall_model": self.recall_model,
            "threshold": self.threshold,
            "calibration": self.calibration,
        }

    def check(self, *, model_id: str) -> None:
        """Raise ScaleMismatchError unless these weights were fitted for `model_id`."""
        if model_id != self.model_id:
            raise ScaleMismatchError(
                f"fusion weights fitted for model {self.model_id!r}, not for {model_id!r}; "
                "recalibrate with `python -m jobs.calibrate`"
            )

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Fusion:
        """The fusion file at `path`; InputError naming the file where a value is not a fusion's."""
        data = read_json_record(
            path, ("recall_weight", "scale", "bias", "model_id", "recall_model"), "fusion file"
        )
        try:
            return cls(
                recall_weight=float(data["recall_weight"]),
                scale=float(data["scale"]),
                bias=float(data["bias"]),
                model_id=data["model_id"],
                recall_model=data["recall_model"],
                threshold=None if data.get("threshold") is None else float(data["threshold"]),
                calibration=data.get("calibration", {}),
            )
        except (TypeError, ValueError) as exc:
            raise InputError(f"{path} is not a valid fusion file: {exc}") from None


def logit_of(probabilities) -> np.ndarray:
    """The logits behind stored fp32 probabilities (clipped where fp32 has no room left)."""
    p = np.clip(np.asarray(probabilities, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


# -- fitting (on labelled valid questions) ---------------------------------------------------------------


def mean_ndcg(
    candidates: Sequence[Sequence[str]],
    logits: Sequence[np.ndarray],
    recall_scores: Sequence[np.ndarray],
    relevant: Sequence[set],
    w: float,
    k: int,
) -> float:
    """Mean NDCG@k (`rerank_engine.quality.metrics`) of each question's candidates ordered by logit + w ·
    cosine, ties by id as the job breaks them."""
    values = []
    for ids, lg, rs, rel in zip(candidates, logits, recall_scores, relevant, strict=True):
        z = np.asarray(lg, np.float64) + w * np.asarray(rs, np.float64)
        order = np.lexsort((np.asarray(ids), -z))
        values.append(ndcg_at_k([ids[i] for i in order], rel, k))
    return float(np.mean(values)) if values else 0.0


def platt(z: np.ndarray, y: np.ndarray, l2: float = 1e-6, iterations: int = 100) -> tuple[float, float]:
    """(scale, bias) of the logistic regression y ~ sigmoid(scale · z + bias): Newton's method on the
    standardised z from zero (where the loss is well curved), with step halving."""
    z, y = np.asarray(z, np.float64), np.asarray(y, np.float64)
    if not (0 < y.sum() < len(y)):
        raise InputError("Platt scaling needs both relevant and irrelevant candidates")
    mu, sd = z.mean(), z.std() or 1.0
    x = np.stack([(z - mu) / sd, np.ones_like(z)], axis=1)

    def loss(beta):
        t = x @ beta
        return float(np.sum(np.logaddexp(0, t) - y * t) + 0.5 * l2 * beta @ beta)

    beta = np.zeros(2)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        grad = x.T @ (p - y) + l2 * beta
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while loss(beta - t * step) > loss(beta) and t > 1e-6:
            t /= 2
        beta -= t * step
        if np.abs(t * step).max() < 1e-10:
            break
    scale = beta[0] / sd
    return float(scale), float(beta[1] - scale * mu)


def fit(
    candidates: Sequence[Sequence[str]],
    logits: Sequence[np.ndarray],
    recall_scores: Sequence[np.ndarray],
    relevant: Sequence[set],
    *,
    model_id: str,
    recall_model: str,
    k: int = 5,
    weights: Sequence[float] = WEIGHTS,
) -> Fusion:
    """Choose recall_weight for the best mean NDCG@k (ties: the smaller weight), then Platt-scale it.
    Per question: the candidate ids, their logits, their recall cosines, and the relevant ids."""
    ndcg = {float(w): mean_ndcg(candidates, logits, recall_scores, relevant, w, k) for w in weights}
    best = max(ndcg.values())
    w = min(x for x, v in ndcg.items() if v >= best - 1e-12)
    z = np.concatenate(
        [
            np.asarray(lg, np.float64) + w * np.asarray(rs, np.float64)
            for lg, rs in zip(logits, recall_scores, strict=True)
        ]
    )
    y = np.concatenate([[d in rel for d in ids] for ids, rel in zip(candidates, relevant, strict=True)])
    scale, bias = platt(z, y)
    if scale <= 0:  # relevance does not rise with the fused score here (an untrained model): keep the
        # chosen order with near-flat probabilities at the base rate instead of reversing it
        scale = 1e-6
        bias = float(np.log(y.mean() / (1 - y.mean())) - scale * z.mean())
    zeros = [np.zeros(len(ids)) for ids in candidates]
    return Fusion(
        recall_weight=w,
        scale=scale,
        bias=bias,
        model_id=model_id,
        recall_model=recall_model,
        calibration={
            "criterion": f"recall_weight: best mean NDCG@{k} of the rerank order; scale, bias: Platt",
            "questions": len(candidates),
            "platt_scale_clamped": scale == 1e-6,
            f"ndcg@{k}_recall_alone": round(mean_ndcg(candidates, zeros, recall_scores, relevant, 1.0, k), 4),
            f"ndcg@{k}_reranker_alone": round(
                mean_ndcg(candidates, logits, recall_scores, relevant, 0.0, k), 4
            ),
            f"ndcg@{k}_fused": round(best, 4),
            f"ndcg@{k}_by_weight": {f"{x:g}": round(v, 4) for x, v in ndcg.items()},
        },
    )
