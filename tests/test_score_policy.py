"""The score policy (`rerank_engine.quality.score_policy`): one object, resolved once, that says which score
a run writes and thresholds, and where its threshold, fusion and max_length came from."""

from __future__ import annotations

import numpy as np
import pytest

from rerank_engine import schema
from rerank_engine.config import JobConfig
from rerank_engine.errors import ConfigError, ScaleMismatchError
from rerank_engine.quality.fusion import Fusion
from rerank_engine.quality.score_policy import FUSION_FILE, THRESHOLD_FILE, ScorePolicy, calibrated_with
from rerank_engine.quality.thresholds import Threshold

MODEL, RECALL = "ce@0123456789ab", "model@9ebede561b58"
SETTINGS = {"split": "valid", "max_length": 128}


def _calibrated_folder(tmp_path, *, fused: bool = True):
    Threshold(value=0.7, model_id=MODEL, calibration={"settings": SETTINGS}).save(tmp_path / THRESHOLD_FILE)
    if fused:
        Fusion(
            recall_weight=10.0,
            scale=0.5,
            bias=-4.0,
            model_id=MODEL,
            recall_model=RECALL,
            threshold=0.3,
            calibration={"settings": SETTINGS},
        ).save(tmp_path / FUSION_FILE)
    return str(tmp_path)


def test_the_job_policy_names_each_rule_and_where_it_came_from(tmp_path):
    model = _calibrated_folder(tmp_path)
    fused = ScorePolicy.for_job(JobConfig.build(model=model), MODEL, RECALL)
    assert fused.kind == schema.FUSED_PROBABILITY and fused.fusion.recall_weight == 10.0
    assert (fused.threshold, fused.threshold_source) == (0.3, str(tmp_path / FUSION_FILE))
    assert (fused.max_length, fused.max_length_source) == (128, str(tmp_path / FUSION_FILE))
    assert fused.score_id == fused.fusion.score_id()

    logged = ScorePolicy.for_job(JobConfig.build(model=model), MODEL, None)  # no cosines: threshold.json
    assert logged.kind == schema.RERANKER_PROBABILITY and logged.recall_model == "logged"
    assert (logged.threshold, logged.threshold_source) == (0.7, str(tmp_path / THRESHOLD_FILE))

    given = ScorePolicy.for_job(JobConfig.build(model=model, threshold=0.2), MODEL, RECALL)
    assert (given.threshold, given.threshold_source, given.kind) == (0.2, "config", schema.FUSED_PROBABILITY)

    bare = ScorePolicy.for_job(JobConfig.build(model=str(tmp_path / "none")), MODEL, RECALL)
    assert (bare.threshold, bare.threshold_source, bare.max_length_source) == (0.5, "default", "default")
    assert bare.fusion is None and bare.calibrated_in is None

    summary = fused.summary()
    assert summary["score_kind"] == "fused_probability" and summary["fusion_source"].endswith(FUSION_FILE)
    assert summary["fusion"] == {"recall_weight": 10.0, "scale": 0.5, "bias": -4.0}


def test_a_threshold_file_on_another_scale_or_model_is_refused(tmp_path):
    Threshold(value=-1.0, model_id=MODEL, scale="logit").save(tmp_path / THRESHOLD_FILE)
    config = JobConfig.build(model=str(tmp_path))
    with pytest.raises(ScaleMismatchError, match=r"threshold\.json: .*'logit' scale"):
        ScorePolicy.for_job(config, MODEL, None)
    Threshold(value=0.4, model_id=MODEL).save(tmp_path / THRESHOLD_FILE)
    with pytest.raises(ScaleMismatchError, match="calibrated for model"):
        ScorePolicy.for_job(config, "retrained@abcdefabcdef", None)


def test_the_policy_scores_and_keeps_as_finalize_does():
    logits = np.array([2.0, -1.0, 0.0], np.float32)
    plain = ScorePolicy(reranker_model=MODEL, threshold=0.5)
    order, scores = plain.scores(logits)
    assert order is logits and scores.dtype == np.float32
    assert plain.keep(scores).tolist() == [True, False, True]  # sigmoid(0) = 0.5 is kept (>=)
    fusion = Fusion(recall_weight=10.0, scale=0.5, bias=-4.0, model_id=MODEL, recall_model=RECALL)
    fused = ScorePolicy(reranker_model=MODEL, recall_model=RECALL, threshold=0.5, fusion=fusion)
    with pytest.raises(ConfigError, match="recall cosines"):
        fused.scores(logits, None)
    z, p = fused.scores(logits, [0.9, 0.1, 0.5])
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-z)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ScorePolicy(reranker_model=MODEL, threshold=1.5)
    with pytest.raises(ScaleMismatchError, match="cosines of"):
        ScorePolicy(reranker_model=MODEL, recall_model="other@000000000000", fusion=fusion)


def test_the_evaluation_policy_is_strict_about_how_the_record_was_scored(tmp_path):
    model = _calibrated_folder(tmp_path)
    fused = ScorePolicy.for_evaluation(model, MODEL, RECALL, max_length=128)
    plain = ScorePolicy.for_evaluation(model, MODEL, RECALL, max_length=128, fused=False)
    assert fused.fusion is not None and fused.threshold == 0.3
    assert plain.fusion is None and plain.threshold == 0.7 and plain.settings == SETTINGS
    with pytest.raises(ConfigError, match="calibrated at max_length 128"):
        ScorePolicy.for_evaluation(model, MODEL, RECALL, max_length=256)
    with pytest.raises(ConfigError, match="reading long passages"):
        ScorePolicy.for_evaluation(model, MODEL, RECALL, max_length=128, windows={"long_passages": "x"})
    with pytest.raises(ScaleMismatchError, match="cosines"):
        ScorePolicy.for_evaluation(model, MODEL, "other@000000000000", max_length=128)
    assert ScorePolicy.for_evaluation(str(tmp_path / "none"), MODEL, RECALL, max_length=128) is None


def test_calibrate_is_up_to_date_only_when_both_records_match(tmp_path):
    model = _calibrated_folder(tmp_path)
    assert calibrated_with(model, MODEL, SETTINGS).value == 0.7
    assert calibrated_with(model, MODEL, {**SETTINGS, "max_length": 256}) is None
    assert calibrated_with(model, "retrained@abcdefabcdef", SETTINGS) is None
    (tmp_path / FUSION_FILE).unlink()
    assert calibrated_with(model, MODEL, SETTINGS) is None
