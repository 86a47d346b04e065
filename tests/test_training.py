"""Hard-negative mining on a tiny corpus, a few fine-tuning steps on a tiny model (real FAISS, torch)."""

from __future__ import annotations

import numpy as np
import pytest

from rerank_engine.recall import RecallIndex
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
    from rerank_engine.metrics import mean_metrics
    from rerank_engine.tokenization import PairTokenizer
    from rerank_engine.training.finetune import EvalSet, evaluate, load_model

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


def test_load_model_says_when_it_starts_from_a_fresh_head(
    tmp_path, tiny_model_dir, bundled_tokenizer, caplog
):
    """Training may start from a checkpoint without a classification head (the export refuses one), and
    its log says which weights it drew fresh."""
    import logging

    from transformers import BertConfig, BertModel

    from rerank_engine.training.finetune import load_model

    config = BertConfig(
        vocab_size=bundled_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64,
    )  # fmt: skip
    BertModel(config).save_pretrained(tmp_path / "bare")
    with caplog.at_level(logging.WARNING, logger="rerank_engine.training.finetune"):
        model = load_model(tmp_path / "bare", seed=0)
    assert model.config.num_labels == 1
    fresh = [r.getMessage() for r in caplog.records if "newly initialised" in r.getMessage()]
    assert fresh and "classifier.bias, classifier.weight" in fresh[0] and "seed 0" in fresh[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rerank_engine.training.finetune"):
        load_model(tiny_model_dir, seed=0)  # a trained head: nothing to say
    assert not [r for r in caplog.records if "newly initialised" in r.getMessage()]
