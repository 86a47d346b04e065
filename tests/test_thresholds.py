"""Threshold sweeps against hand-computed figures, the choice rules, and the model / scale binding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rerank_engine.errors import InputError, ScaleMismatchError
from rerank_engine.quality.evaluation import ScoredCascade, handed_on_figures, threshold_comparison
from rerank_engine.quality.thresholds import (
    GRID,
    ScoredQuery,
    Threshold,
    best_f1,
    cut_points,
    for_precision,
    sweep,
    tradeoff,
)

MODEL = "tiny@0123456789ab"

# Pooled pairs, best first: (0.9 R) (0.8 -) (0.7 R) (0.6 -) (0.4 -) (0.3 R); 3 relevant in the top-k.
QUERIES = [
    ScoredQuery.of([0.9, 0.6, 0.3], [True, False, True]),
    ScoredQuery.of([0.8, 0.4], [False, False]),
    ScoredQuery.of([0.7], [True]),
]

# threshold: (kept, kept relevant, precision, recall, F1, queries left empty), computed by hand
BY_HAND = {
    0.3: (6, 3, 3 / 6, 3 / 3, 2 / 3, 0),
    0.4: (5, 2, 2 / 5, 2 / 3, 1 / 2, 0),
    0.6: (4, 2, 2 / 4, 2 / 3, 4 / 7, 0),
    0.7: (3, 2, 2 / 3, 2 / 3, 2 / 3, 0),
    0.8: (2, 1, 1 / 2, 1 / 3, 2 / 5, 1),
    0.9: (1, 1, 1 / 1, 1 / 3, 1 / 2, 2),
}


def test_cut_points_are_the_distinct_scores_and_one_above():
    cuts = cut_points(QUERIES)
    assert cuts[:-1].tolist() == [0.3, 0.4, 0.6, 0.7, 0.8, 0.9]
    assert cuts[-1] > 0.9
    assert cut_points([]).tolist() == [0.0]


def test_exact_sweep_matches_hand_computed_figures():
    s = sweep(QUERIES, cut_points(QUERIES))
    assert s.relevant_total == 3 and s.queries == 3
    for i, t in enumerate(s.thresholds[:-1]):
        kept, kept_rel, p, r, f1, empty = BY_HAND[round(float(t), 1)]
        assert (s.kept[i], s.kept_relevant[i], s.empty_queries[i]) == (kept, kept_rel, empty)
        assert s.precision[i] == pytest.approx(p, abs=1e-12)
        assert s.recall[i] == pytest.approx(r, abs=1e-12)
        assert s.f1[i] == pytest.approx(f1, abs=1e-12)
    # above every score: nothing kept, precision 1 by convention, recall and F1 0, every query empty
    assert (s.kept[-1], s.precision[-1], s.recall[-1], s.f1[-1], s.empty_queries[-1]) == (0, 1.0, 0.0, 0.0, 3)


def test_grid_sweep_between_cut_points():
    s = sweep(QUERIES, [1.0, 0.0, 0.5, 0.75])  # unsorted on purpose: sweep sorts
    assert s.thresholds.tolist() == [0.0, 0.5, 0.75, 1.0]
    assert s.kept.tolist() == [6, 4, 2, 0]
    assert s.kept_relevant.tolist() == [3, 2, 1, 0]
    assert s.precision.tolist() == pytest.approx([0.5, 0.5, 0.5, 1.0])
    assert s.recall.tolist() == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    assert s.empty_queries.tolist() == [0, 0, 1, 3]
    assert len(GRID) == 101 and GRID[0] == 0.0 and GRID[-1] == 1.0 and GRID[52] == 0.52


def test_tradeoff_rows_by_hand():
    """Per query the best scores are 0.9, 0.8 and 0.7. No threshold: all 6 kept, 3 relevant. A third of
    the questions empty: just above 0.7, keeping (0.9 R) (0.8 -). Two thirds: just above 0.8, keeping
    (0.9 R). Emptying all three is no trade and is left out; shares that need the same cut share a row."""
    rows = tradeoff(QUERIES)
    assert [r["threshold"] for r in rows] == [0.0, np.nextafter(0.7, 1), np.nextafter(0.8, 1)]
    assert [r["share_asked"] for r in rows] == [0.0, 0.1, 0.4]
    assert [r["no_relevant_share"] for r in rows] == pytest.approx([0.0, 1 / 3, 2 / 3])
    assert [(r["kept"], r["kept_relevant"]) for r in rows] == [(6, 3), (2, 1), (1, 1)]
    assert [r["noise"] for r in rows] == pytest.approx([0.5, 0.5, 0.0])


def test_best_f1_takes_the_lowest_of_tied_thresholds():
    t = best_f1(QUERIES, model_id=MODEL)  # F1 2/3 at 0.3 and at 0.7
    assert t.value == 0.3 and t.scale == "probability" and t.model_id == MODEL
    assert t.calibration["f1"] == pytest.approx(2 / 3)
    assert t.calibration["kept"] == 6 and t.calibration["no_relevant_share"] == 0.0


def test_best_f1_unique_maximum():
    queries = [*QUERIES, ScoredQuery.of([0.35, 0.2], [False, False])]  # two more irrelevant pairs
    # 0.2: 8 kept, 3 relevant -> F1 6/11; 0.3: 7 / 3 -> 0.6; 0.35: 6 / 2 -> 4/9; 0.7: 3 / 2 -> 2/3 (the max)
    t = best_f1(queries, model_id=MODEL)
    assert t.value == 0.7
    assert t.calibration["precision"] == pytest.approx(2 / 3)
    assert t.calibration["recall"] == pytest.approx(2 / 3)


def test_threshold_for_target_precision():
    assert for_precision(QUERIES, 0.6, model_id=MODEL).value == 0.7  # lowest t with P >= 0.6
    assert for_precision(QUERIES, 0.5, model_id=MODEL).value == 0.3
    assert for_precision(QUERIES, 1.0, model_id=MODEL).value == 0.9
    nothing_good = [ScoredQuery.of([0.9, 0.1], [False, False])]
    assert for_precision(nothing_good, 0.5, model_id=MODEL) is None  # keeping nothing does not count
    with pytest.raises(ValueError):
        for_precision(QUERIES, 0.0, model_id=MODEL)
    with pytest.raises(ValueError, match="no relevant"):
        best_f1(nothing_good, model_id=MODEL)


def test_scored_query_rejects_bad_input():
    with pytest.raises(ValueError):
        ScoredQuery.of([0.1, 0.2], [True])
    with pytest.raises(ValueError):
        ScoredQuery.of([float("nan")], [True])


def test_threshold_refuses_another_model_or_scale():
    t = Threshold(value=0.52, model_id=MODEL)
    assert t.apply([0.51, 0.52, 0.9], model_id=MODEL).tolist() == [False, True, True]
    with pytest.raises(ScaleMismatchError, match="calibrated for model 'tiny@0123456789ab'"):
        t.apply([0.6], model_id="other@ffffffffffff")
    with pytest.raises(ScaleMismatchError, match="'probability' scale; the scores are 'logit'"):
        t.apply([0.6], model_id=MODEL, scale="logit")
    assert issubclass(ScaleMismatchError, ValueError)


def test_threshold_validates_itself():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Threshold(value=1.5, model_id=MODEL)
    with pytest.raises(ValueError, match="scale"):
        Threshold(value=0.5, model_id=MODEL, scale="percent")
    with pytest.raises(ValueError, match="name the model"):
        Threshold(value=0.5, model_id="")
    assert Threshold(value=-2.0, model_id=MODEL, scale="logit").value == -2.0


def test_threshold_file_round_trip_and_the_job_reads_it(tmp_path):
    from rerank_engine.config import JobConfig
    from rerank_engine.quality.score_policy import ScorePolicy

    def resolve_threshold(config, model_id):  # the job's threshold and where it came from
        policy = ScorePolicy.for_job(config, model_id, None)
        return policy.threshold, policy.threshold_source

    t = best_f1(QUERIES, model_id=MODEL)
    path = t.save(tmp_path / "threshold.json")
    data = json.loads(path.read_text())
    assert (data["value"], data["scale"], data["model_id"]) == (0.3, "probability", MODEL)
    again = Threshold.load(path)
    assert again == t and again.calibration == t.calibration

    config = JobConfig.build(model=str(tmp_path))
    assert config.threshold is None
    assert resolve_threshold(config, MODEL) == (0.3, str(path))
    with pytest.raises(ScaleMismatchError):
        resolve_threshold(config, "retrained@abcdefabcdef")  # a stale file is refused

    (tmp_path / "bad.json").write_text(json.dumps({"value": 0.5}))
    with pytest.raises(ValueError, match="missing"):
        Threshold.load(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(json.dumps({"value": 1.5, "scale": "probability", "model_id": MODEL}))
    with pytest.raises(InputError, match=r"bad\.json is not a valid threshold file: .*\[0, 1\]"):
        Threshold.load(tmp_path / "bad.json")


# -- the side-by-side report figures, on a hand-made cascade ---------------------------------------------


def _cascade() -> ScoredCascade:
    # q1: positives a, x (x not recalled); q2: positive z, not recalled (the right answer is nothing)
    return ScoredCascade(
        model_id=MODEL,
        qids=["q1", "q2"],
        candidates=[["b", "a", "c"], ["d", "e", "f"]],
        scores=[np.array([0.2, 0.9, 0.6], np.float32), np.array([0.3, 0.1, 0.3], np.float32)],
        relevant=[{"a", "x"}, {"z"}],
    )


def test_scored_cascade_orders_like_the_job_and_round_trips(tmp_path):
    sc = _cascade()
    ranked = sc.reranked(2)
    assert [ids for ids, _ in ranked] == [["a", "c"], ["d", "f"]]  # ties by doc id
    assert [q.relevant.tolist() for q in sc.scored_queries(2)] == [[True, False], [False, False]]
    assert sc.missed() == [False, True]
    again = ScoredCascade.load(sc.save(tmp_path / "s.json"))
    assert again.candidates == sc.candidates and again.relevant == sc.relevant
    assert all(np.array_equal(a, b) for a, b in zip(again.scores, sc.scores, strict=True))


def test_threshold_comparison_by_hand():
    out = threshold_comparison(_cascade(), threshold=0.5, k=2)
    recall2, rerank2, cut = (out[k] for k in ("bi-encoder top-2", "rerank top-2", "rerank top-2 ≥ 0.500"))
    # bi-encoder top-2: [b, a] and [d, e]: 1 relevant of 4 handed on
    assert recall2["precision"] == 0.25 and recall2["noise"] == 0.75 and recall2["P@2"] == 0.25
    assert recall2["R@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert recall2["F1"] == pytest.approx(2 * 0.25 * 1 / 1.25)  # recall 1 within its own top-2
    assert recall2["F1_all"] == pytest.approx(2 * 0.25 * (1 / 3) / (0.25 + 1 / 3))  # 1 of 3 positives
    assert recall2["no_relevant"] == 0.0 and recall2["nothing_when_missed"] == 0.0
    # rerank top-2: [a, c], [d, f]; same relevant count, better NDCG (a first)
    assert rerank2["precision"] == 0.25 and rerank2["NDCG@2"] > recall2["NDCG@2"]
    # threshold 0.5: [a, c] and [] -> q2 (positive missed by recall) correctly gets nothing
    assert cut["handed_on"] == 2 and cut["precision"] == 0.5 and cut["noise"] == 0.5
    assert cut["F1"] == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert cut["no_relevant"] == 0.5 and cut["nothing_when_missed"] == 1.0 and cut["empty_when_hit"] == 0.0
    assert out["_info"]["positive_not_in_recall"] == 1


def test_handed_on_figures_when_nothing_is_handed_on():
    fig = handed_on_figures([[], []], [["a"], ["b"]], [{"a"}, {"c"}], [False, True], k=5)
    assert fig["precision"] == 1.0 and fig["noise"] == 0.0 and fig["F1"] == 0.0
    assert fig["no_relevant"] == 1.0 and fig["nothing_when_missed"] == 1.0 and fig["empty_when_hit"] == 1.0
