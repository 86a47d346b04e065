"""The exactly-once check on digests of the query ids (no Ray; the jobs' own checks run through it in
test_job_ray.py and test_nightly.py)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_engine.errors import RerankEngineError
from rerank_engine.job import exactly_once
from rerank_engine.job.exactly_once import InputIds


@pytest.fixture
def ids(tmp_path, monkeypatch):
    """q0..q6 in two files, q2 twice, read two rows at a time."""
    monkeypatch.setattr(exactly_once, "BATCH_ROWS", 2)
    files = []
    for i, part in enumerate((["q0", "q1", "q2", "q3"], ["q2", "q4", "q5", "q6"])):
        pq.write_table(pa.table({"query_id": part, "query": ["x"] * len(part)}), tmp_path / f"p{i}.parquet")
        files.append(str(tmp_path / f"p{i}.parquet"))
    return InputIds.read(files, None, "query_id")


def out(*ids):
    return pa.table({"query_id": list(ids)})


def exploded(*rows):
    """An exploded output: (query id, rank) a row, rank None where an input row kept nothing."""
    return pa.table({"query_id": [r[0] for r in rows], "rank": pa.array([r[1] for r in rows], pa.int32())})


def test_every_row_once_in_any_order_passes(ids):
    assert len(ids) == 8 and ids.sorted_digests.dtype == "S16"
    ids.verify(out("q6", "q2", "q5", "q4", "q3", "q2", "q1", "q0"), "query_id", exploded=False)


def test_a_repeated_input_id_must_appear_as_often(ids):
    assert ids.repeated() == (1, ["q2"])
    with pytest.raises(RerankEngineError, match=r"1 query rows missing \(e.g. \['q2'\]\), 0 extra"):
        ids.verify(out("q0", "q1", "q2", "q3", "q4", "q5", "q6"), "query_id", exploded=False)


def test_missing_and_extra_rows_are_counted_and_named(ids):
    with pytest.raises(RerankEngineError) as err:
        ids.verify(out("q0", "q1", "q2", "q2", "q4", "q5", "zz", "zz", "yy"), "query_id", exploded=False)
    assert "2 query rows missing (e.g. ['q3', 'q6'])" in str(err.value)
    assert "3 extra (e.g. ['zz', 'yy'])" in str(err.value)


def test_exploded_output_needs_each_input_row_once_as_its_head_row_and_no_other_id(ids):
    rows = [("q0", 1), ("q0", 2), ("q1", None), ("q2", 1), ("q2", None), ("q3", 1), ("q4", 1), ("q4", 2)]
    ids.verify(exploded(*rows, ("q5", None), ("q6", 1), ("q6", 2), ("q6", 3)), "query_id", exploded=True)
    # q2 is in the input twice: one of its rows lost is a missing row, though the id is still present
    with pytest.raises(RerankEngineError, match=r"1 query rows missing \(e.g. \['q2'\]\), 0 extra"):
        ids.verify(exploded(*rows[:4], *rows[5:], ("q5", None), ("q6", 1)), "query_id", exploded=True)
    with pytest.raises(RerankEngineError, match=r"1 query rows missing \(e.g. \['q5'\]\), 1 extra"):
        ids.verify(exploded(*rows, ("q6", 1), ("new", None)), "query_id", exploded=True)
    with pytest.raises(RerankEngineError, match=r"0 query rows missing .*1 extra \(e.g. \['stray'\]\)"):
        ids.verify(exploded(*rows, ("q5", None), ("q6", 1), ("stray", 2)), "query_id", exploded=True)


def test_an_empty_output_misses_every_row(ids):
    with pytest.raises(RerankEngineError, match="8 query rows missing"):
        ids.verify(None, "query_id", exploded=False)


def test_a_missing_id_is_not_the_string_none():
    assert exactly_once.digests([None])[0] != exactly_once.digests(["None"])[0]
    assert exactly_once.digests([""])[0] != exactly_once.digests([None])[0]
