"""Absolute score thresholds ("better none than bad"): sweep, choose, and bind them to a model and scale.

Light module: numpy only.

The input is a scored, labelled set: for each query, the scores of the candidates the reranker hands on
(its top-k, best first) and which of them are relevant (`ScoredQuery`). A threshold `t` keeps the
candidates with `score >= t` (as the batch job's `finalize` does). Over the whole set, pooled over
queries (micro-averaged, so that 1 − precision is the noise ratio the evaluation reports):

    precision(t) = relevant passages kept / passages kept              (1.0 when nothing is kept)
    recall(t)    = relevant passages kept / relevant passages in the rerank top-k
    F1(t)        = 2 · precision · recall / (precision + recall)

Recall counts only the relevant passages **in the rerank top-k**, not every relevant passage of the query:
positives that recall or the rerank cut-off already lost cannot be brought back by a threshold, and
counting them would only scale recall down and push the best-F1 threshold lower. End-to-end recall
(against every positive) is reported by the evaluation, beside this.

Thresholds are swept over a grid and over the exact cut points (every distinct score: between two
neighbouring scores nothing changes). `best_f1` and `for_precision` choose among the exact cut points, so
the chosen value is a score that occurs in the set and `score >= value` reproduces the measured figures
exactly; the grid is for plots and tables.

    curve = sweep(queries, cut_points(queries))
    t = best_f1(queries, model_id="insurance-minilm-l6-ce@260128f32f77")
    t.save(model_dir / THRESHOLD_FILE)                                  # `rerank_engine.quality.score_policy`
    keep = Threshold.load(path).apply(scores, model_id=engine.model_id)   # ScaleMismatchError if not ours

The batch job reads the file through its score policy (`rerank_engine.quality.score_policy.read_threshold`),
which holds the threshold it applies with the score it applies it to.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rerank_engine.errors import ConfigError, InputError, ScaleMismatchError
from rerank_engine.files import read_json_record, write_json

PROBABILITY = "probability"
LOGIT = "logit"
SCALES = (PROBABILITY, LOGIT)
GRID = tuple(np.round(np.linspace(0.0, 1.0, 101), 2).tolist())  # probability grid, step 0.01


@dataclass(frozen=True)
class ScoredQuery:
    """One query's handed-on candidates: `scores` best first and `relevant` (bool) beside them."""

    scores: np.ndarray
    relevant: np.ndarray

    @classmethod
    def of(cls, scores: Sequence[float], relevant: Sequence[bool]) -> ScoredQuery:
        s = np.asarray(scores, dtype=np.float64)
        r = np.asarray(relevant, dtype=bool)
        if s.shape != r.shape or s.ndim != 1:
            raise ValueError(f"scores {s.shape} and relevant {r.shape} must be 1-d and of one length")
        if not np.all(np.isfinite(s)):
            raise ValueError("scores must be finite")
        return cls(s, r)


@dataclass(frozen=True)
class Sweep:
    """Precision, recall, F1 and counts at each threshold (arrays aligned with `thresholds`)."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    kept: np.ndarray  # passages kept
    kept_relevant: np.ndarray
    empty_queries: np.ndarray  # queries left with nothing (the job's `no_relevant`)
    relevant_total: int  # relevant passages in the top-k (the recall denominator)
    queries: int

    def at(self, i: int) -> dict[str, float]:
        return {
            "threshold": float(self.thresholds[i]),
            "precision": float(self.precision[i]),
            "recall": float(self.recall[i]),
            "f1": float(self.f1[i]),
            "kept": int(self.kept[i]),
            "kept_relevant": int(self.kept_relevant[i]),
            "no_relevant_share": float(self.empty_queries[i] / self.queries) if self.queries else 0.0,
        }


def _pooled(queries: Sequence[ScoredQuery]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not queries:
        return np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    scores = np.concatenate([q.scores for q in queries])
    relevant = np.concatenate([q.relevant for q in queries])
    owner = np.repeat(np.arange(len(queries)), [len(q.scores) for q in queries])
    return scores, relevant, owner


def cut_points(queries: Sequence[ScoredQuery]) -> np.ndarray:
    """Every distinct score, ascending, and one value above the highest (which keeps nothing)."""
    scores, _, _ = _pooled(queries)
    distinct = np.unique(scores)
    above = np.nextafter(distinct[-1], np.inf) if len(distinct) else 0.0
    return np.append(distinct, above)


def sweep(queries: Sequence[ScoredQuery], thresholds: Iterable[float] = GRID) -> Sweep:
    """Pooled precision / recall / F1 of keeping `score >= t`, for each t (sorted ascending)."""
    t = np.sort(np.asarray(list(thresholds), dtype=np.float64))
    scores, relevant, _ = _pooled(queries)

    def at_or_above(values: np.ndarray) -> np.ndarray:  # how many of `values` are >= each t
        return len(values) - np.searchsorted(np.sort(values), t, side="left")

    kept = at_or_above(scores)
    kept_rel = at_or_above(scores[relevant])
    total_rel = int(relevant.sum())
    best = np.array([q.scores.max() if len(q.scores) else -np.inf for q in queries])
    precision = np.where(kept > 0, kept_rel / np.maximum(kept, 1), 1.0)
    recall = kept_rel / total_rel if total_rel else np.zeros(len(t))
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1.0), 0.0)
    return Sweep(
        thresholds=t,
        precision=precision,
        recall=recall,
        f1=f1,
        kept=kept,
        kept_relevant=kept_rel,
        empty_queries=len(queries) - at_or_above(best),
        relevant_total=total_rel,
        queries=len(queries),
    )


# -- a threshold bound to its model and scale ---------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Threshold:
    """An absolute threshold on one model's scores on one scale. Using it elsewhere is an error."""

    value: float
    model_id: str
    scale: str = PROBABILITY
    calibration: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.scale not in SCALES:
            raise ValueError(f"unknown score scale {self.scale!r}; expected one of {SCALES}")
        if not np.isfinite(self.value):
            raise ValueError(f"threshold value must be finite, got {self.value!r}")
        if self.scale == PROBABILITY and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"a probability threshold must lie in [0, 1], got {self.value}")
        if not self.model_id:
            raise ValueError("a threshold must name the model it was calibrated for")

    def check(self, *, model_id: str, scale: str = PROBABILITY) -> None:
        """Raise ScaleMismatchError unless this threshold was calibrated for `model_id` on `scale`."""
        if scale != self.scale:
            raise ScaleMismatchError(
                f"threshold {self.value} is on the {self.scale!r} scale; the scores are {scale!r}"
            )
        if model_id != self.model_id:
            raise ScaleMismatchError(
                f"threshold {self.value} was calibrated for model {self.model_id!r}, not for {model_id!r}; "
                "recalibrate with `python -m jobs.calibrate`"
            )

    def apply(self, scores: Sequence[float], *, model_id: str, scale: str = PROBABILITY) -> np.ndarray:
        """Boolean mask of the scores kept (`score >= value`), after checking model and scale."""
        self.check(model_id=model_id, scale=scale)
        return np.asarray(scores, dtype=np.float64) >= self.value

    def to_dict(self) -> dict:
        return {
            "value": self.value,
            "scale": self.scale,
            "model_id": self.model_id,
            "calibration": self.calibration,
        }

    def save(self, path: str | Path) -> Path:
        """Write the JSON file the batch job reads (`score_policy.THRESHOLD_FILE` in the model folder)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Threshold:
        """The threshold file at `path`; InputError naming the file where a value is not a threshold's."""
        data = read_json_record(path, ("value", "scale", "model_id"), "threshold file")
        try:
            return cls(
                value=float(data["value"]),
                scale=data["scale"],
                model_id=data["model_id"],
                calibration=data.get("calibration", {}),
            )
        except (TypeError, ValueError) as exc:
            raise InputError(f"{path} is not a valid threshold file: {exc}") from None


