"""Hard-negative mining on a tiny corpus, a few fine-tuning steps on a tiny model (real FAISS, torch)."""

from __future__ import annotations

import numpy as np
import pytest

from rerank_engine.recall.index import RecallIndex
from rerank_engine.training.hard_negatives import MiningConfig, mine, read_records, write_records

DOCS = {f"d{i}": f"passage number {i} about topic {i % 3}" for i in range(12)}


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_corpus():
    rng = np.random.default_rng(0)
    ids = list(DOCS)
    emb = _unit(rng.normal(size=(len(ids), 16)))
    index = RecallIndex.build(emb, ids)
    # queries sit near their positive, so the positive tops recall and the rest are negatives
    positives = [("d0", "d5"), ("d3",), ("d7",)]
    q_emb = _unit(np.stack([emb[ids.index(p[0])] + 0.3 * rng.normal(size=16) for p in positives]))
    return ids, emb, index, positives, q_emb


def test_mining_never_returns_a_positive_as_negative(tiny_corpus):
    ids, emb, index, positives, q_emb = tiny_corpus
    by_id = dict(zip(ids, emb, strict=True))
    config = MiningConfig.build(
        k=12, rank_max=12, n_negatives=5, margin=-1.0, source="both", n_dataset_negatives=2
    )
    dataset_negs = [("d0", "d1", "d2"), ("d3", "d4", "d9"), ("d7", "d8", "d10")]  # positives mixed in
    mined, stats = mine(
        ["q0", "q1", "q2"],
        q_emb,
        positives,
        index,
        by_id,
        config,
        queries=["a", "b", "c"],
        dataset_negatives=dataset_negs,
    )
    assert len(mined) == 3
    for m, pos in zip(mined, positives, strict=True):
        assert set(m.neg_ids).isdisjoint(pos)
        assert 5 <= len(m.neg_ids) <= 5 + 2  # dataset negatives already recalled are not added twice
        assert len(set(m.neg_ids)) == len(m.neg_ids)
    assert stats["positive_in_recall"] == 4  # every positive of the 3 queries was inside the top-12


def test_mining_rank_range_and_margin(tiny_corpus):
    ids, emb, index, positives, q_emb = tiny_corpus
    by_id = dict(zip(ids, emb, strict=True))
    scores, got = index.search(q_emb, 12)
    config = MiningConfig.build(k=12, rank_min=3, rank_max=6, n_negatives=10, margin=0.0)
    mined, _ = mine(["q0", "q1", "q2"], q_emb, positives, index, by_id, config, queries=["a", "b", "c"])
    for m, row_ids, row_scores, pos in zip(mined, got, scores, positives, strict=True):
        allowed = {d for r, d in enumerate(row_ids, start=1) if 3 <= r <= 6 and d not in pos}
        best = max(float(q_emb[mined.index(m)] @ by_id[p]) for p in pos)
        assert set(m.neg_ids) <= allowed
        assert all(row_scores[list(row_ids).index(d)] <= best for d in m.neg_ids)


def test_relative_margin_max_score_and_skipped_ranks_are_guards(tiny_corpus):
    ids, emb, index, positives, q_emb = tiny_corpus
    by_id = dict(zip(ids, emb, strict=True))
    scores, got = index.search(q_emb, 12)
    config = MiningConfig.build(
        k=12, rank_min=2, rank_max=12, n_negatives=12, margin=-1.0, relative_margin=0.2, max_score=0.3
    )
    mined, stats = mine(["q0", "q1", "q2"], q_emb, positives, index, by_id, config, queries=["a", "b", "c"])
    kept = 0
    for m in mined:
        row = ["q0", "q1", "q2"].index(m.qid)
        best = max(float(q_emb[row] @ by_id[p]) for p in positives[row])
        score_of = dict(zip(got[row], scores[row], strict=True))
        rank_of = {d: r for r, d in enumerate(got[row], start=1)}
        for d in m.neg_ids:
            assert rank_of[d] >= 2
            assert score_of[d] <= 0.8 * best + 1e-6
            assert score_of[d] <= 0.3 + 1e-6
        kept += len(m.neg_ids)
    # every candidate is accounted for: a positive, a skipped rank, a guard, or kept
    dropped = sum(
        stats[k]
        for k in ("positive_in_recall", "outside_rank_range", "within_margin", "within_relative_margin")
    )
    assert dropped + stats["above_max_score"] + stats["recall_negatives"] == 3 * 12
    assert kept == stats["recall_negatives"]
    assert stats["within_relative_margin"] + stats["above_max_score"] > 0


