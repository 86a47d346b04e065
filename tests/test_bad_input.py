"""Bad input and faults (issue 7): whole-file and config problems fail fast naming the file or key; row
problems become a per-row status; no row is lost or repeated. No Ray here: the checks run before Ray
starts, and the stages are called directly on hand-made tables."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rerank_engine import schema
from rerank_engine.config import EngineConfig, JobConfig, load_job_config
from rerank_engine.errors import ConfigError, InputError, ModelFormatError, ModelNotFoundError
from rerank_engine.job.driver import inspect_query_log, run_job
from rerank_engine.job.stages import RerankStage, TokenizeStage, finalize, logged_candidates
from rerank_engine.quality.score_policy import ScorePolicy
from rerank_engine.serving.engine import CrossEncoderEngine

DOCS = {
    "d1": "A standard homeowners policy excludes flood damage.",
    "d2": "Critical illness cover usually has a 90 day waiting period.",
    "d3": "Term life insurance pays nothing if you outlive the term.",
}
CONFIG = JobConfig.build(model="unused", threshold=0.0)


def _queries(**columns) -> pa.Table:
    return pa.table({"query_id": ["q1", "q2"], "query": ["flood", "waiting period"], **columns})


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": list(DOCS), "text": list(DOCS.values())}), path)
    return str(path)


def _invalid_utf8(values: list[bytes]) -> pa.Array:
    """A string array holding bytes that are not UTF-8 (Parquet readers do not validate them)."""
    offsets = np.cumsum([0, *map(len, values)]).astype(np.int32)
    return pa.Array.from_buffers(
        pa.string(), len(values), [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(values))]
    )


# -- whole files: fail fast, naming the file and what was expected -----------------------------------------


def _write_bad(tmp_path, case: str):
    path = tmp_path / "queries.parquet"
    if case == "empty file":
        path.write_bytes(b"")
    elif case == "csv named .parquet":
        path.write_text("query_id,query\n1,flood\n")
    elif case == "truncated":
        pq.write_table(_queries(), path)
        path.write_bytes(path.read_bytes()[:-20])
    elif case == "missing query":
        pq.write_table(_queries().drop_columns(["query"]), path)
    elif case == "renamed query":
        pq.write_table(_queries().rename_columns(["query_id", "text"]), path)
    elif case == "missing query_id":
        pq.write_table(_queries().drop_columns(["query_id"]), path)
    elif case == "int query":
        pq.write_table(pa.table({"query_id": ["a"], "query": [7]}), path)
    elif case == "list query":
        pq.write_table(pa.table({"query_id": ["a"], "query": [["flood", "fire"]]}), path)
    elif case == "float query_id":
        pq.write_table(pa.table({"query_id": [1.5], "query": ["flood"]}), path)
    elif case == "string candidates":
        pq.write_table(_queries(candidates=["d1", "d2"]), path)
    elif case == "reserved column":
        pq.write_table(_queries(status=["x", "y"]), path)
    elif case == "invalid utf8 query_id":
        pq.write_table(_queries().set_column(0, "query_id", _invalid_utf8([b"q1", b"q\xff2"])), path)
    elif case == "invalid utf8 candidate":
        cands = pa.ListArray.from_arrays(
            pa.array([0, 1, 3], pa.int32()), _invalid_utf8([b"d1", b"d2", b"d\xc3"])
        )
        pq.write_table(_queries(candidates=cands), path)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty file", r"queries\.parquet is not a readable Parquet file: .*0 bytes"),
        ("csv named .parquet", r"queries\.parquet is not a readable Parquet file: .*magic bytes"),
        ("truncated", r"queries\.parquet is not a readable Parquet file"),
        ("missing query", r"queries\.parquet: missing query column 'query'; columns present: \['query_id'\]"),
        ("renamed query", r"queries\.parquet: missing query column 'query'; columns present: .*'text'"),
        ("missing query_id", r"queries\.parquet: missing query id column 'query_id'"),
        ("int query", r"queries\.parquet: column 'query' must hold strings, found int64"),
        ("list query", r"queries\.parquet: column 'query' must hold strings, found list<"),
        ("float query_id", r"column 'query_id' must hold strings or integers, found double"),
        ("string candidates", r"column 'candidates' must be a list of doc ids \(strings\), found string"),
        ("reserved column", r"column 'status' is written by the job"),
        (
            "invalid utf8 query_id",
            r"queries\.parquet: column 'query_id', row 1 \(counted from 0\) holds b'q\\xff2', which is not "
            "valid UTF-8; expected UTF-8 strings",
        ),
        (
            "invalid utf8 candidate",
            r"queries\.parquet: column 'candidates', row 1 \(counted from 0\) holds b'd\\xc3', which is not "
            "valid UTF-8",
        ),
    ],
)
def test_bad_file_fails_naming_file_and_expectation(tmp_path, case, message):
    path = _write_bad(tmp_path, case)
    with pytest.raises(InputError, match=message):
        inspect_query_log(str(path), CONFIG)


@pytest.mark.parametrize("column", [f.name for f in schema.EXPLODED_FIELDS])
def test_a_column_the_exploded_output_writes_is_refused_when_exploded(tmp_path, column):
    """Click logs often carry doc_id, rank or score: exploded, the output would hold two such columns and
    could not be read back; nested (the default), the job's are inside `results` and the input's pass."""
    path = tmp_path / "queries.parquet"
    pq.write_table(_queries(**{column: ["x", "y"]}), path)
    with pytest.raises(
        InputError,
        match=rf"queries\.parquet: column '{column}' is written by the job \(exploded: true\); "
        "rename it in the input",
    ):
        inspect_query_log(str(path), JobConfig.build(model="unused", threshold=0.0, exploded=True))
    assert inspect_query_log(str(path), CONFIG)[2].names == ["query_id", "query", column]


def test_invalid_utf8_id_deep_in_a_file_is_named_by_its_row(tmp_path):
    """Read a batch at a time: the row counts on across batches and row groups; a long value is cut around
    its bad byte."""
    ids = [f"q{i}".encode() for i in range(70_000)]
    ids[68_000] = b"x" * 60 + b"\xfe" + b"y" * 60
    path = tmp_path / "queries.parquet"
    pq.write_table(
        pa.table({"query_id": _invalid_utf8(ids), "query": ["flood"] * len(ids)}), path, row_group_size=30_000
    )
    with pytest.raises(
        InputError,
        match=r"column 'query_id', row 68000 \(counted from 0\) holds …b'x{20}\\xfey{19}'…, which is not",
    ):
        inspect_query_log(str(path), CONFIG)


def test_invalid_utf8_id_stops_the_job_before_anything_is_written(tmp_path, corpus):
    bad = tmp_path / "queries.parquet"
    ids = _invalid_utf8([b"q1", b"q\xff2"])
    pq.write_table(_queries(candidates=[["d1"], ["d2"]]).set_column(0, "query_id", ids), bad)
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-00000.parquet").write_bytes(b"an earlier run's output")
    with pytest.raises(InputError, match=r"column 'query_id', row 1 \(counted from 0\)"):
        run_job(CONFIG, input=str(bad), corpus=corpus, output=str(out), overwrite=True)
    assert [p.name for p in out.iterdir()] == ["part-00000.parquet"]  # --overwrite did not empty it yet
    assert not _ray_started()


def test_schemas_differing_across_files(tmp_path):
    pq.write_table(_queries(), tmp_path / "a.parquet")
    pq.write_table(_queries(tenant=["x", "y"]), tmp_path / "b.parquet")
    with pytest.raises(
        InputError,
        match=r"b\.parquet has columns \[query_id: string, query: string, tenant: string\] but "
        r".*a\.parquet has \[query_id: string, query: string\]; all files of one input must share a schema",
    ):
        inspect_query_log(str(tmp_path), CONFIG)


def test_path_matching_nothing(tmp_path):
    for path in (tmp_path / "nothing-*.parquet", tmp_path / "missing.parquet", tmp_path):
        with pytest.raises(InputError, match=r"matches no Parquet file"):
            inspect_query_log(str(path), CONFIG)


def test_thousands_of_tiny_files(tmp_path):
    for i in range(2000):
        pq.write_table(pa.table({"query_id": [f"q{i}"], "query": ["flood"]}), tmp_path / f"p{i:05d}.parquet")
    files, _, _, n_rows, logged = inspect_query_log(str(tmp_path), CONFIG)
    assert len(files) == 2000 and n_rows == 2000 and not logged
    (tmp_path / "p01234.parquet").write_bytes(b"PAR1 not really")  # one bad file among many is named
    with pytest.raises(InputError, match=r"p01234\.parquet is not a readable Parquet file"):
        inspect_query_log(str(tmp_path), CONFIG)


def _ray_started() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def test_run_job_checks_input_before_model_and_ray(tmp_path, corpus):
    bad = _write_bad(tmp_path, "list query")
    with pytest.raises(InputError, match=r"column 'query' must hold strings"):
        run_job(
            JobConfig.build(model=str(tmp_path / "no-such-model")), input=str(bad), corpus=corpus, output="x"
        )
    good = tmp_path / "good.parquet"
    pq.write_table(_queries(candidates=[["d1"], ["d2"]]), good)
    with pytest.raises(ConfigError, match=r"model: folder .*no-such-model does not exist"):
        run_job(
            JobConfig.build(model=str(tmp_path / "no-such-model")),
            input=str(good),
            corpus=corpus,
            output=str(tmp_path / "out"),
        )
    with pytest.raises(InputError, match=r"corpus .*nope\.parquet does not exist"):
        run_job(CONFIG, input=str(good), corpus=str(tmp_path / "nope.parquet"), output="x")
    assert not _ray_started()


def test_zero_rows_write_an_empty_output_without_models(tmp_path, corpus):
    inp = tmp_path / "zero.parquet"
    pq.write_table(_queries(tenant=["a", "b"], candidates=[["d1"], ["d2"]]).slice(0, 0), inp)
    out = tmp_path / "out"
    # The model folder exists but holds no model: loading one would fail.
    (tmp_path / "no-model").mkdir()
    config = JobConfig.build(model=str(tmp_path / "no-model"))
    summary = run_job(config, input=str(inp), corpus=corpus, output=str(out))
    assert summary["queries"] == 0 and summary["pairs"] == 0
    table = pq.read_table(out)
    assert table.num_rows == 0
    assert table.schema.names == [
        "query_id",
        "query",
        "tenant",
        "candidates",
        *(f.name for f in schema.OUTPUT_FIELDS),
    ]
    assert json.loads((out / "_run_summary.json").read_text())["queries"] == 0
    assert not _ray_started()


def test_zero_rows_exploded_write_the_exploded_schema(tmp_path, corpus):
    inp = tmp_path / "zero.parquet"
    pq.write_table(_queries(candidates=[["d1"], ["d2"]]).slice(0, 0), inp)
    (tmp_path / "no-model").mkdir()
    config = JobConfig.build(model=str(tmp_path / "no-model"), exploded=True)
    run_job(config, input=str(inp), corpus=corpus, output=str(tmp_path / "out"))
    table = pq.read_table(tmp_path / "out")
    assert table.num_rows == 0 and table.schema.equals(schema.exploded_output_schema(pq.read_schema(inp)))
    assert "doc_id" in table.schema.names and "results" not in table.schema.names
    assert not _ray_started()


# -- the corpus: every document has text ---------------------------------------------------------------


def _corpus_file(tmp_path, texts, titles=None) -> Path:
    columns = {"doc_id": [f"d{i}" for i in range(len(texts))], "text": pa.array(texts, pa.string())}
    if titles is not None:
        columns["title"] = pa.array(titles, pa.string())
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table(columns), path)
    return path


@pytest.mark.parametrize(
    ("texts", "titles", "message"),
    [
        (["a", None, "b"], None, r"1 of its 3 documents have no text .*: doc ids 'd1'\. Give them text or"),
        (
            ["", "a", " \t\n", "\u3000"],
            None,
            r"3 of its 4 documents have no text .*: doc ids 'd0', 'd2', 'd3'\.",
        ),
        (
            ["a", "  "],
            ["A", "Flood cover"],
            r"1 of its 2 documents .*a title alone does not count\): doc ids 'd1'",
        ),
        ([None] * 7, None, r"7 of its 7 documents .*: doc ids 'd0', 'd1', 'd2', 'd3', 'd4', …\. Give"),
    ],
    ids=["null", "blank", "title-only", "many"],
)
def test_a_corpus_document_without_text_is_refused_naming_it(tmp_path, texts, titles, message):
    from rerank_engine.recall.checks import check_corpus

    path = _corpus_file(tmp_path, texts, titles)
    with pytest.raises(InputError, match=rf"corpus .*corpus\.parquet: {message}"):
        check_corpus(path, CONFIG.columns)


def test_a_corpus_document_without_text_stops_the_job_and_the_index_build(tmp_path, monkeypatch):
    from rerank_engine.job import driver, index_build

    def stop(*args, **kwargs):
        raise RuntimeError("got past the checks")

    monkeypatch.setattr(driver, "ensure_ray", stop)
    monkeypatch.setattr(index_build, "embed_corpus", stop)
    corpus = _corpus_file(tmp_path, [*DOCS.values(), " "])
    queries = tmp_path / "queries.parquet"
    pq.write_table(_queries(candidates=[["d1"], ["d3"]]), queries)
    message = r"corpus .*corpus\.parquet: 1 of its 4 documents have no text .*: doc ids 'd3'"
    with pytest.raises(InputError, match=message):  # d3 would have been an unknown candidate
        run_job(CONFIG, input=str(queries), corpus=str(corpus), output=str(tmp_path / "out"))
    with pytest.raises(InputError, match=message):  # and embedded as "" into the index
        index_build.build_index(str(corpus), str(tmp_path / "index"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "index").exists()


def test_a_corpus_with_text_everywhere_passes_titles_or_not(tmp_path):
    from rerank_engine.recall.checks import check_corpus

    path = _corpus_file(tmp_path, ["Flood is excluded.", " No title. ", "洪水"], ["Home cover", None, ""])
    assert check_corpus(path, CONFIG.columns).rows == 3


def test_a_corpus_text_that_is_not_utf8_is_refused_naming_its_row(tmp_path):
    from rerank_engine.recall.checks import check_corpus

    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": ["d0", "d1"], "text": _invalid_utf8([b"fine", b"flood \xff"])}), path)
    with pytest.raises(
        InputError,
        match=r"corpus .*corpus\.parquet: column 'text', row 1 \(counted from 0\) holds b'flood \\xff', "
        "which is not valid UTF-8",
    ):
        check_corpus(path, CONFIG.columns)


# -- config: ConfigError naming the key ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"threshold": 1.5}, r"threshold: .*less than or equal to 1"),
        ({"threshold": -0.1}, r"threshold: .*greater than or equal to 0"),
        ({"k_recall": 5, "k_rerank": 10}, r"k_rerank \(10\) cannot exceed k_recall \(5\)"),
        ({"provider": "tensorrt"}, r"provider: .*'auto', 'cpu' or 'cuda'.*\(got 'tensorrt'\)"),
        ({"precision": "fp64"}, r"precision: "),
        ({"resources.rerank_actors": 0}, r"resources\.rerank_actors: "),
        ({"no_such_key": 1}, r"no_such_key: Extra inputs are not permitted"),
    ],
)
def test_bad_config_names_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_job_config(None, overrides)


def test_bad_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*nope\.yaml does not exist"):
        load_job_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml must hold a mapping of config keys, found list"):
        load_job_config(tmp_path / "list.yaml")


# -- rows: every row comes out once, with a status ------------------------------------------------------


@pytest.fixture(scope="module")
def row_config(tiny_export):
    return JobConfig.build(model=str(tiny_export), precision="fp32", k_recall=4, k_rerank=3, threshold=0.0)


@pytest.fixture(scope="module")
def module_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad-corpus") / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": list(DOCS), "text": list(DOCS.values())}), path)
    return str(path)


ROWS = [  # (query_id, query, candidates, expected status)
    ("null", None, ["d1"], schema.EMPTY_QUERY),
    ("empty", "", ["d1"], schema.EMPTY_QUERY),
    ("blank", " \t\n ", ["d1"], schema.EMPTY_QUERY),
    ("control-only", "\x00\x01\x1b\x7f", ["d1"], schema.EMPTY_QUERY),
    ("control-mixed", "flood\x00 \x1b[31mdamage\x07", ["d1", "d2"], schema.OK),
    ("invalid-utf8", b"flood \xff\xfe damage", ["d1"], schema.INVALID_QUERY),
    ("emoji", "🌊 flood 🔥 fire 🚗 covered?", ["d1", "d2"], schema.OK),
    ("cjk", "洪水保险包括什么？ 等待期多长", ["d1", "d2"], schema.OK),
    ("one-mb", "flood insurance " * 65536, ["d1", "d2", "d3"], schema.OK),
    ("dup", "flood", ["d1"], schema.OK),
    ("dup", "waiting period", ["d2"], schema.OK),
    ("unknown", "flood", ["nope", "zzz"], schema.UNKNOWN_CANDIDATES),
    ("some-unknown", "flood", ["nope", "d3"], schema.OK),
    ("no-cands", "flood", [], schema.NO_CANDIDATES),
    ("null-cands", "flood", None, schema.NO_CANDIDATES),
    ("null-cand-ids", "flood", [None, "d1", None], schema.OK),
]


@pytest.fixture(scope="module")
def bad_rows_output(tmp_path_factory, row_config, module_corpus, tiny_export):
    queries = [q.encode() if isinstance(q, str) else q for _, q, _, _ in ROWS]
    table = pa.table(
        {
            "query_id": [r[0] for r in ROWS],
            "query": _invalid_utf8([q or b"" for q in queries]),
            "candidates": pa.array([r[2] for r in ROWS], pa.list_(pa.string())),
            "weight": [float("nan"), float("inf"), *map(float, range(len(ROWS) - 2))],
        }
    )
    mask = pa.array([q is None for q in queries])
    table = table.set_column(1, "query", pc.if_else(mask, pa.scalar(None, pa.string()), table["query"]))
    path = tmp_path_factory.mktemp("bad-rows") / "rows.parquet"
    pq.write_table(table, path)  # through Parquet: invalid UTF-8 survives the round trip unchecked
    table = pq.read_table(path)
    staged = logged_candidates(table, columns=row_config.columns)
    tokenized = TokenizeStage(
        corpus_path=module_corpus,
        model_source=tiny_export,
        columns=row_config.columns,
        tokenizer=row_config.tokenizer,
    )(staged)
    reranked = RerankStage(row_config.engine(tiny_export, threads=1))(tokenized)
    out = finalize(
        reranked,
        k_rerank=3,
        policy=ScorePolicy(reranker_model="m", recall_model="logged", threshold=0.0),
        run_id="r",
    )
    return table, tokenized, out


def test_every_bad_row_gets_a_status_and_none_is_lost(bad_rows_output):
    table, _, out = bad_rows_output
    assert out.num_rows == table.num_rows  # rows lost: 0
    ids = out.column("query_id").to_pylist()
    assert Counter(ids) == Counter(table.column("query_id").to_pylist())  # rows duplicated: 0
    assert ids == [r[0] for r in ROWS]  # order kept
    assert out.column("status").to_pylist() == [r[3] for r in ROWS]
    for row in out.select(["status", "results", "n_kept"]).to_pylist():
        if row["status"] in (schema.OK, schema.NO_RELEVANT):
            assert all(np.isfinite(r["score"]) for r in row["results"])
        else:
            assert row["results"] == [] and row["n_kept"] == 0


def test_pass_through_survives_bad_rows(bad_rows_output):
    table, _, out = bad_rows_output
    weights = out.column("weight").to_pylist()
    assert np.isnan(weights[0]) and weights[1] == float("inf")
    assert out.column("query").equals(table.column("query"))  # even the invalid UTF-8 bytes, unchanged


def test_one_mb_query_is_capped_by_the_tokenizer(bad_rows_output, row_config):
    _, tokenized, out = bad_rows_output
    i = [r[0] for r in ROWS].index("one-mb")
    lengths = tokenized.column("__rerank_lengths").to_pylist()[i]
    assert len(lengths) == 3 and max(lengths) <= row_config.tokenizer.max_length
    assert out.column("n_kept").to_pylist()[i] == 3


def test_duplicate_query_ids_are_each_kept(bad_rows_output):
    _, _, out = bad_rows_output
    dups = [r for r in out.select(["query_id", "results"]).to_pylist() if r["query_id"] == "dup"]
    assert [r["results"][0]["doc_id"] for r in dups] == ["d1", "d2"]


def test_duplicate_query_ids_are_warned_about(tmp_path, corpus, caplog, monkeypatch):
    from rerank_engine.job import driver

    def no_ray():
        raise RuntimeError("stop before Ray")

    monkeypatch.setattr(driver, "ensure_ray", no_ray)  # the warning comes before Ray starts
    dup = tmp_path / "dup.parquet"
    pq.write_table(
        pa.table({"query_id": ["a", "a", "b"], "query": ["x", "y", "z"], "candidates": [["d1"]] * 3}), dup
    )
    with pytest.raises(RuntimeError, match="stop before Ray"), caplog.at_level("WARNING"):
        run_job(CONFIG, input=str(dup), corpus=corpus, output=str(tmp_path / "out"))
    assert (
        "1 query ids occur more than once" in caplog.text and "(e.g. ['a']); every row is kept" in caplog.text
    )


# -- models -------------------------------------------------------------------------------------------------


def test_model_folder_that_does_not_exist(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"model folder .*nothing-here does not exist"):
        CrossEncoderEngine(EngineConfig.build(model_dir=tmp_path / "nothing-here"))


def test_corrupted_onnx_file_is_named(tiny_export, copy_export, row_config):
    broken = copy_export(tiny_export, "broken")
    for f in broken.glob("*.onnx"):
        f.write_bytes(b"\x08\x07 not a graph " * 50)
    with pytest.raises(ModelFormatError, match=r"broken/model\.onnx cannot be loaded by onnxruntime"):
        RerankStage(row_config.engine(broken, threads=1))


def test_two_logit_model_runs_through_the_stage(two_logit_export, module_corpus):
    config = JobConfig.build(
        model=str(two_logit_export), precision="fp32", k_recall=3, k_rerank=3, threshold=0
    )
    batch = {"query_id": ["a"], "query": ["flood"], "candidates": [["d1", "d2"]]}
    staged = TokenizeStage(
        corpus_path=module_corpus,
        model_source=two_logit_export,
        columns=config.columns,
        tokenizer=config.tokenizer,
    )(logged_candidates(batch, columns=config.columns))
    out = finalize(
        RerankStage(config.engine(two_logit_export, threads=1))(staged),
        k_rerank=3,
        policy=ScorePolicy(reranker_model="m", recall_model="logged", threshold=0.0),
        run_id="r",
    )
    assert out.column("status").to_pylist() == [schema.OK]
    assert out.column("n_kept").to_pylist() == [2]


def test_manifest_cannot_point_outside_the_model_folder(tiny_export, copy_export, tmp_path):
    moved = copy_export(tiny_export, "moved")
    manifest = json.loads((moved / "manifest.json").read_text())
    (tmp_path / "outside.onnx").write_bytes((moved / manifest["variants"]["fp32"]["file"]).read_bytes())
    manifest["variants"]["fp32"]["file"] = "../outside.onnx"
    (moved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFormatError, match=r"'\.\./outside\.onnx' points outside the model folder"):
        CrossEncoderEngine(EngineConfig.build(model_dir=moved, precision="fp32"))


# -- faults -----------------------------------------------------------------------------------------


def test_nonfinite_logits_are_flagged_never_written():
    batch = {
        "query_id": ["nan", "inf", "-inf", "fine"],
        "query": ["x"] * 4,
        "__rerank_status": pa.array([None] * 4, pa.string()),
        "__rerank_cand_ids": [["a", "b"]] * 4,
        "__rerank_recall_scores": pa.array([None] * 4, pa.list_(pa.float32())),
        "__rerank_recall_ranks": [[1, 2]] * 4,
        "__rerank_logits": pa.array(
            [[float("nan"), 1.0], [2.0, float("inf")], [float("-inf"), 0.0], [1.0, 0.0]],
            pa.list_(pa.float32()),
        ),
    }
    rows = finalize(
        batch, k_rerank=2, policy=ScorePolicy(reranker_model="m", recall_model="r", threshold=0.0), run_id="x"
    ).to_pylist()
    assert [r["status"] for r in rows] == [schema.NONFINITE_SCORE] * 3 + [schema.OK]
    assert all(r["results"] == [] and r["n_kept"] == 0 for r in rows[:3])
    assert rows[0]["n_candidates"] == 2


class _SmallDeviceEngine(CrossEncoderEngine):
    """The real engine on a device that cannot allocate a batch of more than `max_rows` rows."""

    max_rows = 3
    batch_sizes: list[int]

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

        self.batch_sizes.append(len(input_ids))
        if len(input_ids) > self.max_rows:
            raise RuntimeException(
                "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer"
            )
        return super().forward(input_ids, attention_mask, token_type_ids)


def test_engine_splits_a_batch_too_large_for_memory(tiny_export, random_pairs):
    queries, passages = random_pairs(23, seed=3, max_words=20)
    config = EngineConfig.build(model_dir=tiny_export, precision="fp32", batching={"max_batch_rows": 16})
    want = CrossEncoderEngine(config).score(queries, passages).logits
    engine = _SmallDeviceEngine(config)
    engine.batch_sizes = []
    got = engine.score(queries, passages).logits
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert max(engine.batch_sizes) == 16  # the planned batch was tried first ...
    assert sum(b for b in engine.batch_sizes if b <= engine.max_rows) == len(queries)  # ... then halves

    engine.max_rows = 0  # a single row that does not fit is an error, not an endless split
    with pytest.raises(Exception, match="Failed to allocate memory"):
        engine.score(queries[:1], passages[:1])


def test_other_forward_errors_are_not_retried(tiny_export):
    class Broken(CrossEncoderEngine):
        calls = 0

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            Broken.calls += 1
            raise RuntimeError("shape mismatch")

    engine = Broken(EngineConfig.build(model_dir=tiny_export, precision="fp32"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        engine.score(["a", "b", "c"], ["x", "y", "z"])
    assert Broken.calls == 1


# -- security ---------------------------------------------------------------------------------------


def test_remote_code_is_not_run_unless_asked(tmp_path):
    from rerank_engine.serving.exporting import export_model

    model = tmp_path / "remote"
    model.mkdir()
    marker = tmp_path / "code-ran"
    (model / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil-custom",
                "auto_map": {
                    "AutoConfig": "evil.EvilConfig",
                    "AutoModelForSequenceClassification": "evil.EvilModel",
                },
            }
        )
    )
    (model / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(ValueError, match="trust_remote_code"):
        export_model(model, tmp_path / "out")
    assert not marker.exists()


class _Payload:
    """Unpickling this runs code: it must never happen when a checkpoint is loaded."""

    def __reduce__(self):
        return (open, (str(_Payload.marker), "w"))


def test_checkpoint_with_pickled_objects_is_refused(tmp_path, tiny_model_dir):
    import pickle

    import torch

    from rerank_engine.training.finetune import FinetuneConfig, train

    _Payload.marker = tmp_path / "code-ran"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"state": _Payload()}, run / "checkpoint.pt")
    config = FinetuneConfig.build(steps=2, max_length=32, groups_per_step=1, n_negatives=1)
    records = [{"query": "q", "pos": ["p"], "neg": ["n"]}]
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train(config, records, run, base_model=tiny_model_dir, progress=False)
    assert not _Payload.marker.exists()


def test_exploded_form_keeps_every_bad_row(bad_rows_output):
    from rerank_engine.job.stages import explode

    _, _, out = bad_rows_output
    flat = explode(out, query_id="query_id", query="query")
    per_query = Counter(flat.column("query_id").to_pylist())
    assert set(per_query) == set(out.column("query_id").to_pylist())  # no query lost
    expected = Counter()  # duplicate query ids are kept: their rows add up
    for qid, n_kept in zip(out.column("query_id").to_pylist(), out.column("n_kept").to_pylist(), strict=True):
        expected[qid] += max(n_kept, 1)
    assert per_query == expected

    def raw(col):
        return set(col.combine_chunks().cast(pa.binary()).to_pylist())

    assert raw(flat.column("query")) == raw(out.column("query"))  # invalid UTF-8 bytes pass through unchanged
