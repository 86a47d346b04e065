"""Calibration end to end on a tiny model, the report and its plots, and the classic IR loader.

The tiny world: a few insurance-like questions over a 24-answer corpus, real bi-encoder recall (the bundled
all-MiniLM-L6-v2), the tiny random cross-encoder export from conftest. Its scores mean nothing; what is
checked is the plumbing: the file the job reads, its binding to the model, idempotent reruns, the plots.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from rerank_engine.data import classic_ir
from rerank_engine.quality.evaluation import ScoredCascade, threshold_comparison
from rerank_engine.quality.fusion import Fusion
from rerank_engine.quality.out_of_domain import out_of_domain
from rerank_engine.quality.score_policy import ScorePolicy
from rerank_engine.quality.thresholds import ScoredQuery, Threshold, sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHARED_CLASSIC_IR = Path(
    os.environ.get(classic_ir.ENV) or Path(__file__).resolve().parents[2] / "shared" / "data" / "classic_ir"
)


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000, path


# -- plots ------------------------------------------------------------------------------------------------


def test_plots_are_real_png_files(tmp_path):
    from rerank_engine.quality import plots

    rng = np.random.default_rng(0)
    queries = [ScoredQuery.of(np.sort(rng.random(5))[::-1], rng.random(5) < 0.3) for _ in range(40)]
    curves = plots.threshold_curves(
        sweep(queries), tmp_path / "a" / "curves.png", marks={"best F1": 0.52, "P ≥ 0.8": 0.7}, title="t"
    )
    hist = plots.score_histograms(queries, tmp_path / "hist.png", threshold=0.52)
    bars = plots.grouped_bars(
        {"x": {"P": 0.3, "F1": 0.5}, "y": {"P": 0.6, "F1": 0.4}, "_info": {}}, ["P", "F1"], tmp_path / "b.png"
    )
    for path in (curves, hist, bars):
        assert_png(path)


# -- classic IR -------------------------------------------------------------------------------------------


def test_smart_format_reader(tmp_path):
    (tmp_path / "MED.ALL").write_text(
        ".I 1\n.W\nfirst document\nabout lenses .\n.I 2\n.T\nA title\n.W\nsecond text\n.I 3\n.W\nthird\n"
    )
    (tmp_path / "MED.QRY").write_text(".I 1\n.W\n lens of the eye\n.I 2\n.W\nunjudged query\n")
    (tmp_path / "MED.REL").write_text("1 1 1\n1 3 1\n1 99 1\n")  # doc 99 does not exist: dropped
    assert classic_ir.available(tmp_path) == ["med"]
    col = classic_ir.load_collection("med", tmp_path)
    assert col.docs == {"1": "first document about lenses .", "2": "A title. second text", "3": "third"}
    assert col.queries == {"1": "lens of the eye"}  # only judged queries are kept
    assert col.relevant("1") == {"1", "3"}


def test_cranfield_grades_and_query_order(tmp_path):
    (tmp_path / "cran.all.1400").write_text(".I 1\n.T\nwings .\n.W\nwings . on wings\n.I 2\n.W\nflow\n")
    (tmp_path / "cran.qry").write_text(".I 001\n.W\nwing lift\n.I 004\n.W\nflow over plates\n")
    (tmp_path / "cranqrel").write_text("1 1 2\n1 2 -1\n2 2 4 \n")  # query ids follow file order
    col = classic_ir.load_collection("cranfield", tmp_path)
    assert col.docs["1"] == "wings . on wings"  # the text repeats its title: not doubled
    assert col.queries == {"1": "wing lift", "2": "flow over plates"}
    assert col.qrels == {"1": {"1": 2}, "2": {"2": 4}}  # code −1 is not a judgement of relevance


@pytest.mark.skipif(not SHARED_CLASSIC_IR.is_dir(), reason="classic IR collections not present")
def test_real_classic_ir_collections():
    names = classic_ir.available(SHARED_CLASSIC_IR)
    assert names, f"no collection under {SHARED_CLASSIC_IR}"
    expected = {"cranfield": (1400, 225), "cisi": (1460, 76), "med": (1033, 30)}
    for name in names:
        col = classic_ir.load_collection(name, SHARED_CLASSIC_IR)
        assert (len(col.docs), len(col.queries)) == expected[name]
        assert all(col.queries[q].strip() and col.relevant(q) <= col.docs.keys() for q in col.queries)


# -- calibration end to end on the tiny model -------------------------------------------------------------

WORDS = [
    "policy",
    "flood",
    "fire",
    "theft",
    "liability",
    "claim",
    "premium",
    "deductible",
    "annuity",
    "rider",
    "waiting",
    "period",
]


@pytest.fixture(scope="module")
def tiny_world():
    """(questions, answers, recall): 8 questions, 24 answers, real bi-encoder recall over them."""
    from rerank_engine.data.insuranceqa import Question
    from rerank_engine.recall.index import BiEncoder, RecallIndex

    rng = np.random.default_rng(0)
    answers = {str(i): " ".join(rng.choice(WORDS, size=12).tolist()) for i in range(24)}
    questions = tuple(
        Question(
            qid=f"valid-{i}",
            text=" ".join(rng.choice(WORDS, size=4).tolist()) + "?",
            domain="home",
            answers=(str(i), str(i + 8)),
            negatives=(),
        )
        for i in range(8)
    )
    encoder = BiEncoder(threads=1)
    ids = list(answers)
    index = RecallIndex.build(encoder.encode([answers[i] for i in ids]), ids)
    return questions, answers, (encoder, index, None)


@pytest.mark.slow
def test_calibrate_end_to_end_on_tiny_model(tiny_world, tiny_export, copy_export, tmp_path):
    from rerank_engine.quality.calibration import calibrate
    from rerank_engine.serving.manifest import read_manifest

    questions, answers, recall = tiny_world
    model = copy_export(tiny_export, "tiny-model")  # threshold.json is written into the model's folder
    model_id = read_manifest(model).model_id
    logs: list[str] = []
    kwargs = dict(
        split="valid",
        data="tiny",
        k_recall=10,
        plots_dir=tmp_path / "plots",
        cache_dir=tmp_path / "scores",
        log=logs.append,
    )
    record = calibrate(model, questions, answers, recall, **kwargs)

    data = json.loads((model / "threshold.json").read_text())
    assert data == {k: v for k, v in record.items()}
    assert data["model_id"] == model_id and data["scale"] == "probability"
    assert 0.0 <= data["value"] <= 1.0
    cal = data["calibration"]
    assert cal["settings"]["questions"] == 8 and cal["settings"]["split"] == "valid"
    assert cal["settings"]["k_recall"] == 10 and cal["settings"]["k_rerank"] == 5
    assert cal["at_threshold"]["f1"] >= cal["no_threshold"]["f1"]  # the best F1 is at least no threshold's
    Threshold.load(model / "threshold.json").check(model_id=model_id)
    fusion = Fusion.load(model / "fusion.json")  # the fused score, fitted on the same questions
    assert fusion.model_id == model_id and fusion.recall_model == recall[0].model_id
    assert fusion.calibration["settings"] == cal["settings"] and cal["settings"]["max_length"] == 256
    assert 0.0 <= fusion.threshold <= 1.0 and fusion.scale > 0
    by_weight = fusion.calibration["ndcg@5_by_weight"]
    assert (
        fusion.calibration["ndcg@5_fused"]
        == max(by_weight.values())
        == by_weight[f"{fusion.recall_weight:g}"]
    )
    assert_png(tmp_path / "plots" / "threshold_curves.png")
    assert_png(tmp_path / "plots" / "score_histograms.png")
    tradeoff = (tmp_path / "plots" / "threshold_tradeoff.md").read_text()
    assert "Recall's top-5 on the same questions" in tradeoff
    calibrated = [line for line in tradeoff.splitlines() if "(calibrated, best F1)" in line]
    assert len(calibrated) == 1 and f"| {fusion.threshold:.4f} |" in calibrated[0]
    assert tradeoff.count("\n| ") >= 2  # the calibrated row and at least the no-threshold row

    # same model and settings: up to date, nothing loaded, rescored or rewritten
    before = (model / "threshold.json").read_bytes()

    def must_not_load():
        raise AssertionError("an up-to-date calibration loaded the recall")

    again = calibrate(model, questions, answers, must_not_load, recall_model=recall[0].model_id, **kwargs)
    assert again["skipped"] is True and (model / "threshold.json").read_bytes() == before
    (model / "fusion.json").unlink()  # a missing fusion.json is not up to date
    assert "skipped" not in calibrate(model, questions, answers, recall, **kwargs)
    assert (model / "fusion.json").is_file()

    # other settings: recalibrated from the cached scores
    logs.clear()
    third = calibrate(model, questions, answers, recall, target_precision=0.3, **kwargs)
    assert "skipped" not in third and any("scores of" in m for m in logs)
    assert third["calibration"]["target_precision"]["target"] == 0.3

    with pytest.raises(ValueError, match="never on test"):
        calibrate(model, questions, answers, recall, **{**kwargs, "split": "test"})


# -- the report -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_out_of_domain_and_report(tiny_world, tmp_path):
    from rerank_engine.quality.report import write_report

    _, _, recall = tiny_world
    encoder = recall[0]
    col = classic_ir.Collection(
        name="toy",
        docs={"1": "flood damage to the house", "2": "premium of a life policy", "3": "theft of a car"},
        queries={"1": "house flooded", "2": "car stolen"},
        qrels={"1": {"1": 1}, "2": {"3": 1}},
    )

    # a scorer that reverses the bi-encoder's order: the rerank must come out worse, and say so
    def reverse(queries, passages):
        return -np.sum(encoder.encode(queries) * encoder.encode(passages), axis=1)

    # fused with a large weight on the cosine, the recall order comes back from the same scores
    fusion = Fusion(recall_weight=1e4, scale=1e-3, model_id="reverse@0", recall_model=encoder.model_id)
    ood = out_of_domain(
        col,
        encoder,
        {"reverse@0": lambda q, p: 1 / (1 + np.exp(-reverse(q, p)))},
        tmp_path / "emb",
        k_recall=3,
        fusions={"reverse@0": fusion},
        log=lambda m: None,
    )
    base, rerank = ood["bi-encoder (recall top-3)"], ood["reverse@0 (rerank recall top-3)"]
    fused = ood["reverse@0 + recall fusion (rerank recall top-3)"]
    assert fused["NDCG@10"] == pytest.approx(1.0) and fused["wins"] == fused["losses"] == 0
    assert base["NDCG@10"] == pytest.approx(1.0)  # the bi-encoder gets both right at rank 1
    assert rerank["NDCG@10"] == pytest.approx(0.5) and rerank["losses"] == 2 and rerank["wins"] == 0
    assert ood["_info"]["queries"] == 2

    sc = ScoredCascade(
        model_id="tiny@0123456789ab",
        qids=["q1", "q2", "q3"],
        candidates=[["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"]],
        scores=[np.array(s, np.float32) for s in ([0.9, 0.2, 0.4], [0.3, 0.6, 0.1], [0.8, 0.7, 0.2])],
        relevant=[{"a"}, {"z"}, {"h", "i"}],
    )
    calibrated = ScorePolicy(
        reranker_model=sc.model_id, threshold=0.65, calibration={"settings": {"split": "valid"}}
    )
    results = {
        "cascade": {
            "sys": {c: 0.5 for c in ("P@1", "P@5", "NDCG@5", "MRR@10", "R@10", "noise@5")},
            "_info": {},
        },
        "threshold": threshold_comparison(sc, calibrated.threshold),
        "out_of_domain": {"toy": ood},
        "_meta": {"split": "test", "data": "tiny", "seconds": 1.0},
    }
    command = "python -m jobs.evaluate --split test --models m --queries 3 --out o"
    report = write_report(tmp_path, results, sc, calibrated, command).read_text()
    assert f"`{command}`" in report
    for png in ("threshold_curves.png", "score_histograms.png", "handed_on.png", "out_of_domain.png"):
        assert_png(tmp_path / png)
        assert f"({png})" in report
    assert "rerank top-5 ≥ 0.650" in report and "0.52" in report  # our row and the seed's threshold
    assert "toy, rerank: **hurts**" in report
    assert "toy, rerank + recall fusion: **does not help (about even)**" in report


@pytest.mark.slow
def test_pool_setting_with_a_fused_row(tiny_world):
    """Setting (b): each question's positives + negatives reranked; a fused row from the same scores."""
    from rerank_engine.data.insuranceqa import Question
    from rerank_engine.quality.evaluation import pool

    questions, answers, recall = tiny_world
    encoder = recall[0]
    ids = list(answers)
    emb = dict(zip(ids, encoder.encode([answers[i] for i in ids]), strict=True))
    with_negatives = [
        Question(qid=q.qid, text=q.text, domain=q.domain, answers=q.answers, negatives=tuple(ids[16:]))
        for q in questions
    ]

    def reverse(queries, passages):  # probabilities that reverse the bi-encoder's order
        return 1 / (1 + np.exp(np.sum(encoder.encode(queries) * encoder.encode(passages), axis=1)))

    fusion = Fusion(recall_weight=1e4, scale=1e-3, model_id="reverse@0", recall_model=encoder.model_id)
    out = pool(with_negatives, emb, encoder, answers, {"reverse@0": reverse}, fusions={"reverse@0": fusion})
    assert out["_info"] == {"questions": 8, "mean_pool_size": 10.0}  # 2 positives + 8 negatives
    bi, alone, fused = (
        out["bi-encoder (pool)"],
        out["reverse@0 (pool)"],
        out["reverse@0 + recall fusion (pool)"],
    )
    assert fused == pytest.approx(bi)  # the cosine, weighted up, gives the bi-encoder's order back
    assert alone["NDCG@10"] < bi["NDCG@10"]  # the reversing scorer alone is worse
    assert set(out) >= {"BM25 (pool)"}


