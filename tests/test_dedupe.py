"""Planning the distinct queries of a log and fanning results out (no Ray; the job test is in
test_nightly.py: with and without de-duplication, row for row)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from rerank_engine import schema
from rerank_engine.config import JobConfig
from rerank_engine.dedupe import FanOut, plan_distinct, row_keys

CONFIG = JobConfig.build(model="m")


def test_keys_ignore_case_and_spacing_and_include_logged_candidates():
    t = pa.table(
        {
            "query": ["What is COBRA?", " what is  cobra? ", "what is cobra", None, ""],
            "candidates": [["d1"], ["d1"], ["d1"], ["d1"], ["d1"]],
        }
    )
    keys = row_keys(t, CONFIG, logged=False)
    assert keys[0] == keys[1] != keys[2] and keys[3] == keys[4] == ""
    t2 = t.set_column(1, "candidates", pa.array([["d1"], ["d2"], ["d1"], ["d1"], ["d1"]]))
    logged = row_keys(t2, CONFIG, logged=True)
    assert logged[0] != logged[1]  # same query, other logged candidates: scored separately


def test_plan_writes_first_rows_and_returns_none_without_repeats(tmp_path):
    files = []
    for i, queries in enumerate((["a b", "c"], ["A  b", "d", "c"])):
        f = tmp_path / f"part-{i}.parquet"
        pq.write_table(pa.table({"query_id": [f"{i}-{j}" for j in range(len(queries))], "query": queries}), f)
        files.append(str(f))
    plan = plan_distinct(files, None, CONFIG, False, tmp_path / "distinct")
    assert plan.n_rows == 5 and plan.keys == ["a b", "c", "d"]
    distinct = pq.read_table(plan.path)
    assert distinct.column("query").to_pylist() == ["a b", "c", "d"]
    assert distinct.column("query_id").to_pylist() == ["k0", "k1", "k2"]
    assert plan_distinct(files[:1], None, CONFIG, False, tmp_path / "none") is None


def test_fan_out_gives_every_row_its_keys_results():
    n = 2
    results = pa.table(
        {"query_id": ["k1", "k0"], **{f.name: pa.nulls(n, f.type) for f in schema.OUTPUT_FIELDS}}
    )
    results = results.set_column(
        results.schema.get_field_index("status"), "status", pa.array(["no_relevant", "ok"])
    )
    fan = FanOut(CONFIG, results, ["x", "y"], logged=False)
    out = fan(pa.table({"query_id": ["q1", "q2", "q3"], "query": ["X", "y", " x"], "team": [1, 2, 3]}))
    assert out.column("status").to_pylist() == ["ok", "no_relevant", "ok"]
    assert out.column("team").to_pylist() == [1, 2, 3]
    assert out.column_names[:3] == ["query_id", "query", "team"]
