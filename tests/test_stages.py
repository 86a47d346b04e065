"""The batch job's stages called directly on hand-made tables: no Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_engine import schema
from rerank_engine.config import ColumnsConfig, JobConfig
from rerank_engine.errors import InputError
from rerank_engine.job.stages import (
    RerankStage,
    TokenizeStage,
    explode,
    finalize,
    load_corpus,
    logged_candidates,
)
from rerank_engine.quality.score_policy import ScorePolicy
from rerank_engine.serving.engine import CrossEncoderEngine

DOCS = {
    "d1": "A standard homeowners policy excludes flood damage.",
    "d2": "Critical illness cover usually has a 90 day waiting period.",
    "d3": "Term life insurance pays nothing if you outlive the term.",
    "d4": "COBRA keeps your employer health plan for 18 months.",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": list(DOCS), "text": list(DOCS.values())}), path)
    return str(path)


@pytest.fixture(scope="module")
def config(tiny_export):
    return JobConfig.build(model=str(tiny_export), precision="fp32", k_recall=4, k_rerank=3, threshold=0.0)


@pytest.fixture(scope="module")
def scored(config, corpus, tiny_export):
    batch = {
        "query_id": ["q1", "q2", "q3", "q4", "q5"],
        "query": ["does home insurance cover floods", "  ", "waiting period", "term life", "cobra"],
        "candidates": [["d1", "d2", "d1", "d3"], ["d1"], [], ["nope", "zzz"], ["d4", "missing"]],
        "team": ["a", "b", "c", "d", "e"],  # pass-through
    }
    stage_in = logged_candidates(batch, columns=config.columns)
    tokenized = TokenizeStage(
        corpus_path=corpus, model_source=tiny_export, columns=config.columns, tokenizer=config.tokenizer
    )(stage_in)
    return stage_in, tokenized, RerankStage(config.engine(tiny_export, threads=1))(tokenized)


def test_a_passage_reads_title_dot_text_where_both_are_there(tmp_path):
    """The passage the reranker reads (and the bi-encoder embeds, `schema.passage_texts`)."""
    path = tmp_path / "titled.parquet"
    table = pa.table(
        {
            "doc_id": ["a", "b", "c", "d"],
            "text": ["Flood is excluded.", "No title here.", "Empty title.", None],
            "title": ["Home cover", None, "", "A title alone"],
        }
    )
    pq.write_table(table, path)
    assert load_corpus(str(path), ColumnsConfig()) == {
        "a": "Home cover. Flood is excluded.",
        "b": "No title here.",
        "c": "Empty title.",
    }  # d: no text, no passage
    assert schema.passage_texts(table.drop_columns(["title"]), "text", "title")[0] == "Flood is excluded."


def test_logged_candidates_statuses_and_dedupe(scored):
    stage_in, _, _ = scored
    assert stage_in.column("__rerank_status").to_pylist() == [
        None,
        schema.EMPTY_QUERY,
        schema.NO_CANDIDATES,
        None,
        None,
    ]
    assert stage_in.column("__rerank_cand_ids").to_pylist()[0] == ["d1", "d2", "d3"]  # repeat of d1 dropped
    assert stage_in.column("__rerank_recall_ranks").to_pylist()[0] == [1, 2, 4]  # logged positions kept


def test_tokenize_drops_unknown_docs_and_flags_rows(scored):
    _, tokenized, _ = scored
    assert tokenized.column("__rerank_status").to_pylist()[3] == schema.UNKNOWN_CANDIDATES
    assert tokenized.column("__rerank_cand_ids").to_pylist()[4] == ["d4"]
    assert tokenized.column("__rerank_n_unknown").to_pylist() == [0, 0, 0, 2, 1]
    lengths = tokenized.column("__rerank_lengths").to_pylist()
    ids = tokenized.column("__rerank_ids_flat").to_pylist()
    assert [len(x) for x in lengths] == [3, 0, 0, 0, 1]
    assert [sum(x) for x in lengths] == [len(x) for x in ids]


def test_rerank_scores_equal_the_engine(scored, config, tiny_export):
    _, tokenized, reranked = scored
    from rerank_engine.config import EngineConfig

    engine = CrossEncoderEngine(EngineConfig.build(model_dir=tiny_export, precision="fp32"))
    query = tokenized.column("query").to_pylist()[0]
    docs = tokenized.column("__rerank_cand_ids").to_pylist()[0]
    want = engine.score([query] * len(docs), [DOCS[d] for d in docs]).logits
    got = np.asarray(reranked.column("__rerank_logits").to_pylist()[0], dtype=np.float32)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert reranked.column("provider").to_pylist()[0] == "CPUExecutionProvider"
    assert reranked.column("n_tokens").to_pylist()[1] == 0


def test_finalize_sorts_thresholds_and_sets_status(scored):
    _, _, reranked = scored
    out = finalize(
        reranked,
        k_rerank=2,
        policy=ScorePolicy(reranker_model="m", recall_model="logged", threshold=0.0),
        run_id="r",
    )
    assert out.schema.names[:4] == ["query_id", "query", "candidates", "team"]
    assert out.schema.names[4:] == [f.name for f in schema.OUTPUT_FIELDS]
    rows = out.to_pylist()
    assert [r["status"] for r in rows] == ["ok", "empty_query", "no_candidates", "unknown_candidates", "ok"]
    first = rows[0]["results"]
    assert [r["rank"] for r in first] == [1, 2]
    assert first[0]["score"] >= first[1]["score"]
    assert first[0]["recall_score"] is None  # logged mode has no recall score
    assert rows[0]["n_candidates"] == 3 and rows[0]["n_kept"] == 2
    assert all(r["results"] == [] and r["n_kept"] == 0 for r in rows[1:4])

    none = finalize(
        reranked,
        k_rerank=2,
        policy=ScorePolicy(reranker_model="m", recall_model="logged", threshold=1.0),
        run_id="r",
    )
    assert none.column("status").to_pylist()[0] == schema.NO_RELEVANT
    assert none.column("results").to_pylist()[0] == []


def test_finalize_breaks_ties_by_doc_id_and_flags_nan():
    batch = {
        "query_id": ["a", "b"],
        "query": ["x", "y"],
        "__rerank_status": pa.array([None, None], pa.string()),
        "__rerank_cand_ids": [["z", "b", "a"], ["p", "q"]],
        "__rerank_recall_scores": pa.array([None, None], pa.list_(pa.float32())),
        "__rerank_recall_ranks": [[1, 2, 3], [1, 2]],
        "__rerank_logits": pa.array([[0.5, 0.5, 0.5], [float("nan"), 1.0]], pa.list_(pa.float32())),
    }
    out = finalize(
        batch, k_rerank=3, policy=ScorePolicy(reranker_model="m", recall_model="r", threshold=0.1), run_id="x"
    )
    rows = out.to_pylist()
    assert [r["doc_id"] for r in rows[0]["results"]] == ["a", "b", "z"]
    assert rows[1]["status"] == schema.NONFINITE_SCORE and rows[1]["results"] == []


def test_explode_one_row_per_kept_pair_and_one_for_empty(scored):
    _, _, reranked = scored
    out = finalize(
        reranked,
        k_rerank=2,
        policy=ScorePolicy(reranker_model="m", recall_model="logged", threshold=0.0),
        run_id="r",
    )
    flat = explode(out, query_id="query_id", query="query")
    ids = flat.column("query_id").to_pylist()
    assert ids.count("q1") == 2 and ids.count("q2") == 1 and ids.count("q5") == 1
    assert set(ids) == {"q1", "q2", "q3", "q4", "q5"}
    assert flat.column("doc_id").to_pylist()[ids.index("q2")] is None


def test_the_declared_output_schemas_are_what_finalize_and_explode_write():
    """schema.output_schema and schema.exploded_output_schema (used where no row is scored, e.g. a date
    with no rows) are the schemas of the rows the job writes, column for column."""
    batch = {
        "query_id": ["a", "b"],
        "query": ["x", "y"],
        "tenant": ["t0", "t1"],
        "__rerank_status": pa.array([None, None], pa.string()),
        "__rerank_cand_ids": [["z", "b"], ["p"]],
        "__rerank_recall_scores": pa.array([[0.5, 0.4], [0.3]], pa.list_(pa.float32())),
        "__rerank_recall_ranks": [[1, 2], [1]],
        "__rerank_logits": pa.array([[2.0, -3.0], [-4.0]], pa.list_(pa.float32())),
    }
    policy = ScorePolicy(reranker_model="m", recall_model="r", threshold=0.5)
    out = finalize(batch, k_rerank=2, policy=policy, run_id="x")
    inp = pa.schema([("query_id", pa.string()), ("query", pa.string()), ("tenant", pa.string())])
    assert out.schema == schema.output_schema(inp)
    flat = explode(out, query_id="query_id", query="query")
    assert flat.num_rows == 2 and flat.schema == schema.exploded_output_schema(inp)


def test_stage_names_missing_columns(config, corpus, tiny_export):
    with pytest.raises(InputError, match=r"stage tokenize: missing columns \['__rerank_status'"):
        TokenizeStage(
            corpus_path=corpus, model_source=tiny_export, columns=config.columns, tokenizer=config.tokenizer
        )({"query": ["x"]})


def test_the_tokenize_and_rerank_stages_take_the_model_source_and_resolve_it_on_their_own_node(
    tmp_path, monkeypatch, config, corpus, scored, tiny_model_dir
):
    """Given the Hugging Face folder instead of an export, each stage exports it into its own node's
    cache (here a fresh RERANK_ENGINE_CACHE) and reads its tokenizer and graph from there: the same
    tokens and logits as from the driver's export, and no path of the driver's is needed."""
    node_cache = tmp_path / "node-cache"
    monkeypatch.setenv("RERANK_ENGINE_CACHE", str(node_cache))
    stage_in, tokenized, reranked = scored
    source = str(tiny_model_dir)
    tokenize = TokenizeStage(
        corpus_path=corpus, model_source=source, columns=config.columns, tokenizer=config.tokenizer
    )
    assert len(list(node_cache.glob("onnx/*/manifest.json"))) == 1  # exported on "this node"
    again = tokenize(stage_in)
    assert again.column("__rerank_ids_flat").to_pylist() == tokenized.column("__rerank_ids_flat").to_pylist()
    rerank = RerankStage(config.engine(source, threads=1))
    assert str(rerank.engine.config.model_dir).startswith(str(node_cache))
    got, want = rerank(again).column("__rerank_logits"), reranked.column("__rerank_logits")
    for got_row, want_row in zip(got.to_pylist(), want.to_pylist(), strict=True):
        np.testing.assert_allclose(got_row, want_row, rtol=0, atol=1e-5)
