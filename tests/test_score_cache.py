"""The score cache: keys, the on-disk memo, and the tokenize/rerank stages skipping pairs scored before.

The nightly test module runs it for real on a local Ray (two dates, the second reusing the first's scores).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_engine.config import JobConfig
from rerank_engine.job.score_cache import (
    CacheRef,
    ScoreCache,
    as_arrow_keys,
    as_numpy_keys,
    namespace,
    pair_keys,
)
from rerank_engine.job.stages import RerankStage, TokenizeStage, logged_candidates
from rerank_engine.serving.query_identity import QueryNormaliser


def test_one_query_key_shares_pair_keys_and_any_change_of_pair_does_not(bundled_tokenizer):
    key = QueryNormaliser.of(bundled_tokenizer)  # the default cross-encoder's (uncased)
    k = pair_keys(
        [key(q) for q in ["What is  COBRA?", "what is cobra?", "what is cobra?", "what is cobra?"]],
        ["d1", "d1", "d2", "d1"],
        ["text", "text", "text", "edited text"],
    )
    assert k[0] == k[1] and len({k[1], k[2], k[3]}) == 3
    assert namespace("m@1", "int8", {"max_length": 256}) != namespace("m@1", "fp16", {"max_length": 256})
    assert namespace("m@1", "int8", {"max_length": 256}) != namespace("m@2", "int8", {"max_length": 256})


def test_keys_ending_in_zero_bytes_survive_the_trip_through_arrow_and_disk(tmp_path):
    keys = np.array([b"\x01" * 15 + b"\x00", b"\x02" * 14 + b"\x00\x00", b"\x03" * 16], dtype="S16")
    assert len(as_arrow_keys(keys)[0].as_py()) == 16  # numpy alone would hand out 15 bytes
    np.testing.assert_array_equal(as_numpy_keys(as_arrow_keys(keys)), keys)

    cache = ScoreCache(tmp_path, "ns")
    cache.add(keys, np.array([0.5, -1.0, np.nan], np.float32))  # a non-finite logit is never cached
    assert cache.compact("run1") == 2
    loaded = ScoreCache(tmp_path, "ns").load()
    got = loaded.lookup(np.array([keys[1], keys[0], keys[2], b"\x09" * 16], dtype="S16"))
    np.testing.assert_array_equal(got[:2], [-1.0, 0.5])
    assert np.isnan(got[2]) and np.isnan(got[3])
    assert len(ScoreCache(tmp_path, "other").load()) == 0  # another model's namespace is empty


def test_incoming_files_of_a_crashed_run_are_read_and_later_compacted(tmp_path):
    cache = ScoreCache(tmp_path, "ns")
    keys = pair_keys(["q"], ["d"], ["p"])
    cache.add(keys, np.array([2.0], np.float32))
    assert [f.parent.name for f in cache.files()] == ["incoming"]
    assert ScoreCache(tmp_path, "ns").load().lookup(keys)[0] == 2.0
    assert ScoreCache(tmp_path, "ns").compact("r") == 1
    assert [f.parent.name for f in cache.files()] == ["ns"]


DOCS = {
    "d1": "A standard homeowners policy excludes flood damage.",
    "d2": "Critical illness cover usually has a 90 day waiting period.",
    "d3": "Term life insurance pays nothing if you outlive the term.",
}


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": list(DOCS), "text": list(DOCS.values())}), path)
    return str(path)


def run_stages(config, corpus, export, batch, ns):
    cache = CacheRef(config.score_cache, ns, "fp32") if config.score_cache else None
    tokenized = TokenizeStage(
        corpus_path=corpus,
        model_source=export,
        columns=config.columns,
        tokenizer=config.tokenizer,
        cache=cache,
    )(logged_candidates(batch, columns=config.columns))
    return RerankStage(config.engine(export, threads=1), cache=cache)(tokenized)


def test_stages_reuse_cached_scores_and_score_only_new_pairs(tmp_path, corpus, tiny_export):
    config = JobConfig.build(
        model=str(tiny_export),
        precision="fp32",
        k_recall=3,
        k_rerank=3,
        threshold=0.0,
        score_cache=str(tmp_path / "cache"),
    )
    day1 = {
        "query_id": ["a", "b"],
        "query": ["flood cover", "waiting period"],
        "candidates": [["d1", "d2"], ["d2", "d3"]],
    }
    first = run_stages(config, corpus, tiny_export, day1, "ns")
    assert first.column("n_cached").to_pylist() == [0, 0]
    ScoreCache(config.score_cache, "ns").compact("day1")

    # Day 2: "Flood  cover" is day 1's query normalised; d3 is new for it; "empty" is not scorable.
    day2 = {
        "query_id": ["c", "d", "e"],
        "query": ["Flood  cover", "waiting period", " "],
        "candidates": [["d1", "d3", "d2"], ["d3", "d2"], ["d1"]],
    }
    second = run_stages(config, corpus, tiny_export, day2, "ns")
    assert second.column("n_cached").to_pylist() == [2, 2, 0]
    tokenized = [len(x) for x in second.column("__rerank_lengths").to_pylist()]
    assert tokenized == [1, 0, 0]  # only (c, d3) tokenized
    want = run_stages(config.model_copy(update={"score_cache": None}), corpus, tiny_export, day2, None)
    for got_row, want_row in zip(
        second.column("__rerank_logits").to_pylist(), want.column("__rerank_logits").to_pylist(), strict=True
    ):
        np.testing.assert_allclose(got_row, want_row, rtol=0, atol=1e-5)
    assert ScoreCache(config.score_cache, "ns").compact("day2") == 5  # 4 from day 1 + (c, d3)


def test_a_rerank_actor_in_another_precision_refuses_the_cache(tmp_path, tiny_export):
    from rerank_engine.errors import ConfigError

    config = JobConfig.build(model=str(tiny_export), precision="fp32", score_cache=str(tmp_path))
    with pytest.raises(ConfigError, match="scores in fp32, the job expected int8"):
        RerankStage(config.engine(tiny_export, threads=1), cache=CacheRef(config.score_cache, "ns", "int8"))
