"""Planning the distinct queries of a log and fanning results out (no Ray; the job test is in
test_nightly.py: with and without de-duplication, row for row)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_engine import schema
from rerank_engine.config import JobConfig
from rerank_engine.job.dedupe import FanOut, plan_distinct, row_keys
from rerank_engine.serving.query_identity import QueryKey, QueryNormaliser

CONFIG = JobConfig.build(model="m")


@pytest.fixture(scope="module")
def key(bundled_tokenizer):
    """The default run's query key in logged mode: the uncased all-MiniLM-L6-v2 tokenizer's."""
    return QueryKey([QueryNormaliser.of(bundled_tokenizer)])


def test_keys_ignore_case_and_spacing_and_include_logged_candidates(key):
    t = pa.table(
        {
            "query": ["What is COBRA?", " what is  cobra? ", "what is cobra", None, ""],
            "candidates": [["d1"], ["d1"], ["d1"], ["d1"], ["d1"]],
        }
    )
    keys = row_keys(t, CONFIG.columns, False, key)
    assert keys.dtype == "S16"  # a 16-byte digest a row, whatever the query's length
    assert keys[0] == keys[1] != keys[2] and keys[3] == keys[4] != keys[0]
    t2 = t.set_column(1, "candidates", pa.array([["d1"], ["d2"], ["d1"], ["d1"], ["d1"]]))
    logged = row_keys(t2, CONFIG.columns, True, key)
    assert logged[0] != logged[1]  # same query, other logged candidates: scored separately


def test_plan_writes_first_rows_and_returns_none_without_repeats(tmp_path, key):
    files = []
    for i, queries in enumerate((["a b", "c"], ["A  b", "d", "c"])):
        f = tmp_path / f"part-{i}.parquet"
        pq.write_table(pa.table({"query_id": [f"{i}-{j}" for j in range(len(queries))], "query": queries}), f)
        files.append(str(f))
    plan = plan_distinct(files, None, CONFIG.columns, False, tmp_path / "distinct", key)
    assert plan.n_rows == 5
    assert (
        plan.keys.tolist()
        == row_keys(pa.table({"query": ["a b", "c", "d"]}), CONFIG.columns, False, key).tolist()
    )
    distinct = pq.read_table(plan.path)
    assert distinct.column("query").to_pylist() == ["a b", "c", "d"]
    assert distinct.column("query_id").to_pylist() == ["k0", "k1", "k2"]
    assert plan_distinct(files[:1], None, CONFIG.columns, False, tmp_path / "none", key) is None


def test_fan_out_gives_every_row_its_keys_results(key):
    n = 2
    results = pa.table(
        {"query_id": ["k1", "k0"], **{f.name: pa.nulls(n, f.type) for f in schema.OUTPUT_FIELDS}}
    )
    results = results.set_column(
        results.schema.get_field_index("status"), "status", pa.array(["no_relevant", "ok"])
    )
    fan = FanOut(
        CONFIG.columns,
        results,
        row_keys(pa.table({"query": ["x", "y"]}), CONFIG.columns, False, key),
        logged=False,
        key=key,
    )
    out = fan(pa.table({"query_id": ["q1", "q2", "q3"], "query": ["X", "y", " x"], "team": [1, 2, 3]}))
    assert out.column("status").to_pylist() == ["ok", "no_relevant", "ok"]
    assert out.column("team").to_pylist() == [1, 2, 3]
    assert out.column_names[:3] == ["query_id", "query", "team"]


def test_plan_reads_a_batch_at_a_time_across_files(tmp_path, monkeypatch, key):
    """Distinct queries in order of first appearance when the files are read in batches smaller than a
    file, repeats spanning batch and file boundaries."""
    from rerank_engine.job import dedupe

    monkeypatch.setattr(dedupe, "PLAN_BATCH_ROWS", 3)
    files = []
    for i, queries in enumerate((["q0", "q1", "q0", "q2", "Q1"], ["q3", "q2", "q0", "q4", "q4", "q5"])):
        f = tmp_path / f"part-{i}.parquet"
        pq.write_table(pa.table({"query_id": [f"{i}-{j}" for j in range(len(queries))], "query": queries}), f)
        files.append(str(f))
    plan = plan_distinct(files, None, CONFIG.columns, False, tmp_path / "distinct", key)
    assert plan.n_rows == 11
    assert pq.read_table(plan.path).column("query").to_pylist() == ["q0", "q1", "q2", "q3", "q4", "q5"]


def test_fan_out_refuses_a_row_whose_query_was_not_planned(key):
    results = pa.table({"query_id": ["k0"], **{f.name: pa.nulls(1, f.type) for f in schema.OUTPUT_FIELDS}})
    fan = FanOut(
        CONFIG.columns, results, row_keys(pa.table({"query": ["x"]}), CONFIG.columns, False, key), False, key
    )
    with pytest.raises(RuntimeError, match="not among the planned distinct queries"):
        fan(pa.table({"query_id": ["q1", "q2"], "query": ["x", "y"]}))


def test_a_cased_cross_encoder_scores_case_variants_apart(tmp_path, key):
    """With a cased cross-encoder (the seed article's bge-reranker-v2-m3 is one), "US" and "us" are two
    queries; the uncased default merges them."""
    from tests.conftest import _xlmr_tokenizer

    f = tmp_path / "part-0.parquet"
    pq.write_table(pa.table({"query_id": ["1", "2", "3"], "query": ["US tax", "us tax", "US  tax"]}), f)
    cased = QueryKey([QueryNormaliser.of(_xlmr_tokenizer())])
    assert (
        plan_distinct([str(f)], None, CONFIG.columns, False, tmp_path / "cased", cased) is None
    )  # 3 queries
    merged = plan_distinct([str(f)], None, CONFIG.columns, False, tmp_path / "uncased", key)
    assert merged.n_rows == 3 and pq.read_table(merged.path).column("query").to_pylist() == ["US tax"]