# -- choosing -------------------------------------------------------------------------------------------


EMPTY_SHARES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def tradeoff_at(queries: Sequence[ScoredQuery], threshold: float) -> dict:
    """One threshold's figures (`Sweep.at`) and its noise: 1 − pooled precision, 0 where nothing is kept."""
    row = sweep(queries, [threshold]).at(0)
    return {**row, "noise": 1.0 - row["precision"] if row["kept"] else 0.0}


def tradeoff(queries: Sequence[ScoredQuery], shares: Iterable[float] = EMPTY_SHARES) -> list[dict]:
    """What a threshold trades, one row per share of queries to hand nothing: the lowest threshold that
    leaves at least that share empty (0 for a share of 0), and there the share actually left empty,
    the passages kept and the noise (`tradeoff_at`). Rows are ascending; a share no threshold reaches
    short of emptying every query is left out, and a share that needs the row before's cut too."""
    best = np.sort([q.scores.max() for q in queries if len(q.scores)])
    rows = []
    for share in shares:
        if share <= 0:
            t = 0.0
        else:  # just above the best score of the last query to empty: `>= t` keeps that query out
            last = min(len(best) - 1, int(np.ceil(share * len(queries))) - 1)
            t = float(np.nextafter(best[last], np.inf))
        if rows and rows[-1]["threshold"] == t:  # few queries: two shares, one cut
            continue
        row = tradeoff_at(queries, t)
        if share > 0 and row["no_relevant_share"] >= 1.0:
            break
        rows.append({**row, "share_asked": share})
    return rows


def best_f1(queries: Sequence[ScoredQuery], *, model_id: str, scale: str = PROBABILITY) -> Threshold:
    """The exact cut point with the highest pooled F1 (ties: the lowest such threshold, keeping more)."""
    s = sweep(queries, cut_points(queries))
    if not s.relevant_total:
        raise InputError("no relevant passage in the scored set: F1 is 0 at every threshold")
    i = int(np.flatnonzero(s.f1 >= s.f1.max() - 1e-12)[0])  # ties (to rounding): the lowest threshold
    return Threshold(value=float(s.thresholds[i]), scale=scale, model_id=model_id, calibration=s.at(i))


def for_precision(
    queries: Sequence[ScoredQuery], target: float, *, model_id: str, scale: str = PROBABILITY
) -> Threshold | None:
    """The lowest cut point whose pooled precision reaches `target` while keeping something (so the one
    with the highest recall among them), or None where no threshold reaches it."""
    if not 0.0 < target <= 1.0:
        raise ConfigError(f"target precision must lie in (0, 1], got {target}")
    s = sweep(queries, cut_points(queries))
    ok = np.flatnonzero((s.precision >= target) & (s.kept > 0))
    if not len(ok):
        return None
    i = int(ok[0])
    return Threshold(value=float(s.thresholds[i]), scale=scale, model_id=model_id, calibration=s.at(i))
