"""Score fusion (`rerank_engine.quality.fusion`): the fit, the file, the job's resolution (`score_policy`) and
the finalize stage."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from rerank_engine.config import JobConfig
from rerank_engine.errors import ConfigError, InputError, ScaleMismatchError
from rerank_engine.quality.fusion import Fusion, fit, mean_ndcg, platt
from rerank_engine.quality.metrics import ndcg_at_k
from rerank_engine.quality.score_policy import ScorePolicy, calibrated_max_length
from rerank_engine.quality.thresholds import Threshold

MODEL, RECALL = "ce@0123456789ab", "model@9ebede561b58"


def test_platt_recovers_a_known_logistic_model():
    rng = np.random.default_rng(0)
    z = rng.normal(3.0, 4.0, size=40_000)  # far from 0 and wide: Newton from (1, 0) would saturate
    y = rng.random(z.size) < 1 / (1 + np.exp(-(0.5 * z - 4.0)))
    scale, bias = platt(z, y)
    assert scale == pytest.approx(0.5, abs=0.03) and bias == pytest.approx(-4.0, abs=0.15)
    with pytest.raises(ValueError, match="both relevant and irrelevant"):
        platt(z, np.zeros(z.size))


def test_mean_ndcg_is_the_metrics_ndcg_of_the_fused_order():
    cands = [["a", "b", "c"], ["d", "e", "f"]]
    logits = [np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])]
    cos = [np.array([0.3, 0.2, 0.0]), np.array([0.1, 0.2, 0.9])]
    rel = [{"a"}, {"f", "x"}]
    # w = 10: a 3.0, b 3.0, c 2.0 (tie a/b broken by id) → a b c; d 2.0, e 3.0, f 9.0 → f e d
    want = (ndcg_at_k(["a", "b", "c"], {"a"}, 2) + ndcg_at_k(["f", "e", "d"], {"f", "x"}, 2)) / 2
    assert mean_ndcg(cands, logits, cos, rel, 10.0, 2) == pytest.approx(want)
    # w = 0: the logits alone: c b a, then d e (tie by id) f
    want0 = (ndcg_at_k(["c", "b", "a"], {"a"}, 2) + ndcg_at_k(["d", "e", "f"], {"f", "x"}, 2)) / 2
    assert mean_ndcg(cands, logits, cos, rel, 0.0, 2) == pytest.approx(want0)


def _world(logit_noise: float, cos_noise: float, n: int = 300, seed: int = 0):
    """20 candidates a question, one relevant; logits and cosines each a noisy view of relevance."""
    rng = np.random.default_rng(seed)
    cands, logits, cos, rel = [], [], [], []
    for q in range(n):
        y = np.zeros(20)
        y[rng.integers(20)] = 1
        ids = [f"{q}-{j}" for j in range(20)]
        cands.append(ids)
        logits.append(2.0 * y + rng.normal(0, logit_noise, 20))
        cos.append(0.5 + 0.1 * y + rng.normal(0, cos_noise, 20))
        rel.append({ids[int(np.argmax(y))]})
    return cands, logits, cos, rel


def test_fit_weights_the_recall_cosine_by_what_it_knows():
    # the cross-encoder sees everything, the cosine is noise: no weight on it
    alone = fit(*_world(logit_noise=0.1, cos_noise=0.2), model_id=MODEL, recall_model=RECALL)
    assert alone.recall_weight == 0.0
    # both are noisy views: fused beats each alone, with a positive weight
    both = fit(*_world(logit_noise=1.5, cos_noise=0.05), model_id=MODEL, recall_model=RECALL)
    c = both.calibration
    assert both.recall_weight > 0
    assert c["ndcg@5_fused"] > max(c["ndcg@5_reranker_alone"], c["ndcg@5_recall_alone"])
    # Platt: the fused probabilities are calibrated (mean predicted ≈ share relevant = 1/20)
    _, logits, cos, _ = _world(logit_noise=1.5, cos_noise=0.05)
    p = np.concatenate([both.scores(lg, cs) for lg, cs in zip(logits, cos, strict=True)])
    assert p.mean() == pytest.approx(1 / 20, abs=0.005) and np.all((p > 0) & (p < 1))


def test_fusion_file_roundtrip_and_checks(tmp_path):
    f = Fusion(
        recall_weight=17.5, scale=0.53, bias=-10.3, model_id=MODEL, recall_model=RECALL, threshold=0.12
    )
    assert Fusion.load(f.save(tmp_path / "fusion.json")) == f
    np.testing.assert_allclose(f.scores([1.0], [0.6]), 1 / (1 + np.exp(-(0.53 * (1.0 + 17.5 * 0.6) - 10.3))))
    with pytest.raises(ValueError, match="scale must be positive"):
        Fusion(recall_weight=1.0, scale=0.0, model_id=MODEL, recall_model=RECALL)
    with pytest.raises(ValueError, match="lie in"):
        Fusion(recall_weight=1.0, model_id=MODEL, recall_model=RECALL, threshold=1.5)
    (tmp_path / "bad.json").write_text(json.dumps({"recall_weight": 1.0}))
    with pytest.raises(ValueError, match="not a fusion file"):
        Fusion.load(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(json.dumps({**f.to_dict(), "scale": -1.0}))
    with pytest.raises(
        InputError, match=r"bad\.json is not a valid fusion file: fusion scale must be positive"
    ):
        Fusion.load(tmp_path / "bad.json")


# -- in the job -------------------------------------------------------------------------------------------


def _model_dir(tmp_path, **changes):
    fields = dict(
        recall_weight=10.0, scale=0.5, bias=-4.0, model_id=MODEL, recall_model=RECALL, threshold=0.3
    )
    Fusion(**{**fields, **changes}).save(tmp_path / "fusion.json")
    return str(tmp_path)


def resolve_fusion(config: JobConfig, model_id: str, recall_model: str | None) -> Fusion | None:
    """The fusion of the job's score policy for `config.model`'s folder."""
    return ScorePolicy.for_job(config, model_id, recall_model).fusion


def test_job_resolves_fusion_by_model_and_bi_encoder(tmp_path):
    model = _model_dir(tmp_path)
    auto, on, off = (JobConfig.build(model=model, fusion=m) for m in ("auto", "on", "off"))
    assert resolve_fusion(auto, MODEL, RECALL).recall_weight == 10.0
    assert resolve_fusion(off, MODEL, RECALL) is None
    assert resolve_fusion(auto, MODEL, None) is None  # logged candidates carry no cosines
    with pytest.raises(ConfigError, match="logged candidates"):
        resolve_fusion(on, MODEL, None)
    assert resolve_fusion(auto, MODEL, "other@000000000000") is None  # another bi-encoder: unfused
    with pytest.raises(ScaleMismatchError, match="cosines of"):
        resolve_fusion(on, MODEL, "other@000000000000")
    with pytest.raises(ScaleMismatchError, match="fitted for model"):
        resolve_fusion(auto, "retrained@abcdefabcdef", RECALL)  # a stale file is refused
    (tmp_path / "fusion.json").unlink()
    assert resolve_fusion(auto, MODEL, RECALL) is None
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_fusion(on, MODEL, RECALL)


def test_job_serves_at_the_calibrated_max_length(tmp_path, caplog):
    _model_dir(tmp_path, calibration={"settings": {"max_length": 128}})
    fusion = Fusion.load(tmp_path / "fusion.json")
    assert calibrated_max_length(tmp_path, fusion) == 128
    assert calibrated_max_length(tmp_path) is None  # unfused: threshold.json's record, absent here
    Threshold(value=0.9, model_id=MODEL, calibration={"settings": {"max_length": 192}}).save(
        tmp_path / "threshold.json"
    )
    assert calibrated_max_length(tmp_path) == 192 and calibrated_max_length(tmp_path, fusion) == 128

    def served(config: JobConfig) -> int:
        return ScorePolicy.for_job(config, MODEL, RECALL).serve(config).tokenizer.max_length

    model = str(tmp_path)
    # an explicit threshold does not drop the length the fusion weights were fitted at
    with_threshold = JobConfig.build(model=model, threshold=0.3)
    assert served(with_threshold) == 128
    policy = ScorePolicy.for_job(with_threshold, MODEL, RECALL)
    assert (policy.threshold_source, policy.max_length_source) == ("config", str(tmp_path / "fusion.json"))
    explicit = JobConfig.build(model=model, tokenizer={"max_length": 256})
    assert served(explicit) == 256
    assert "calibrated at 128" in caplog.text
    assert served(JobConfig.build(model=str(tmp_path / "uncalibrated"))) == 256


def test_finalize_orders_and_thresholds_the_fused_score():
    from rerank_engine.job.stages import finalize

    logits, cos = [0.0, 1.0, 2.0, -1.0], [0.9, 0.5, 0.1, 0.8]
    batch = pa.table(
        {
            "query_id": ["q"],
            "__rerank_status": pa.array([None], pa.string()),
            "__rerank_cand_ids": [["a", "b", "c", "d"]],
            "__rerank_recall_scores": pa.array([cos], pa.list_(pa.float32())),
            "__rerank_recall_ranks": [[1, 2, 3, 4]],
            "__rerank_logits": pa.array([logits], pa.list_(pa.float32())),
        }
    )
    weights = Fusion(recall_weight=10.0, scale=0.5, bias=-4.0, model_id=MODEL, recall_model=RECALL)
    fused = 0.5 * (np.array(logits) + 10.0 * np.array(np.float32(cos), np.float64)) - 4.0
    prob = 1 / (1 + np.exp(-fused))  # a 0.62, b 0.27, c 0.08, d 0.38

    def policy(threshold: float, fusion: Fusion | None = weights) -> ScorePolicy:
        return ScorePolicy(reranker_model=MODEL, recall_model=RECALL, threshold=threshold, fusion=fusion)

    kw = dict(k_rerank=4, run_id="r")
    row = finalize(batch, policy=policy(0.15), **kw).to_pylist()[0]
    assert [r["doc_id"] for r in row["results"]] == ["a", "d", "b"]  # c (the best logit) falls below
    np.testing.assert_allclose([r["score"] for r in row["results"]], prob[[0, 3, 1]], rtol=1e-6)
    assert [r["logit"] for r in row["results"]] == [0.0, -1.0, 1.0]  # the reranker's own, unfused
    assert row["score_kind"] == "fused_probability"
    row = finalize(batch, policy=policy(0.4), **kw).to_pylist()[0]
    assert [r["doc_id"] for r in row["results"]] == ["a"] and row["status"] == "ok"
    plain = finalize(batch, policy=policy(0.0, fusion=None), **kw).to_pylist()[0]
    assert [r["doc_id"] for r in plain["results"]] == ["c", "b", "a", "d"]
    assert plain["score_kind"] == "reranker_probability"
