"""Paired comparisons of two rankings over the same questions: per-question NDCG differences, wins and
losses with a sign test, and a bootstrap interval of the mean difference. Light module.
"""

from __future__ import annotations

import numpy as np

from rerank_engine.errors import ConfigError
from rerank_engine.quality.metrics import ndcg_at_k


def _ndcg_deltas(runs, baseline, k: int) -> np.ndarray:
    """Per question, NDCG@k of `runs` minus that of `baseline` (the same questions, in the same order)."""
    return np.array(
        [ndcg_at_k(r, rel, k) - ndcg_at_k(b, rel, k) for (r, rel), (b, _) in zip(runs, baseline, strict=True)]
    )


def _wins(delta: np.ndarray) -> dict:
    from rerank_engine.quality.label_audit import sign_test

    better, worse = int(np.sum(delta > 1e-12)), int(np.sum(delta < -1e-12))
    return {"better": better, "worse": worse, "sign_test_p": float(f"{sign_test(better, worse):.2g}")}


def per_question_vs(runs, baseline, k: int = 5) -> dict:
    """How many questions `runs` ranks better / worse than `baseline` by NDCG@k, with a sign test."""
    return _wins(_ndcg_deltas(runs, baseline, k))


def paired_difference(runs, baseline, k: int = 5, n_boot: int = 10_000, seed: int = 0) -> dict:
    """Per-question NDCG@k of `runs` minus `baseline`, over the same questions: the mean, its standard
    error, a bootstrap 95 % interval (questions resampled), and `per_question_vs`'s wins and losses."""
    delta = _ndcg_deltas(runs, baseline, k)
    n = len(delta)
    if n < 2:
        raise ConfigError(f"a paired difference needs at least 2 questions, got {n}")
    rng = np.random.default_rng(seed)
    boot = np.array([delta[rng.integers(0, n, n)].mean() for _ in range(n_boot)])
    low, high = np.percentile(boot, [2.5, 97.5])
    return {
        "questions": n,
        f"ndcg@{k}_mean_difference": round(float(delta.mean()), 4),
        "standard_error": round(float(delta.std(ddof=1) / np.sqrt(n)), 4),
        "bootstrap_95": [round(float(low), 4), round(float(high), 4)],
        **_wins(delta),
    }