def test_answers_labelled_for_a_paraphrase_are_not_negatives(tiny_corpus):
    from rerank_engine.training.paraphrases import ParaphraseRule

    ids, emb, index, positives, q_emb = tiny_corpus
    by_id = dict(zip(ids, emb, strict=True))
    texts = [
        "Can Car Insurance Companies Drop You?",
        "Can Auto Insurance Companies Drop You?",
        "Does Medicare Pay For A Walker?",
    ]
    # q1 is a paraphrase of q0: its positive d3 is a false negative for q0 and must not be mined for it
    rule = ParaphraseRule(texts, positives)
    config = MiningConfig.build(k=12, rank_max=12, n_negatives=12, margin=-1.0, exclude_paraphrases=True)
    mined, stats = mine(
        ["q0", "q1", "q2"], q_emb, positives, index, by_id, config, queries=texts, paraphrases=rule
    )
    by_qid = {m.qid: m for m in mined}
    assert "d3" not in by_qid["q0"].neg_ids and ("d3", "q1") in by_qid["q0"].paraphrase_excluded
    assert not set(positives[0]) & set(by_qid["q1"].neg_ids)
    assert "d7" in by_qid["q0"].neg_ids  # q2 is no paraphrase: its answer stays a negative
    assert stats["paraphrase_label"] == 2 + 1  # d3 for q0; d0 and d5 for q1
    unguarded, _ = mine(
        ["q0", "q1", "q2"],
        q_emb,
        positives,
        index,
        by_id,
        MiningConfig.build(k=12, rank_max=12, n_negatives=12, margin=-1.0),
        queries=texts,
    )
    assert "d3" in unguarded[0].neg_ids


def test_paraphrase_rule_weighs_rare_words():
    from rerank_engine.training.paraphrases import ParaphraseRule

    texts = [
        "How Much Does Life Insurance Cost For Seniors?",
        "About How Much Does Life Insurance Cost For Seniors?",
        "How Much Does Life Insurance Cost For Children?",
        "Does Health Insurance Typically Cover Otoplasty?",
        "Does Health Insurance Cover Otoplasty?",
        "does health insurance cover OTOPLASTY",
        *[f"Is life insurance for topic {i} needed?" for i in range(40)],  # common words stay common
    ]
    rule = ParaphraseRule(texts, [[] for _ in texts])
    assert rule.is_paraphrase(0, 1)
    assert not rule.is_paraphrase(0, 2)  # seniors vs children: the rare words differ
    assert rule.is_paraphrase(3, 4)
    assert rule.similarity(4, 5) == 1.0  # equal once case and punctuation are ignored
    assert not rule.is_paraphrase(3, 3)


