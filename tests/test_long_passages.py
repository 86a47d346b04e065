"""`tokenizer.long_passages: chunk_max`: a long passage cut into windows, every (query, window) scored in
the same length-bucketed batches, the passage given its best window's logit (MaxP).

The windows and the MaxP rule are held on their own (no model), then through the real engine on the tiny
random BERT's ONNX export and its real WordPiece tokenizer, then through the job's stages (no Ray); the
job on a real local Ray is in test_job_ray.py.
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_engine.config import EngineConfig, JobConfig, TokenizerConfig, describe_defaults
from rerank_engine.errors import ConfigError
from rerank_engine.job.score_cache import namespace
from rerank_engine.probe_pairs import PASSAGES, QUERIES
from rerank_engine.quality.score_policy import ScorePolicy
from rerank_engine.serving.tokenization import TokenizedPairs
from rerank_engine.serving.windows import best_of_windows, window_spans, window_stride

MAX_LENGTH = 32  # short, so that the probe passages repeated a few times need several windows


# -- the windows and the rule (no model) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "window", "stride"),
    [(10, 4, 2), (10, 4, 4), (10, 4, 3), (10, 4, 9), (100, 21, None), (22, 21, 5), (7, 7, 2), (1, 5, 1)],
)
def test_windows_cover_the_passage_each_full_and_the_last_ending_at_its_end(n, window, stride):
    spans = window_spans(n, window, stride)
    s = window_stride(window, stride)
    if n <= window:
        assert spans == [(0, n)]
        return
    assert all(end - start == window for start, end in spans)  # every window is a full window
    assert spans[0][0] == 0 and spans[-1][1] == n  # the first starts the passage, the last ends it
    starts = [a for a, _ in spans]
    assert starts == sorted(set(starts))  # no window twice
    assert all(b - a == s for a, b in pairwise(starts[:-1]))  # one every stride
    assert 0 < starts[-1] - starts[-2] <= s  # the last one steps back to end at the end
    covered = Counter(i for a, b in spans for i in range(a, b))
    assert set(covered) == set(range(n))  # no token skipped


def test_the_stride_is_cut_to_the_window_and_defaults_to_half_of_it():
    assert window_stride(20, None) == 10 and window_stride(20, 50) == 20 and window_stride(1, None) == 1
    with pytest.raises(ValueError):
        window_stride(0, 3)


def test_best_of_windows_is_the_max_of_each_passages_rows():
    logits = np.array([0.1, 0.7, -0.2, 3.0, -1.0, np.nan, 2.0], np.float32)
    np.testing.assert_array_equal(best_of_windows(logits, [2, 1, 2, 2])[:3], logits[[1, 2, 3]])
    assert np.isnan(best_of_windows(logits, [2, 1, 2, 2])[3])  # a NaN window: the passage is NaN
    assert best_of_windows(np.zeros(0, np.float32), []).shape == (0,)
    with pytest.raises(ValueError, match="6 windows counted for 7"):
        best_of_windows(logits, [2, 1, 3])
    with pytest.raises(ValueError, match="at least one window"):
        best_of_windows(logits, [0, 7])


def test_config_keys_default_truncate_and_refuse_a_stride_without_windows():
    assert TokenizerConfig().long_passages == "truncate" and TokenizerConfig().stride is None
    assert JobConfig.build(tokenizer={"long_passages": "chunk_max", "stride": 16}).tokenizer.stride == 16
    with pytest.raises(ConfigError, match="stride is the step between windows"):
        TokenizerConfig.build(stride=16)
    with pytest.raises(ConfigError, match="long_passages"):
        TokenizerConfig.build(long_passages="maxp")
    with pytest.raises(ConfigError, match="stride"):
        TokenizerConfig.build(long_passages="chunk_max", stride=0)
    described = describe_defaults(JobConfig)
    assert "long_passages: truncate" in described and "stride: null" in described


def test_truncate_leaves_the_score_cache_namespace_of_earlier_runs():
    """The job keys its score cache by the tokenizer settings: truncate (the default) keys as before the
    long-passage keys existed, chunk_max and each stride apart."""
    old = namespace("m@1", "fp32", {"max_length": 128, "max_query_share": 0.25})
    assert namespace("m@1", "fp32", TokenizerConfig(max_length=128).scoring_dump(exclude_none=True)) == old
    chunked = [
        TokenizerConfig(max_length=128, long_passages="chunk_max", stride=s).scoring_dump(exclude_none=True)
        for s in (None, 32, 64)
    ]
    assert len({old, *(namespace("m@1", "fp32", t) for t in chunked)}) == 4


# -- the engine (real ONNX export, real tokenizer) -------------------------------------------------------


def _engine(export, long_passages="truncate", stride=None, max_length=MAX_LENGTH):
    from rerank_engine.serving.engine import CrossEncoderEngine

    tokenizer = {"max_length": max_length, "long_passages": long_passages}
    if stride is not None:
        tokenizer["stride"] = stride
    return CrossEncoderEngine(
        EngineConfig.build(
            model_dir=export,
            precision="fp32",
            intra_op_threads=1,
            tokenizer=tokenizer,
            batching={"max_batch_rows": 16},  # the windows of a call spread over several batches
        )
    )


def _long_pairs(n: int = 12, seed: int = 0) -> tuple[list[str], list[str]]:
    """Queries × passages of 1 to 6 probe passages joined: from one window to many."""
    rng = np.random.default_rng(seed)
    queries = [QUERIES[i % len(QUERIES)] for i in range(n)]
    passages = [" ".join(rng.choice(PASSAGES, size=int(rng.integers(1, 7))).tolist()) for _ in range(n)]
    return queries, passages


@pytest.fixture(scope="module")
def chunked(tiny_export):
    return _engine(tiny_export, "chunk_max", stride=8)


def _alone(engine, pairs: TokenizedPairs, row: int) -> float:
    """Row `row` of `pairs` scored on its own, as a pair of its own, through the same engine."""
    one = TokenizedPairs(
        [pairs.input_ids[row]], [pairs.token_type_ids[row]], pairs.lengths[row : row + 1].copy()
    )
    return float(engine.score_tokenized(one).logits[0])


def test_every_window_is_scored_exactly_once(chunked, monkeypatch):
    """Each (query, window) row reaches the graph once, in length-bucketed batches, and nothing else
    does: the rows fed to onnxruntime (read back from the graph's inputs, padding dropped) are exactly
    the tokenizer's windows, as many as `window_spans` gives each passage."""
    queries, passages = _long_pairs()
    pairs = chunked.tokenize(queries, passages)
    assert pairs.windows is not None and pairs.windows.max() > 3 and pairs.windows.min() == 1
    # as many windows as the rule gives each passage, from its token count and its query's budget
    tok = chunked.tokenizer
    for i, (q, p) in enumerate(zip(queries, passages, strict=True)):
        n_q = min(len(tok.tokenizer(q, add_special_tokens=False)["input_ids"]), tok.query_cap)
        n_p = len(tok.tokenizer(p, add_special_tokens=False)["input_ids"])
        budget = MAX_LENGTH - tok.tokenizer.num_special_tokens_to_add(pair=True) - n_q
        assert pairs.windows[i] == len(window_spans(n_p, budget, 8)), i

    fed: list[tuple[int, ...]] = []
    real = chunked.run_graph

    def recording(feed):  # a spy: the real graph runs, the rows it gets are counted
        for ids, mask in zip(feed["input_ids"], feed["attention_mask"], strict=True):
            fed.append(tuple(ids[mask == 1].tolist()))
        return real(feed)

    monkeypatch.setattr(chunked, "run_graph", recording)
    result = chunked.score(queries, passages)
    expected = Counter(tuple(x.tolist()) for x in pairs.input_ids)
    assert Counter(fed) == expected
    assert len(fed) == result.windows_scored == int(pairs.windows.sum()) == len(pairs)
    assert result.n_batches > 1 and len(result.logits) == len(passages)


def test_a_passages_score_is_the_best_of_its_windows_scored_one_by_one(chunked):
    queries, passages = _long_pairs(seed=1)
    pairs = chunked.tokenize(queries, passages)
    result = chunked.score(queries, passages)
    first = np.concatenate([[0], np.cumsum(pairs.windows)[:-1]])
    for i, (start, count) in enumerate(zip(first, pairs.windows, strict=True)):
        alone = [_alone(chunked, pairs, r) for r in range(start, start + count)]
        assert result.logits[i] == pytest.approx(max(alone), abs=1e-5), i
    np.testing.assert_allclose(result.scores, 1 / (1 + np.exp(-result.logits.astype(np.float64))), atol=1e-6)


def test_short_passages_give_exactly_the_truncate_result(tiny_export, chunked, random_pairs):
    plain = _engine(tiny_export)
    queries, passages = random_pairs(40, seed=4, max_words=12)  # all within one window at 32 tokens
    pairs = chunked.tokenize(queries, passages)
    assert pairs.windows.tolist() == [1] * len(passages)
    truncated = plain.tokenize(queries, passages)
    for a, b in zip(pairs.input_ids, truncated.input_ids, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        chunked.score(queries, passages).logits, plain.score(queries, passages).logits
    )


def test_a_window_is_what_post_processing_that_window_gives(chunked):
    """The later windows are spliced into the first window's pair (tokenization._later_windows): each
    equals the pair the tokenizer's own post-processor makes of that window of the passage's tokens."""
    import copy

    tok = chunked.tokenizer
    queries, passages = _long_pairs(seed=2)
    pairs = tok(queries, passages)
    row = 0
    for q, p, count in zip(queries, passages, pairs.windows, strict=True):
        q_enc = tok.tokenizer([q], add_special_tokens=False, truncation=True, max_length=tok.query_cap)
        p_enc = tok._pairs.encode(p, add_special_tokens=False)
        budget = MAX_LENGTH - tok.tokenizer.num_special_tokens_to_add(pair=True) - len(q_enc.encodings[0])
        for start, end in window_spans(len(p_enc), budget, 8):
            part = copy.deepcopy(p_enc)
            part.truncate(end)
            part.truncate(end - start, direction="left")
            want = tok._pairs.post_process(q_enc.encodings[0], part, add_special_tokens=True)
            np.testing.assert_array_equal(pairs.input_ids[row], want.ids)
            np.testing.assert_array_equal(pairs.token_type_ids[row], want.type_ids)
            row += 1
        assert count == len(window_spans(len(p_enc), budget, 8))
    assert row == len(pairs)


def _snippet_rows(engine, pairs: TokenizedPairs) -> list[int]:
    """The rows of `pairs` (one long passage's windows) whose passage part holds a token other than the
    filler's "the" (and the closing [SEP]): the windows that reach the snippet."""
    tok = engine.tokenizer.tokenizer
    filler = {tok.convert_tokens_to_ids("the"), tok.sep_token_id}
    return [
        r
        for r in range(len(pairs))
        if set(pairs.input_ids[r][pairs.token_type_ids[r] == 1].tolist()) - filler
    ]


def _relevant_past_the_window(engine, query: str):
    """(filler, filler + snippet, the best logit of the windows reaching the snippet, their rows).

    A random model has no notion of relevance, so "relevant" is what this model scores above the filler:
    of the probe passages, the one whose windows score highest, put after a filler of many windows ("the"
    repeated), so that truncate never sees it."""
    filler = " ".join(["the"] * 3 * MAX_LENGTH)
    best = None
    for snippet in PASSAGES:
        long = f"{filler} {snippet}"
        pairs = engine.tokenize([query], [long])
        rows = _snippet_rows(engine, pairs)
        top = max(_alone(engine, pairs, r) for r in rows)
        if best is None or top > best[2]:
            best = (filler, long, top, rows)
    return best


def test_a_long_passage_is_ranked_by_its_relevant_part_past_the_window(tiny_export, chunked):
    """A passage whose relevant part lies past the first window: truncate scores it as the filler it
    starts with (the same as the filler alone, a tie), chunk_max by that part (its best window reaching
    the snippet, scored alone), which ranks it above the filler."""
    plain = _engine(tiny_export)
    query = QUERIES[0]
    filler, long, relevant, rows = _relevant_past_the_window(chunked, query)
    assert rows and min(rows) > 0  # the snippet lies past the first window
    filler_window = _alone(chunked, chunked.tokenize([query], [filler]), 0)
    assert relevant > filler_window + 1e-4, "no probe passage scores above the filler under this model"

    truncated = plain.score([query, query], [filler, long]).logits
    assert truncated[0] == pytest.approx(truncated[1], abs=1e-6)  # truncate never reads the snippet
    maxp = chunked.score([query, query], [filler, long]).logits
    assert maxp[1] == pytest.approx(relevant, abs=1e-5)  # the passage is scored by its relevant part
    assert maxp[0] == pytest.approx(filler_window, abs=1e-5)  # the filler's windows are all alike

    # ranked: the filler comes first in the input, so a tie keeps it first (truncate); chunk_max does not
    assert [r.index for r in plain.rerank(query, [filler, long], top_k=2)] == [0, 1]
    assert [r.index for r in chunked.rerank(query, [filler, long], top_k=2)] == [1, 0]


# -- the evaluation path ---------------------------------------------------------------------------------


def test_the_evaluation_scores_what_the_engine_serves(tiny_export, chunked, tmp_path):
    """`evaluation.engine_scorer` (jobs.evaluate, jobs.calibrate, the benchmark) with chunk_max scores as
    the chunk_max engine does, and its cached scores are kept apart from truncate's."""
    from types import SimpleNamespace

    from rerank_engine.quality import evaluation

    queries, passages = _long_pairs(6, seed=3)
    _, score = evaluation.engine_scorer(
        tiny_export, threads=1, max_length=MAX_LENGTH, long_passages="chunk_max", stride=8
    )
    np.testing.assert_allclose(score(queries, passages), chunked.score(queries, passages).scores, atol=1e-6)

    questions = [SimpleNamespace(qid=f"q{i}", text=q, answers=("a0",)) for i, q in enumerate(queries[:2])]
    answers = {f"a{i}": p for i, p in enumerate(passages)}
    candidates = [list(answers)[:3], list(answers)[3:]]
    cached = {
        name: evaluation.score_cascade(
            tiny_export, questions, candidates, answers, tmp_path, precision="fp32",
            max_length=MAX_LENGTH, **setting,
        )[2]
        for name, setting in {
            "truncate": {},
            "chunk_max": {"long_passages": "chunk_max", "stride": 8},
        }.items()
    }  # fmt: skip
    assert len(list(tmp_path.glob("scores-*.json"))) == 2  # one cache file each
    assert any(
        not np.allclose(a, b)
        for a, b in zip(cached["truncate"].scores, cached["chunk_max"].scores, strict=True)
    )


def test_long_passage_benchmark_on_tiny_inputs(tiny_export, tmp_path):
    """benchmarks.long_passages on the tiny model and a handful of long answers: one row per setting."""
    from benchmarks import long_passages
    from rerank_engine.data.insuranceqa import Question

    queries, passages = _long_pairs(8, seed=5)
    answers = {str(i): p for i, p in enumerate(passages)}
    questions = [
        Question(qid=f"valid-{i}", text=queries[i], domain="d", answers=(str(i),), negatives=())
        for i in range(4)
    ]
    rng = np.random.default_rng(0)
    candidates = [rng.permutation(list(answers))[:5].tolist() for _ in questions]
    cosines = [np.sort(rng.random(5).astype(np.float32))[::-1] for _ in questions]
    rows = long_passages.measure(
        tiny_export, questions, candidates, cosines, answers, recall_model="bi",
        max_length=MAX_LENGTH, strides=[8, 16], time_queries=2, reps=1, scores_cache=tmp_path,
    )  # fmt: skip
    assert list(rows) == ["truncate", "chunk_max, stride 8", "chunk_max, stride 16"]
    assert rows["truncate"]["windows_per_pair"] == 1.0
    assert (
        rows["chunk_max, stride 8"]["windows_per_pair"] > rows["chunk_max, stride 16"]["windows_per_pair"] > 1
    )
    for row in rows.values():
        assert row["pairs_per_s"] > 0 and row["windows_per_s"] >= row["pairs_per_s"]
        assert 0 <= row["ndcg5_reranker"] <= 1 and 0 <= row["ndcg5_fused"] <= 1
    assert long_passages.markdown(rows).count("\n") == 4


# -- the job's stages (no Ray) ---------------------------------------------------------------------------


def test_the_jobs_stages_score_each_candidate_by_its_best_window(tiny_export, chunked, tmp_path):
    """Tokenize → rerank → finalize with chunk_max: one logit and one result row per candidate passage,
    equal to the chunk_max engine's; `windows_scored` counts each query's windows."""
    from rerank_engine.job.stages import LOGITS, RerankStage, TokenizeStage, finalize, logged_candidates

    _, passages = _long_pairs(6, seed=6)
    docs = {f"d{i}": p for i, p in enumerate(passages)}
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": list(docs), "text": list(docs.values())}), corpus)
    config = JobConfig.build(
        model=str(tiny_export), precision="fp32", k_recall=6, k_rerank=6, threshold=0.0,
        tokenizer={"max_length": MAX_LENGTH, "long_passages": "chunk_max", "stride": 8},
    )  # fmt: skip
    batch = {
        "query_id": ["a", "b", "c"],
        "query": [QUERIES[0], QUERIES[1], "  "],
        "candidates": [list(docs), ["d5", "d0", "nope"], ["d1"]],
    }
    tokenized = TokenizeStage(
        corpus_path=str(corpus), model_source=tiny_export, columns=config.columns, tokenizer=config.tokenizer
    )(logged_candidates(batch, columns=config.columns))
    reranked = RerankStage(config.engine(tiny_export, threads=1))(tokenized)
    out = finalize(
        reranked,
        k_rerank=6,
        policy=ScorePolicy(reranker_model="m", recall_model="logged", threshold=0.0),
        run_id="r",
    )
    rows = out.to_pylist()
    for row, logits, query, ids in zip(
        rows[:2],
        reranked.column(LOGITS).to_pylist(),
        batch["query"],
        [list(docs), ["d5", "d0"]],
        strict=False,
    ):
        result = chunked.score([query] * len(ids), [docs[d] for d in ids])
        np.testing.assert_allclose(logits, result.logits, atol=1e-5)
        assert row["windows_scored"] == result.windows_scored > len(ids)
        got = [r["doc_id"] for r in row["results"]]
        assert sorted(got) == sorted(ids) and row["n_candidates"] == len(ids)  # one row per passage
    assert rows[2]["status"] == "empty_query" and rows[2]["windows_scored"] == 0
