"""The label audit's pure parts: paraphrase positives, the blind sample's key, and the tallies."""

from __future__ import annotations

import numpy as np
import pytest

from rerank_engine.quality.label_audit import blind_items, paired, paraphrase_positives, tally


def _unit(*rows):
    x = np.asarray(rows, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_paraphrase_positives_takes_near_questions_answers_but_not_its_own():
    # pool: q0 (the query itself), q1 at cos 0.8 to q0 (1 / sqrt(1 + 0.75^2) = 0.8), q2 orthogonal
    pool_emb = _unit([1, 0], [1, 0.75], [0, 1])
    answers = [{"a0"}, {"a1"}, {"a2"}]
    ids = ["q0", "q1", "q2"]
    got = paraphrase_positives(["q0"], pool_emb[:1], ids, pool_emb, answers, threshold=0.79)
    assert got == [{"a1"}]  # a0 is q0's own label, a2 belongs to an unrelated question
    assert paraphrase_positives(["q0"], pool_emb[:1], ids, pool_emb, answers, threshold=0.81) == [set()]


def test_paraphrase_positives_rejects_misaligned_pool():
    with pytest.raises(ValueError, match="pool: 2 ids, 1 embeddings, 2 answer sets"):
        paraphrase_positives(["q"], _unit([1, 0]), ["p0", "p1"], _unit([1, 0]), [set(), set()], 0.9)


def test_blind_items_hide_the_system_and_the_key_recovers_it():
    rows = [(f"q{i}", f"recall-{i}", f"fused-{i}") for i in range(50)]
    items, key = blind_items(rows, ("recall", "fused"), seed=3)
    flips = 0
    for (question, r, f), item, k in zip(rows, items, key, strict=True):
        assert item["question"] == question
        assert {item["A"], item["B"]} == {r, f}
        assert item[next(letter for letter, s in k.items() if s == "fused")] == f
        flips += item["A"] == f
    assert 10 < flips < 40  # the order really is drawn, not fixed
    assert blind_items(rows, ("recall", "fused"), seed=3) == (items, key)  # and reproducible


def test_tally_and_paired_count_per_system():
    key = [{"A": "r", "B": "f"}, {"A": "f", "B": "r"}, {"A": "r", "B": "f"}, {"A": "f", "B": "r"}]
    judged = [
        {"A": True, "B": True},  # both
        {"A": True, "B": False},  # only f
        {"A": False, "B": True},  # only f
        {"A": False, "B": False},  # neither
    ]
    assert tally(judged, key) == {
        "r": {"relevant": 1, "judged": 4, "share": 0.25},
        "f": {"relevant": 3, "judged": 4, "share": 0.75},
    }
    # sign test: 2 discordant, both for f: p = 2 * (1/2)^2 = 0.5
    assert paired(judged, key, ("r", "f")) == {
        "both": 1,
        "only r": 0,
        "only f": 2,
        "neither": 1,
        "sign_test_p": 0.5,
    }


def test_tally_rejects_incomplete_judgements():
    with pytest.raises(ValueError, match="2 judgements for 1 items"):
        tally([{"A": True, "B": True}] * 2, [{"A": "r", "B": "f"}])
    with pytest.raises(ValueError, match="judgement 0 must judge exactly A and B"):
        tally([{"A": True}], [{"A": "r", "B": "f"}])