def test_records_round_trip(tmp_path, tiny_corpus):
    ids, emb, index, positives, q_emb = tiny_corpus
    mined, _ = mine(
        ["q0"],
        q_emb[:1],
        positives[:1],
        index,
        dict(zip(ids, emb, strict=True)),
        MiningConfig.build(k=5, n_negatives=2, margin=-1.0),
        queries=["what is d0"],
    )
    path = write_records(mined, DOCS, tmp_path / "mined.jsonl")
    (record,) = read_records(path)
    assert record["query"] == "what is d0"
    assert record["pos"] == [DOCS[d] for d in record["pos_ids"]]
    assert len(record["neg"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["listwise", "bce"])
def test_a_few_steps_lower_the_loss_and_resume(tmp_path, tiny_model_dir, loss):
    from rerank_engine.training.finetune import FinetuneConfig, train

    records = [
        {
            "query": f"what is topic {i}",
            "pos": [f"topic {i} is a thing about {i}"],
            "neg": [f"unrelated text {j} of other kinds" for j in range(4)],
        }
        for i in range(6)
    ]
    config = FinetuneConfig.build(
        loss=loss,
        n_negatives=3,
        groups_per_step=3,
        steps=40,
        lr=1e-3,
        warmup_share=0.0,
        max_length=32,
        checkpoint_every=10,
        eval_every=100,
    )
    first = train(config, records, tmp_path / "run", base_model=tiny_model_dir, stop_at=20, progress=False)
    assert first["step"] == 20
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    second = train(config, records, tmp_path / "run", base_model=tiny_model_dir, progress=False)
    assert second["step"] == 40
    assert np.mean(second["last_losses"][-5:]) < first["mean_loss_first"]


def _fused_records(n: int = 6) -> list[dict]:
    return [
        {
            "qid": f"q{i}",
            "query": f"what is topic {i}",
            "pos": [f"topic {i} is a thing about {i}"],
            "pos_ids": [f"p{i}"],
            "neg": [f"unrelated text {j} of other kinds" for j in range(4)],
            "neg_ids": [f"n{j}" for j in range(4)],
        }
        for i in range(n)
    ]


def test_fused_loss_needs_the_recall_cosine(tmp_path, tiny_model_dir):
    from rerank_engine.training.finetune import FinetuneConfig, train

    config = FinetuneConfig.build(n_negatives=2, steps=2, max_length=32, fusion_weight=5.0, fusion_share=0.5)
    with pytest.raises(ValueError, match="recall cosine"):
        train(config, _fused_records(), tmp_path / "run", base_model=tiny_model_dir, progress=False)


@pytest.mark.slow
def test_fused_loss_sees_each_groups_cosines_and_lowers_the_loss(tmp_path, tiny_model_dir):
    """The fused term gets the cosines of exactly the group's (query, passage) pairs, positive first."""
    from rerank_engine.training.finetune import FinetuneConfig, train

    seen = []

    def cosine(qid, doc_ids):
        seen.append((qid, list(doc_ids)))
        return np.array([0.5 if d.startswith("p") else 0.4 for d in doc_ids], dtype=np.float32)

    config = FinetuneConfig.build(
        n_negatives=2,
        n_random_negatives=1,
        groups_per_step=3,
        steps=40,
        lr=1e-3,
        warmup_share=0.0,
        max_length=32,
        checkpoint_every=100,
        eval_every=100,
        fusion_weight=5.0,
        fusion_share=0.5,
    )
    state = train(
        config, _fused_records(), tmp_path / "run", base_model=tiny_model_dir, cosine=cosine, progress=False
    )
    assert len(seen) == 40 * 3
    for qid, ids in seen:
        i = qid[1:]
        assert ids[0] == f"p{i}" and len(ids) == 4
        assert all(d.startswith("n") for d in ids[1:3]) and ids[3].startswith("p") and ids[3] != f"p{i}"
    assert np.mean(state["last_losses"][-5:]) < state["mean_loss_first"]


@pytest.mark.slow
def test_evaluate_reports_the_fused_order(tiny_model_dir):
    """With a weight that swamps the logits, the fused NDCG@5 is the recall order's NDCG@5."""
    from rerank_engine.config import TokenizerConfig
    from rerank_engine.quality.metrics import mean_metrics
    from rerank_engine.serving.tokenization import PairTokenizer
    from rerank_engine.training.scoring import EvalSet, evaluate, load_model

    rng = np.random.default_rng(1)
    ids = [[f"d{j}" for j in range(6)] for _ in range(4)]
    recall = [sorted(rng.uniform(0, 1, 6).tolist(), reverse=True) for _ in range(4)]
    relevant = [{"d0"}, {"d3"}, {"d5"}, {"d1", "d2"}]
    evalset = EvalSet(
        queries=[f"query {i}" for i in range(4)],
        candidates=[[f"passage {d} text" for d in row] for row in ids],
        candidate_ids=ids,
        relevant=relevant,
        recall_scores=recall,
    )
    model = load_model(tiny_model_dir, seed=0)
    tokenizer = PairTokenizer(tiny_model_dir, TokenizerConfig(max_length=32))
    metrics = evaluate(model, tokenizer, evalset, fusion_weight=1e6)
    expected = mean_metrics(list(zip(ids, relevant, strict=True)), ks=(5,))["NDCG@5"]
    assert metrics["NDCG@5_fused"] == pytest.approx(expected)
    assert "NDCG@5_fused" not in evaluate(model, tokenizer, evalset)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_interrupted_run_resumes_exactly(tmp_path, tiny_model_dir, assert_same_checkpoint, precision):
    """Stopped at step 7 and resumed, a run ends with the same weights and losses as one left alone:
    optimizer, schedule, data order and dropout RNG all come back from the checkpoint (bf16 autocast
    included)."""

    from rerank_engine.training.finetune import FinetuneConfig, train

    config = FinetuneConfig.build(
        precision=precision,
        loss="bce",
        pos_weight=3.0,
        n_negatives=2,
        n_random_negatives=1,
        groups_per_step=2,
        steps=14,
        lr=1e-3,
        warmup_share=0.2,
        max_length=32,
        checkpoint_every=3,
        eval_every=100,
    )
    whole = train(config, _fused_records(), tmp_path / "whole", base_model=tiny_model_dir, progress=False)
    train(config, _fused_records(), tmp_path / "split", base_model=tiny_model_dir, stop_at=7, progress=False)
    rest = train(config, _fused_records(), tmp_path / "split", base_model=tiny_model_dir, progress=False)
    assert_same_checkpoint(tmp_path / "whole", tmp_path / "split")
    assert rest["last_losses"] == whole["last_losses"][-len(rest["last_losses"]) :]


@pytest.mark.slow
def test_bf16_autocast_trains_its_own_run_close_to_fp32_and_keeps_the_fp32_key(tmp_path, tiny_model_dir):
    """`precision: bf16` runs the step's forward in bf16: the losses move (so autocast took effect) but
    stay close to fp32's, the checkpoint key differs (a bf16 run never resumes an fp32 one), the saved
    weights stay fp32, and the fp32 key is the one runs had before the option existed."""
    import torch

    from rerank_engine.training.finetune import FinetuneConfig, train

    assert FinetuneConfig().key() == "ce84c2b6cf2517fe"  # the default's key before `precision` existed
    settings = dict(n_negatives=2, groups_per_step=2, steps=6, lr=1e-3, max_length=32, eval_every=100)
    runs = {}
    for precision in ("fp32", "bf16"):
        config = FinetuneConfig.build(precision=precision, **settings)
        runs[precision] = train(
            config, _fused_records(), tmp_path / precision, base_model=tiny_model_dir, progress=False
        )
        runs[precision]["key"] = config.key()
    fp32, bf16 = np.array(runs["fp32"]["last_losses"]), np.array(runs["bf16"]["last_losses"])
    assert runs["fp32"]["key"] != runs["bf16"]["key"]
    assert not np.array_equal(fp32, bf16)
    assert np.allclose(fp32, bf16, rtol=0.05, atol=0.02)
    saved = torch.load(tmp_path / "bf16" / "checkpoint.pt", weights_only=True)
    assert {t.dtype for t in saved["model"].values() if t.is_floating_point()} == {torch.float32}


def test_bce_weighs_the_positive_by_pos_weight():
    import torch

    from rerank_engine.training.finetune import group_loss

    grouped = torch.tensor([[0.3, -0.2, 0.1], [1.0, 0.5, -1.0]])
    sp = torch.nn.functional.softplus
    by_hand = (3.0 * sp(-grouped[:, 0]).sum() + sp(grouped[:, 1:]).sum()) / grouped.numel()
    assert float(group_loss("bce", grouped, pos_weight=3.0)) == pytest.approx(float(by_hand), rel=1e-6)
    assert float(group_loss("bce", grouped)) < float(group_loss("bce", grouped, pos_weight=3.0))


def test_memoized_tokenizer_gives_the_same_pairs(random_pairs):
    from rerank_engine.config import TokenizerConfig
    from rerank_engine.recall.index import bundled_minilm_dir
    from rerank_engine.serving.tokenization import PairTokenizer

    bundled = bundled_minilm_dir()
    queries, passages = random_pairs(40, seed=3)
    config = TokenizerConfig(max_length=48, max_query_share=0.25)
    plain = PairTokenizer(bundled, config)
    memo = PairTokenizer(bundled, config, memoize=True)
    for _ in range(2):  # the second pass is served from the memo
        a, b = plain(queries, passages), memo(queries, passages)
        assert [x.tolist() for x in a.input_ids] == [x.tolist() for x in b.input_ids]
        assert a.lengths.tolist() == b.lengths.tolist()
    assert len(memo._memo) == len(set(queries)) + len(set(passages))


def test_comparison_figures_pick_the_fusion_weight_and_keep_the_bi_encoder_row():
    from rerank_engine.training.comparison import markdown, recall_figures, set_figures
    from rerank_engine.training.scoring import EvalSet

    evalset = EvalSet(
        queries=["q0", "q1"],
        candidates=[["a", "b", "c"], ["a", "b", "c"]],
        candidate_ids=[["d0", "d1", "d2"], ["d3", "d4", "d5"]],
        relevant=[{"d0"}, {"d5"}],
        recall_scores=[[0.9, 0.5, 0.1], [0.2, 0.3, 0.8]],  # recall gets both right
    )
    logits = [np.array([0.0, 1.0, 0.5]), np.array([1.0, 0.0, 0.5])]  # the logits get both wrong
    fig = set_figures(logits, evalset, weights=(0.1, 10.0))
    assert fig["P@1"] == 0.0 and fig["P@1_fused"] == 1.0 and fig["fusion_weight"] == 10.0
    assert recall_figures(evalset) == {"P@1": 1.0, "NDCG@5": 1.0}
    row = {"name": "x", "cascade": fig, "pool": fig}
    table = markdown([{"name": "bi-encoder", "cascade": recall_figures(evalset), "pool": fig}, row])
    assert "| x | — | — | 0.565 | 1.000 (10) | 0.000 | 1.000 |" in table  # (0.5 + 1 / log2 3) / 2


@pytest.mark.slow
def test_trained_models_are_scored_on_the_comparison_sets_and_kept(tmp_path, tiny_model_dir):
    """`compare_recipes --models`: a trained folder gets the variants' figures (alone and fused) on the
    same sets; its row is read back, not rescored, while the folder's content is unchanged."""
    from rerank_engine.training import comparison
    from rerank_engine.training.scoring import EvalSet

    evalset = EvalSet(
        queries=["what does term life cover", "is flood damage covered"],
        candidates=[["term life pays a benefit", "a car", "flood"], ["a car", "flood damage is", "term"]],
        candidate_ids=[["d0", "d1", "d2"], ["d3", "d4", "d5"]],
        relevant=[{"d0"}, {"d4"}],
        recall_scores=[[0.9, 0.5, 0.1], [0.2, 0.8, 0.3]],
    )
    sets = {"cascade": evalset, "pool": evalset}
    rows = comparison.trained_model_rows(sets, {"tiny": str(tiny_model_dir)}, tmp_path, max_length=32)
    assert [r["name"] for r in rows] == ["bi-encoder (zero-shot)", "tiny"]
    expected = comparison.set_figures(
        comparison.evalset_logits(
            comparison_model(tiny_model_dir), comparison_tokenizer(tiny_model_dir), evalset
        ),
        evalset,
    )
    assert rows[1]["cascade"] == pytest.approx(expected) and rows[1]["pool"] == rows[1]["cascade"]
    kept = list((tmp_path / "models").glob("tiny-*-32.json"))
    assert len(kept) == 1
    kept[0].write_text(kept[0].read_text().replace('"name": "tiny"', '"name": "read back"'))
    again = comparison.trained_model_rows(sets, {"tiny": str(tiny_model_dir)}, tmp_path, max_length=32)
    assert again[1]["name"] == "read back"


def test_trained_model_rows_refuse_a_folder_without_a_trained_head(tmp_path, headless_model_dir):
    """A model folder handed to `compare_recipes --models` is scored as it is: one without a trained
    head is refused by name instead of being scored with a head drawn at random."""
    from rerank_engine.errors import ModelFormatError
    from rerank_engine.training import comparison
    from rerank_engine.training.scoring import EvalSet

    evalset = EvalSet(
        queries=["q"],
        candidates=[["a", "b"]],
        candidate_ids=[["d0", "d1"]],
        relevant=[{"d0"}],
        recall_scores=[[0.5, 0.4]],
    )
    with pytest.raises(ModelFormatError, match=r"no trained classification head.*classifier.weight"):
        comparison.trained_model_rows(
            {"cascade": evalset}, {"bare": str(headless_model_dir)}, tmp_path / "run", 32
        )
    assert not (tmp_path / "run" / "models").exists()


def comparison_model(folder):
    from rerank_engine.training.scoring import load_model

    return load_model(folder, seed=0)


def comparison_tokenizer(folder):
    from rerank_engine.config import TokenizerConfig
    from rerank_engine.serving.tokenization import PairTokenizer

    return PairTokenizer(folder, TokenizerConfig(max_length=32))


def test_compare_recipes_refuses_a_models_argument_that_names_no_model(tmp_path, capsys):
    from jobs import compare_recipes

    assert compare_recipes.main(["--models", f"x={tmp_path}"]) == 2
    assert "expected NAME=FOLDER, a model folder with config.json" in capsys.readouterr().err


def test_paraphrase_sample_lists_exclusions_for_reading():
    from rerank_engine.training.hard_negatives import paraphrase_sample

    records = [
        {"query": f"question {i}", "paraphrase_excluded": [[f"a{i}", f"train-{i + 100}"]]} for i in range(5)
    ]
    questions = {f"train-{i + 100}": f"paraphrase {i}" for i in range(5)}
    answers = {f"a{i}": "x" * 300 + "|" for i in range(5)}
    md = paraphrase_sample(records, questions, answers, n=3, seed=1)
    rows = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 3 and "(3 of 5, seed 1)" in md
    assert all("…" in r and "paraphrase" in r for r in rows)
    assert md == paraphrase_sample(records, questions, answers, n=3, seed=1)  # reproducible


def test_load_model_says_when_it_starts_from_a_fresh_head(headless_model_dir, tiny_model_dir, caplog):
    """Training may start from a checkpoint without a classification head (the export refuses one), and
    its log says which weights it drew fresh."""
    import logging

    from rerank_engine.training.scoring import load_model

    with caplog.at_level(logging.WARNING, logger="rerank_engine.training.finetune"):
        model = load_model(headless_model_dir, seed=0)
    assert model.config.num_labels == 1
    fresh = [r.getMessage() for r in caplog.records if "newly initialised" in r.getMessage()]
    assert fresh and "classifier.bias, classifier.weight" in fresh[0] and "seed 0" in fresh[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rerank_engine.training.finetune"):
        load_model(tiny_model_dir, seed=0)  # a trained head: nothing to say
    assert not [r for r in caplog.records if "newly initialised" in r.getMessage()]


@pytest.mark.slow
def test_ship_writes_fp16_weights_and_keeps_the_card_already_there(tmp_path, tiny_model_dir):
    from safetensors import safe_open

    from rerank_engine.training import recipe

    out = tmp_path / "my-model"
    recipe.ship(tiny_model_dir, out)
    assert (out / "README.md").read_text() == "# my-model\n"  # a new folder: a card with its title
    (out / "README.md").write_text("# my-model\n\nhow it was trained\n")
    recipe.ship(tiny_model_dir, out)
    assert (out / "README.md").read_text() == "# my-model\n\nhow it was trained\n"
    recipe.ship(tiny_model_dir, out, "# new card\n")
    assert (out / "README.md").read_text() == "# new card\n"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}  # noqa: SIM118


def test_compare_recipes_models_report_can_be_named_beside_the_committed_one(
    tmp_path, tiny_model_dir, monkeypatch
):
    """`--report-name` writes a new models comparison under its own name, leaving models.md as it is
    (the scoring itself is tested above; here only which files the job writes)."""
    import json

    import yaml

    from jobs import compare_recipes
    from rerank_engine.training import comparison

    row = {"name": "bi-encoder (zero-shot)", "cascade": {"NDCG@5": 0.3}, "pool": {"NDCG@5": 0.5}}
    monkeypatch.setattr(comparison, "valid_sets", lambda cfg: {})
    monkeypatch.setattr(comparison, "trained_model_rows", lambda sets, models, run_dir, max_length: [row])
    config = tmp_path / "c.yaml"
    report = tmp_path / "report"
    config.write_text(
        yaml.safe_dump(
            {"run_dir": str(tmp_path / "run"), "report_dir": str(report), "train": {"max_length": 32}}
        )
    )
    (report).mkdir()
    (report / "models.md").write_text("committed")
    argv = ["--config", str(config), "--models", f"v5={tiny_model_dir}", "--report-name", "models_v6_v5"]
    assert compare_recipes.main(argv) == 0
    assert (report / "models.md").read_text() == "committed"
    assert json.loads((report / "models_v6_v5.json").read_text()) == [row]
    assert (report / "models_v6_v5.md").read_text().startswith("| recipe |")
