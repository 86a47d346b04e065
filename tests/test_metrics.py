"""Ranking metrics, worked by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from rerank_engine.quality.metrics import (
    mean_metrics,
    mrr_at_k,
    ndcg_at_k,
    noise_ratio,
    precision_at_k,
    recall_at_k,
)
from rerank_engine.serving.agreement import ranking_agreement, spearman, top_k_overlap

RANKED = ["d1", "d2", "d3", "d4", "d5"]
RELEVANT = {"d2", "d4", "d9"}  # d9 was never retrieved; relevant hits at positions 2 and 4


def test_precision_at_k():
    assert precision_at_k(RANKED, RELEVANT, 1) == 0.0  # d1 is not relevant: 0/1
    assert precision_at_k(RANKED, RELEVANT, 3) == pytest.approx(1 / 3)  # d2: 1/3
    assert precision_at_k(RANKED, RELEVANT, 5) == pytest.approx(2 / 5)  # d2, d4: 2/5
    assert precision_at_k(RANKED, RELEVANT, 10) == pytest.approx(2 / 10)  # missing positions are misses


def test_recall_at_k():
    assert recall_at_k(RANKED, RELEVANT, 1) == 0.0
    assert recall_at_k(RANKED, RELEVANT, 3) == pytest.approx(1 / 3)  # 1 of 3 relevant
    assert recall_at_k(RANKED, RELEVANT, 5) == pytest.approx(2 / 3)  # 2 of 3 relevant
    assert recall_at_k(RANKED, set(), 5) == 0.0


def test_ndcg_at_k():
    # DCG@5 = 1/log2(2+1) + 1/log2(4+1) = 0.630930 + 0.430677 = 1.061606
    # IDCG@5 puts min(5, 3) = 3 relevant first: 1/log2(2) + 1/log2(3) + 1/log2(4) = 1 + 0.630930 + 0.5
    dcg5 = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert dcg5 == pytest.approx(1.061606, abs=1e-6)
    assert ndcg_at_k(RANKED, RELEVANT, 5) == pytest.approx(dcg5 / idcg)
    assert ndcg_at_k(RANKED, RELEVANT, 5) == pytest.approx(0.498189, abs=1e-6)
    # @3: DCG = 1/log2(3) = 0.630930; IDCG@3 = the same three ideal gains = 2.130930 → 0.296082
    assert ndcg_at_k(RANKED, RELEVANT, 3) == pytest.approx(0.296082, abs=1e-6)
    # @1: d1 is not relevant → 0; ideal@1 = 1
    assert ndcg_at_k(RANKED, RELEVANT, 1) == 0.0
    # a perfect ranking scores 1; one relevant doc in first place scores 1 whatever k is
    assert ndcg_at_k(["d2", "d4", "d9", "x"], RELEVANT, 4) == pytest.approx(1.0)
    assert ndcg_at_k(["a", "b"], {"a"}, 10) == pytest.approx(1.0)
    assert ndcg_at_k(RANKED, set(), 5) == 0.0


def test_mrr_at_k():
    assert mrr_at_k(RANKED, RELEVANT, 5) == pytest.approx(1 / 2)  # first hit d2 at rank 2
    assert mrr_at_k(RANKED, RELEVANT, 1) == 0.0  # no hit in the first position
    assert mrr_at_k(["x", "y", "z", "d4"], RELEVANT, 4) == pytest.approx(1 / 4)
    assert mrr_at_k(["x", "y", "z", "d4"], RELEVANT, 3) == 0.0


def test_mean_metrics():
    runs = [(RANKED, RELEVANT), (["a", "b"], {"a"})]
    got = mean_metrics(runs, ks=(1, 3))
    assert set(got) == {f"{m}@{k}" for m in ("P", "R", "NDCG", "MRR") for k in (1, 3)}
    # run 1: P@1 0, P@3 1/3, R@1 0, R@3 1/3, NDCG@1 0, NDCG@3 0.296082, MRR@1 0, MRR@3 1/2
    # run 2: P@1 1, P@3 1/3, R@1 1, R@3 1,   NDCG@1 1, NDCG@3 1,        MRR@1 1, MRR@3 1
    expected = {
        "P@1": (0 + 1) / 2,
        "P@3": (1 / 3 + 1 / 3) / 2,
        "R@1": (0 + 1) / 2,
        "R@3": (1 / 3 + 1) / 2,
        "NDCG@1": (0 + 1) / 2,
        "NDCG@3": (0.296082 + 1) / 2,
        "MRR@1": (0 + 1) / 2,
        "MRR@3": (0.5 + 1) / 2,
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert mean_metrics([], ks=(1,)) == {}
    # runs may be a one-shot generator
    assert mean_metrics(iter(runs), ks=(1,))["P@1"] == 0.5


def test_noise_ratio():
    handed_on = [(["a", "b", "c"], {"a"}), (["x"], {"x"}), ([], {"y"})]
    # passed on 3 + 1 + 0 = 4; not relevant: b, c → 2/4
    assert noise_ratio(handed_on) == pytest.approx(0.5)
    assert noise_ratio([([], {"a"})]) == 0.0
    assert noise_ratio([]) == 0.0
    assert noise_ratio([(["q"], set())]) == 1.0


def test_spearman_with_ties():
    a, b = [1, 2, 2, 3], [1, 2, 3, 4]
    # average ranks: a → 0, 1.5, 1.5, 3; b → 0, 1, 2, 3; both have mean 1.5
    # cov = (2.25 + 0 + 0 + 2.25)/4 = 1.125; var a = 1.125; var b = (2.25+.25+.25+2.25)/4 = 1.25
    # rho = 1.125 / sqrt(1.125 × 1.25) = sqrt(0.9) = 0.948683
    assert spearman(a, b) == pytest.approx(math.sqrt(0.9))
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([0.1, 0.5, 0.9], [10, 20, 300]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([1, 1, 1], [2, 2, 2]) == 1.0  # both constant
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))  # only one constant
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 5, size=12).astype(float)  # many ties
        y = rng.integers(0, 5, size=12).astype(float)
        if np.ptp(x) and np.ptp(y):
            assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)


def test_top_k_overlap():
    a = [0.9, 0.8, 0.7, 0.1, 0.0]
    b = [0.0, 0.8, 0.7, 0.9, 0.1]
    # top-3 by a: {0, 1, 2}; by b: {3, 1, 2} → 2/3
    assert top_k_overlap(a, b, 3) == pytest.approx(2 / 3)
    assert top_k_overlap(a, a, 3) == 1.0
    # all tied: ties go by position, so both pick {0, 1}
    assert top_k_overlap([1, 1, 1, 1], [2, 2, 2, 2], 2) == 1.0
    # k larger than the list: k becomes the list length, so everything overlaps
    assert top_k_overlap([1, 2], [2, 1], 5) == 1.0
    assert top_k_overlap([], [], 5) == 1.0
    # top-1 differs
    assert top_k_overlap([1, 0], [0, 1], 1) == 0.0


def test_ranking_agreement():
    ref = {"q1": np.array([0.9, 0.5, 0.1]), "q2": np.array([0.2, 0.4, 0.6])}
    other = {"q1": np.array([0.8, 0.5, 0.1]), "q2": np.array([0.6, 0.4, 0.2])}
    got = ranking_agreement(ref, other, k=1)
    assert got["queries"] == 2
    assert got["spearman_mean"] == pytest.approx(0.0)  # +1 and -1
    assert got["spearman_min"] == pytest.approx(-1.0)
    assert got["top1_overlap_mean"] == pytest.approx(0.5)  # q1 agrees, q2 does not
    assert got["top1_overlap_min"] == 0.0
    assert got["max_abs_diff_score"] == pytest.approx(0.4)  # q2: |0.2 - 0.6|


def test_bm25_hand_computed():
    import math

    from rerank_engine.recall.bm25 import BM25

    docs = ["flood flood cover", "fire cover", "car"]
    bm = BM25(docs, k1=1.2, b=0.75)
    # "flood": df=1 of n=3 → idf = ln(1 + (3 - 1 + 0.5) / 1.5) = ln(8/3); avg length = 2
    idf = math.log(1 + 2.5 / 1.5)
    norm0 = 1.2 * (1 - 0.75 + 0.75 * 3 / 2)  # doc 0 has 3 tokens, tf = 2
    expected = idf * 2 * 2.2 / (2 + norm0)
    scores = bm.scores("Flood?")
    assert scores[0] == pytest.approx(expected)
    assert scores[1] == 0 and scores[2] == 0
    assert bm.top_k("fire cover", 2) == [1, 0]


def test_a_document_listed_twice_counts_once_in_every_metric():
    from rerank_engine.quality.metrics import METRICS

    ranked, relevant = ["a", "a", "b"], {"b"}
    for name, fn in METRICS.items():
        assert fn(ranked, relevant, 10) == fn(["a", "b"], relevant, 10), name
    assert METRICS["MRR"](ranked, relevant, 10) == 0.5