# -- two models, paired -----------------------------------------------------------------------------------


def test_paired_difference_by_hand():
    from rerank_engine.quality.paired import paired_difference

    rel = {"a"}
    runs = [(["a"], rel), (["a"], rel), (["b"], rel), (["b"], rel)]  # NDCG@5 1, 1, 0, 0
    base = [(["b"], rel), (["b"], rel), (["b"], rel), (["b"], rel)]  # 0, 0, 0, 0
    out = paired_difference(runs, base, n_boot=2000)
    assert out["questions"] == 4 and out["ndcg@5_mean_difference"] == 0.5
    assert out["standard_error"] == pytest.approx(np.std([1, 1, 0, 0], ddof=1) / 2, abs=1e-4)
    low, high = out["bootstrap_95"]
    assert 0.0 <= low < 0.5 < high <= 1.0
    assert (out["better"], out["worse"]) == (2, 0)
    same = paired_difference(base, base)
    assert same["ndcg@5_mean_difference"] == 0 and same["bootstrap_95"] == [0, 0] and same["better"] == 0
    with pytest.raises(ValueError, match="at least 2 questions"):
        paired_difference(runs[:1], base[:1])


@pytest.mark.slow
def test_compare_models_alone_against_fused(tiny_world, tiny_export, copy_export, tmp_path):
    """jobs.compare_models: the baseline without fusion.json is scored alone, the candidate (the same
    weights, calibrated) fused with its own fusion.json, at the NDCG@5 calibration's fit recorded; the
    paired difference is that of the two means. The tiny model's fit is flat (scale ~1e-6): its fused
    probabilities differ by ~1e-8, which float32 probabilities used to collapse into ties."""
    from jobs.compare_models import compare
    from rerank_engine.quality.calibration import calibrate

    questions, answers, recall = tiny_world
    baseline, candidate = copy_export(tiny_export, "baseline"), copy_export(tiny_export, "candidate")
    calibrate(candidate, questions, answers, recall, split="valid", data="tiny", k_recall=10,
              cache_dir=tmp_path / "scores", log=lambda m: None)  # fmt: skip
    out = compare(baseline, candidate, questions, answers, recall, k_recall=10, cache_dir=tmp_path / "scores")

    fitted = Fusion.load(candidate / "fusion.json")
    fitted_weight = fitted.recall_weight
    assert out["baseline"]["scored"] == "alone, max_length 256"
    assert out["candidate"]["scored"] == f"fused (recall weight {fitted_weight:g}), max_length 256"
    assert out["baseline"]["model_id"] == out["candidate"]["model_id"]  # same weights, other files beside
    assert out["candidate"]["ndcg@5"] == pytest.approx(fitted.calibration["ndcg@5_fused"], abs=1e-4)
    diff = out["candidate_minus_baseline"]
    assert diff["questions"] == 8
    assert diff["ndcg@5_mean_difference"] == pytest.approx(
        out["candidate"]["ndcg@5"] - out["baseline"]["ndcg@5"], abs=2e-4
    )
    itself = compare(baseline, baseline, questions, answers, recall, k_recall=10, cache_dir=tmp_path / "s")
    assert itself["candidate_minus_baseline"]["ndcg@5_mean_difference"] == 0


def test_compare_models_can_skip_the_questions_calibration_has_seen():
    from jobs.compare_models import questions_of
    from rerank_engine.errors import ConfigError

    split = list(range(2000))
    assert questions_of(split, 500, 1500) == list(range(500, 2000))
    assert questions_of(split, 0, 500) == list(range(500)) and questions_of(split, 1990, None) == split[1990:]
    with pytest.raises(ConfigError, match=r"--skip 2000 --queries 10: no questions \(the split has 2000\)"):
        questions_of(split, 2000, 10)
