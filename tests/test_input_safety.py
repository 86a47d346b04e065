"""Trust in the inputs (issue 24): inputs are never written, moved or deleted; the declared relations
between inputs (index ↔ corpus, index ↔ bi-encoder, unique doc ids) are checked before Ray starts; a
folder is read as pyarrow reads it; every input column reaches the output; bad config values and
timeouts end in clean errors. Most checks run before Ray starts, so most tests here start none: a
tripwire (`no_ray`) fails any test whose job would reach Ray."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_engine.config import JobConfig
from rerank_engine.errors import ConfigError, InputError
from rerank_engine.job.driver import run_job
from rerank_engine.job.nightly import NightlyConfig, run_nightly
from rerank_engine.quality.score_policy import ScorePolicy

DOCS = {
    "d1": "A standard homeowners policy excludes flood damage.",
    "d2": "Critical illness cover usually has a 90 day waiting period.",
    "d3": "Term life insurance pays nothing if you outlive the term.",
}
CONFIG = JobConfig.build(model="unused", threshold=0.0)


@pytest.fixture
def no_ray(monkeypatch):
    """Any job that gets as far as starting Ray fails the test: the checks under test come before it."""
    from rerank_engine.job import driver

    def tripwire():
        raise AssertionError("the job reached Ray: the check under test did not stop it first")

    monkeypatch.setattr(driver, "ensure_ray", tripwire)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` (folders as None, files as their bytes)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


@pytest.fixture
def inputs(tmp_path):
    """A logged-candidates query log folder, a corpus and an (empty-manifest) index folder."""
    logs = tmp_path / "logs"
    logs.mkdir()
    pq.write_table(
        pa.table(
            {"query_id": ["q1", "q2"], "query": ["flood", "waiting period"], "candidates": [["d1"], ["d2"]]}
        ),
        logs / "part-0.parquet",
    )
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"doc_id": list(DOCS), "text": list(DOCS.values())}), data / "corpus.parquet")
    index = tmp_path / "index"
    index.mkdir()
    (index / "manifest.json").write_text("{}")
    return {"logs": logs, "corpus": data / "corpus.parquet", "index": index, "root": tmp_path}


# -- 1. inputs are never written, moved or deleted --------------------------------------------------------


@pytest.mark.parametrize(
    ("input_of", "output_of", "message"),
    [
        (lambda i: i["logs"], lambda i: i["logs"], r"output .*logs is the query log .*logs"),
        (lambda i: i["logs"] / "part-0.parquet", lambda i: i["logs"], r"logs contains the query log .*part"),
        (lambda i: i["logs"], lambda i: i["logs"] / "out", r"logs/out lies inside the query log"),
        (lambda i: str(i["logs"]) + "/*.parquet", lambda i: i["logs"] / "o", r"lies inside the query log"),
        (lambda i: i["logs"], lambda i: i["corpus"].parent, r"data contains the corpus .*corpus\.parquet"),
        (lambda i: i["logs"], lambda i: i["index"], r"output .*index is the index"),
        (lambda i: i["logs"], lambda i: i["index"] / "out", r"lies inside the index"),
        (lambda i: i["logs"], lambda i: i["root"], r"contains the query log"),
    ],
    ids=["equal", "holds-input-file", "inside", "inside-glob", "holds-corpus", "index", "in-index", "root"],
)
@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_touching_an_input_is_refused_before_anything_is_touched(
    inputs, no_ray, input_of, output_of, message, overwrite
):
    before = snapshot(inputs["root"])
    with pytest.raises(ConfigError, match=message):
        run_job(
            CONFIG,
            input=str(input_of(inputs)),
            corpus=str(inputs["corpus"]),
            index=str(inputs["index"]),
            output=str(output_of(inputs)),
            overwrite=overwrite,
        )
    assert snapshot(inputs["root"]) == before  # nothing written, moved or deleted


def test_an_output_that_is_the_model_folder_is_refused(inputs, no_ray, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"output .*model is the model .*model"):
        run_job(
            JobConfig.build(model=str(model)),
            input=str(inputs["logs"]),
            corpus=str(inputs["corpus"]),
            output=str(model),
            overwrite=True,
        )
    assert (model / "config.json").is_file()


def test_an_output_beside_the_inputs_still_runs_to_ray(inputs, no_ray):
    with pytest.raises(AssertionError, match="reached Ray"):  # past every check: the rule is not too wide
        run_job(
            CONFIG,
            input=str(inputs["logs"]),
            corpus=str(inputs["corpus"]),
            output=str(inputs["root"] / "out"),
        )


def _never_run(*args, **kwargs):
    raise AssertionError("a chunk ran: the check under test did not stop the nightly run first")


@pytest.mark.parametrize(
    ("input_template", "output_template", "message"),
    [
        ("logs/dt={date}", "logs/dt={date}", r"output .*logs/dt=2026-11-26 is the query log"),
        ("logs/dt={date}", "logs/dt={date}/out", r"lies inside the query log"),
        ("logs/dt={date}", "logs/out-{date}", None),  # beside it: runs
        # the work folder (beside the output, under _nightly) would hold the input
        ("out/_nightly/logs/dt={date}", "out/dt={date}", r"nightly work folder .*_nightly contains the"),
    ],
)
def test_nightly_output_touching_the_input_is_refused_before_the_lock(
    tmp_path, input_template, output_template, message
):
    folder = tmp_path / input_template.replace("{date}", "2026-11-26")
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"query_id": ["q1"], "query": ["flood"]}), folder / "part-0.parquet")
    pq.write_table(pa.table({"doc_id": ["d1"], "text": ["x"]}), tmp_path / "corpus.parquet")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "bert"}')
    config = NightlyConfig.build(
        input_template=str(tmp_path / input_template),
        output_template=str(tmp_path / output_template),
        corpus=str(tmp_path / "corpus.parquet"),
        job={"model": str(tmp_path / "model")},
    )
    before = snapshot(tmp_path)
    if message is None:  # past every check: the rule is not too wide
        with pytest.raises(AssertionError, match="a chunk ran"):
            run_nightly(config, "2026-11-26", overwrite=True, runner=_never_run)
        return
    with pytest.raises(ConfigError, match=message):
        run_nightly(config, "2026-11-26", overwrite=True, runner=_never_run)
    assert snapshot(tmp_path) == before  # not even the lock file


# -- 2. declared relations between inputs, before Ray starts -----------------------------------------------


def _corpus(path: Path, docs: dict[str, str] | list[tuple[str, str]]) -> Path:
    rows = list(docs.items()) if isinstance(docs, dict) else docs
    pq.write_table(pa.table({"doc_id": [d for d, _ in rows], "text": [t for _, t in rows]}), path)
    return path


def _index(out: Path, corpus: Path | None, doc_ids: list[str], **manifest) -> Path:
    """A real (exact FAISS) index over random unit vectors, with the manifest fields build_index writes."""
    import numpy as np

    from rerank_engine.recall.index import BiEncoder, RecallIndex
    from rerank_engine.serving.hashing import file_hash

    emb = np.random.default_rng(0).normal(size=(len(doc_ids), 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    fields = {"model": BiEncoder.describe(None), "max_length": 256}
    if corpus is not None:
        fields.update(corpus=str(corpus), corpus_hash=file_hash(corpus))
    RecallIndex.build(emb, doc_ids, **{**fields, **manifest}).save(out)
    return out


@pytest.fixture
def recall_inputs(tmp_path):
    queries = tmp_path / "queries.parquet"
    pq.write_table(pa.table({"query_id": ["q1", "q2"], "query": ["flood", "waiting period"]}), queries)
    corpus = _corpus(tmp_path / "corpus.parquet", DOCS)
    return {"queries": queries, "corpus": corpus, "index": _index(tmp_path / "index", corpus, list(DOCS))}


def _run(inputs, corpus=None, index=None, config=CONFIG, **kw):
    return run_job(
        config,
        input=str(inputs["queries"]),
        corpus=str(corpus or inputs["corpus"]),
        index=str(index or inputs["index"]),
        output=str(Path(inputs["queries"]).parent / "out"),
        **kw,
    )


def test_the_index_of_this_corpus_passes_to_ray(recall_inputs, no_ray):
    with pytest.raises(AssertionError, match="reached Ray"):
        _run(recall_inputs)


def test_an_index_of_another_corpus_with_the_same_ids_is_refused_naming_both(recall_inputs, no_ray, tmp_path):
    other = _corpus(tmp_path / "other.parquet", {d: f"another text {i}" for i, d in enumerate(DOCS)})
    with pytest.raises(InputError) as err:
        _run(recall_inputs, corpus=other)
    message = str(err.value)
    assert (
        f"index {recall_inputs['index'] / 'manifest.json'} was built from {recall_inputs['corpus']}"
        in message
    )
    assert f"not from corpus {other}" in message and "doc ids and count are the same" in message


def test_an_index_of_a_bigger_corpus_is_refused_with_the_counts(recall_inputs, no_ray, tmp_path):
    fewer = _corpus(tmp_path / "fewer.parquet", dict(list(DOCS.items())[:2]))
    with pytest.raises(
        InputError,
        match=r"the index holds 3 documents, the corpus 2; 1 of the index's doc ids are not in the corpus "
        r"\(e\.g\. \['d3'\]\)",
    ):
        _run(recall_inputs, corpus=fewer)


def test_an_index_without_a_corpus_hash_is_held_to_its_ids(recall_inputs, no_ray, tmp_path):
    # built from embeddings made elsewhere (write_embeddings): no hash, so the ids must match
    index = _index(tmp_path / "index-ext", None, ["d1", "d2", "zz"])
    with pytest.raises(
        InputError, match=r"1 of the index's doc ids are not in the corpus \(e\.g\. \['zz'\]\)"
    ):
        _run(recall_inputs, index=index)
    same = _index(tmp_path / "index-same", None, list(DOCS))
    with pytest.raises(AssertionError, match="reached Ray"):  # same ids: nothing to hold against it
        _run(recall_inputs, index=same)


def test_an_index_built_with_another_bi_encoder_is_refused_before_ray(recall_inputs, no_ray, tmp_path):
    index = _index(tmp_path / "index-other", recall_inputs["corpus"], list(DOCS), model="other-encoder@0123")
    with pytest.raises(
        ConfigError,
        match=r"index .*index-other/manifest\.json was built with bi-encoder other-encoder@0123, but "
        r"bi_encoder .* \(the bundled default\) is ",
    ):
        _run(recall_inputs, index=index)
    with pytest.raises(ConfigError, match=r"bi_encoder: .*nowhere is not a model folder"):
        _run(recall_inputs, config=JobConfig.build(model="unused", bi_encoder=str(tmp_path / "nowhere")))


def test_a_doc_id_repeated_with_another_text_is_an_error_naming_it(inputs, no_ray, tmp_path):
    corpus = _corpus(tmp_path / "dup.parquet", [*DOCS.items(), ("d2", "A different passage.")])
    with pytest.raises(
        InputError,
        match=r"corpus .*dup\.parquet: doc_id 'd2' occurs more than once with different texts "
        r"\('Critical illness.*' and 'A different passage\.'\)",
    ):
        run_job(CONFIG, input=str(inputs["logs"]), corpus=str(corpus), output=str(tmp_path / "out"))


def test_a_doc_id_repeated_with_the_same_text_is_collapsed_and_counted(tmp_path):
    corpus = _corpus(tmp_path / "dup.parquet", [*DOCS.items(), ("d2", DOCS["d2"]), ("d2", DOCS["d2"])])
    empty = tmp_path / "empty.parquet"  # zero rows: the summary is written without Ray or a model
    pq.write_table(
        pa.table({"query_id": pa.array([], pa.string()), "query": pa.array([], pa.string())}), empty
    )
    index = _index(tmp_path / "index", corpus, list(DOCS))
    (tmp_path / "no-model").mkdir()
    summary = run_job(
        JobConfig.build(model=str(tmp_path / "no-model")),
        input=str(empty),
        corpus=str(corpus),
        index=str(index),
        output=str(tmp_path / "out"),
    )
    assert summary["corpus_duplicate_rows"] == 2


def test_build_index_collapses_identical_repeats_of_a_doc_id(tmp_path):
    import numpy as np

    from rerank_engine.recall.build import load_embeddings, write_embeddings

    vectors = np.eye(4, dtype=np.float32)
    write_embeddings(tmp_path / "emb", ["b", "a", "b", "c"], vectors, model="m", max_length=8)
    with pytest.raises(InputError, match=r"doc_id 'b' appears more than once"):
        load_embeddings(tmp_path / "emb")
    ids, emb = load_embeddings(tmp_path / "emb", collapse_repeats=True)
    assert ids == ["a", "b", "c"] and emb.tolist() == [
        vectors[1].tolist(),
        vectors[0].tolist(),
        vectors[3].tolist(),
    ]


# -- 3. a folder is read as pyarrow reads it: what engines leave behind is skipped -------------------------


def _rows(ids: list[str]) -> pa.Table:
    return pa.table(
        {"query_id": pa.array(ids, pa.string()), "query": pa.array([f"q {i}" for i in ids], pa.string())}
    )


def spark_folder(root: Path, visible_rows: tuple[int, int, int] = (6, 4, 2)) -> Path:
    """A query log as Spark leaves it: part files, `_SUCCESS`, `.crc` checksums, a `_temporary/` attempt
    (a retried task's copy of part 0), plus a hidden folder and a visible partition folder."""
    folder = root / "logs"
    (folder / "_temporary" / "0" / "_temporary" / "attempt_202611260000_0001_m_000000_1").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    (folder / "region=eu").mkdir()
    a, b, c = visible_rows
    pq.write_table(_rows([f"a{i}" for i in range(a)]), folder / "part-00000-x.snappy.parquet")
    pq.write_table(_rows([f"b{i}" for i in range(b)]), folder / "part-00001-x.snappy.parquet")
    pq.write_table(_rows([f"c{i}" for i in range(c)]), folder / "region=eu" / "part-00000-y.snappy.parquet")
    attempt = next((folder / "_temporary" / "0" / "_temporary").iterdir())
    pq.write_table(_rows([f"a{i}" for i in range(3)]), attempt / "part-00000-x.snappy.parquet")
    pq.write_table(_rows(["h0"]), folder / ".hidden" / "part-0.parquet")
    pq.write_table(_rows(["u0"]), folder / "_part-stale.parquet")
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / ".part-00000-x.snappy.parquet.crc").write_bytes(b"crc")
    return folder


@pytest.mark.parametrize("form", ["folder", "file-uri", "glob"])
def test_a_spark_folder_is_read_as_pyarrow_reads_it(tmp_path, form):
    import pyarrow.dataset as pads

    from rerank_engine.job.driver import inspect_query_log

    folder = spark_folder(tmp_path)
    expected = pads.dataset(folder, format="parquet", partitioning=None)
    given = {"folder": str(folder), "file-uri": f"file://{folder}", "glob": f"{folder}/**/*.parquet"}[form]
    files, _, _, n_rows, _ = inspect_query_log(given, CONFIG)
    assert sorted(Path(f).name for f in files) == sorted(Path(f).name for f in expected.files)
    assert len(files) == 3 and n_rows == expected.count_rows() == 12


def test_the_summary_says_how_many_files_were_read(tmp_path, no_ray):
    folder = spark_folder(tmp_path, visible_rows=(0, 0, 0))  # rows only in what must be skipped
    (tmp_path / "no-model").mkdir()
    summary = run_job(
        JobConfig.build(model=str(tmp_path / "no-model")),
        input=str(folder),
        corpus=str(_corpus(tmp_path / "corpus.parquet", DOCS)),
        index=str(_index(tmp_path / "index", tmp_path / "corpus.parquet", list(DOCS))),
        output=str(tmp_path / "out"),
    )
    assert summary["queries"] == 0 and summary["input_files"] == 3


def test_nightly_reads_a_spark_partition_once(tmp_path):
    partition = tmp_path / "spark" / "dt=2026-11-26"
    partition.parent.mkdir()
    spark_folder(tmp_path).rename(partition)
    pq.write_table(pa.table({"doc_id": ["d1"], "text": ["x"]}), tmp_path / "corpus.parquet")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "bert"}')

    def runner(config, *, input, corpus, output, index=None, run_id=None) -> dict:  # one row per row
        table = pq.read_table(input)
        Path(output).mkdir(parents=True)
        pq.write_table(table, Path(output) / "part-0.parquet")
        summary = {"queries": table.num_rows, "run_id": run_id}
        (Path(output) / "_run_summary.json").write_text(json.dumps(summary))
        return summary

    config = NightlyConfig.build(
        input_template=str(tmp_path / "spark" / "dt={date}"),
        output_template=str(tmp_path / "out" / "dt={date}"),
        corpus=str(tmp_path / "corpus.parquet"),
        job={"model": str(tmp_path / "model")},
    )
    summary = run_nightly(config, "2026-11-26", runner=runner)
    assert summary["rows"] == summary["queries"] == 12 and summary["input_files"] == 3


# -- 4. every input column reaches the output, whatever its name -----------------------------------------


def _scored_batch(**extra) -> dict:
    """One query as the rerank stage hands it to finalize, with the job's working columns."""
    from rerank_engine.job import stages

    return {
        "query_id": ["a"],
        "query": ["x"],
        **extra,
        stages.STATUS: pa.array([None], pa.string()),
        stages.CAND_IDS: [["d1", "d2"]],
        stages.RECALL_SCORES: pa.array([None], pa.list_(pa.float32())),
        stages.RECALL_RANKS: [[1, 2]],
        stages.LOGITS: pa.array([[0.5, 1.5]], pa.list_(pa.float32())),
    }


def test_finalize_passes_through_columns_whose_names_start_with_an_underscore():
    from rerank_engine import schema
    from rerank_engine.job.stages import finalize

    batch = _scored_batch(_note=["kept"], __private=[7], _status=["mine"])
    out = finalize(
        batch, k_rerank=2, policy=ScorePolicy(reranker_model="m", recall_model="r", threshold=0.0), run_id="x"
    )
    assert out.column_names == [
        "query_id",
        "query",
        "_note",
        "__private",
        "_status",
        *(f.name for f in schema.OUTPUT_FIELDS),
    ]
    row = out.to_pylist()[0]
    assert (row["_note"], row["__private"], row["_status"]) == ("kept", 7, "mine")
    assert not any(c.startswith(schema.WORK_PREFIX) for c in out.column_names)


def test_the_empty_output_keeps_underscore_columns(tmp_path):
    from rerank_engine import schema

    inp = pa.schema([("query_id", pa.string()), ("query", pa.string()), ("_note", pa.string())])
    assert schema.output_schema(inp).names[:3] == ["query_id", "query", "_note"]


def test_an_input_column_in_the_jobs_namespace_is_refused_up_front(tmp_path):
    from rerank_engine.job.driver import inspect_query_log

    path = tmp_path / "q.parquet"
    pq.write_table(pa.table({"query_id": ["a"], "query": ["x"], "__rerank_status": ["mine"]}), path)
    with pytest.raises(
        InputError, match=r"q\.parquet: column '__rerank_status' is in the namespace of the job's working"
    ):
        inspect_query_log(str(path), CONFIG)


# -- 3-5 on a real local Ray: a Spark folder with `_` columns, read once; a stalled job times out cleanly ----


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for this module (2 CPUs); reused if the session already has one."""
    import logging

    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
    yield
    if started:
        ray.shutdown()


def _spark_log(root: Path, repeat: bool) -> Path:
    """A logged-candidates query log as Spark writes it, with columns named `_note` and `__private`."""
    folder = spark_folder(root, visible_rows=(0, 0, 0))  # droppings only; the data goes in below
    for i, name in enumerate(["part-00000-x.snappy.parquet", "part-00001-x.snappy.parquet"]):
        queries = [f"flood damage {i}", f"waiting period {i}", f"term life {i}", f"hail {i}"]
        if repeat:
            queries[3] = queries[0]
        ids = [f"p{i}q{j}" for j in range(len(queries))]
        table = pa.table(
            {
                "query_id": ids,
                "query": queries,
                "candidates": [["d1", "d2", "d3"]] * len(queries),
                "_note": [f"note {q}" for q in ids],
                "__private": list(range(len(queries))),
            }
        )
        pq.write_table(table, folder / name)
    (folder / "region=eu" / "part-00000-y.snappy.parquet").unlink()
    return folder


def _ray_config(tiny_export, **overrides) -> JobConfig:
    from rerank_engine.config import load_job_config

    repo = Path(__file__).resolve().parents[1]
    return load_job_config(
        repo / "jobs/configs/local.yaml",
        {"model": str(tiny_export), "precision": "fp32", "k_recall": 3, "k_rerank": 2, "threshold": 0.0}
        | {"timeout_s": 600, **overrides},
    )


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("repeat", [False, True], ids=["no-repeats", "repeats"])
def test_spark_log_with_underscore_columns_comes_out_once_and_whole(local_ray, tiny_export, tmp_path, repeat):
    folder = _spark_log(tmp_path, repeat)
    corpus = _corpus(tmp_path / "corpus.parquet", DOCS)
    out = tmp_path / "out"
    summary = run_job(_ray_config(tiny_export), input=str(folder), corpus=str(corpus), output=str(out))
    assert summary["input_files"] == 2 and summary["queries"] == 8
    assert summary["distinct_queries"] == (6 if repeat else 8)
    rows = sorted(pq.read_table(out).to_pylist(), key=lambda r: r["query_id"])
    assert [r["query_id"] for r in rows] == sorted(f"p{i}q{j}" for i in range(2) for j in range(4))
    assert all(r["_note"] == f"note {r['query_id']}" for r in rows)  # kept whatever the path
    assert [r["__private"] for r in rows] == [0, 1, 2, 3] * 2
    assert all(r["status"] == "ok" and r["n_kept"] == 2 for r in rows)


@pytest.mark.ray
@pytest.mark.slow
def test_a_stalled_job_times_out_naming_the_stage_and_leaves_no_staging(local_ray, tiny_export, tmp_path):
    from rerank_engine.errors import JobTimeoutError, RerankEngineError

    folder = _spark_log(tmp_path, repeat=False)
    corpus = _corpus(tmp_path / "corpus.parquet", DOCS)
    out = tmp_path / "out"
    # A rerank actor that asks for more CPUs than the cluster has is never placed: the pipeline stalls,
    # as the cluster of 1-CPU nodes did.
    config = _ray_config(
        tiny_export,
        timeout_s=20,
        dedupe_queries=False,
        **{"resources.rerank_cpus": 64, "resources.fit_to_nodes": False},  # kept as asked: never placed
    )
    with pytest.raises(JobTimeoutError) as err:
        run_job(config, input=str(folder), corpus=str(corpus), output=str(out))
    message = str(err.value)
    assert isinstance(err.value, RerankEngineError)  # the CLIs print it as a clean error, exit 2
    assert "timeout of 20 s (config key timeout_s) while scoring and writing the 8 input rows" in message
    assert "Ray Data operators not finished: " in message and "RerankStage" in message
    assert not list(out.glob("_staging-*"))


# -- 5. every bad config value is a ConfigError naming the key; a timeout is a clean, named failure ---------


@pytest.mark.parametrize(
    ("yaml_text", "sets", "message"),
    [
        ("1: 2\n", [], r"c\.yaml: config keys are names; found the key 1"),
        ("true: 1\n", [], r"c\.yaml: config keys are names; found the key True"),
        (
            "resources: 3\n",
            ["resources.rerank_actors=2"],
            r"cannot set resources\.rerank_actors: resources holds 3",
        ),
        (
            "resources: [1]\n",
            ["resources.rerank_actors=2"],
            r"cannot set resources\.rerank_actors: resources holds",
        ),
        ("k_recall: 20\n", ["k_recall.x=1"], r"cannot set k_recall\.x: k_recall holds 20, not a mapping"),
        ("resources: {1: 2}\n", [], r"resources\.1: Keys should be strings"),
        ("", ["timeout_s=.inf"], r"timeout_s: Input should be a finite number"),
        ("", ["timeout_s=1e300"], r"timeout_s: Input should be less than or equal to 31536000"),
        ("", ["resources.io_cpus=.inf"], r"resources\.io_cpus: Input should be a finite number"),
        ("", ["threshold=.nan"], r"threshold: Input should be a finite number"),
    ],
)
def test_bad_config_values_are_config_errors_naming_the_key(tmp_path, capsys, yaml_text, sets, message):
    from jobs.rerank import main

    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    argv = ["--config", str(config), "--input", "q", "--corpus", "c", "--output", str(tmp_path / "o")]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 2  # not a traceback
    err = capsys.readouterr().err
    assert err.startswith("rerank job failed: ") and "Traceback" not in err
    assert re.search(message, err), err


def test_nightly_config_with_a_job_that_is_not_a_mapping(tmp_path):
    from rerank_engine.job.nightly import load_nightly_config

    path = tmp_path / "n.yaml"
    path.write_text("input_template: a/{date}\noutput_template: b/{date}\ncorpus: c\njob: [1]\n")
    with pytest.raises(ConfigError, match=r"cannot set job\.k_rerank: job holds \[1\], not a mapping"):
        load_nightly_config(path, {"job.k_rerank": 3})


def test_deadline_is_a_clean_error_naming_what_ran():
    import time

    from rerank_engine.errors import JobTimeoutError, RerankEngineError
    from rerank_engine.job.driver import deadline

    with (
        pytest.raises(
            JobTimeoutError, match=r"timeout of 0\.2 s \(config key timeout_s\) while reading x"
        ) as err,
        deadline(0.2, lambda: "reading x"),
    ):
        time.sleep(5)
    assert isinstance(err.value, RerankEngineError) and isinstance(err.value, TimeoutError)


def test_a_rerun_removes_the_staging_a_killed_run_left(tmp_path):
    out = tmp_path / "out"
    (out / "_staging-20261126T000000Z-dead00").mkdir(parents=True)
    pq.write_table(_rows(["a0"]), out / "_staging-20261126T000000Z-dead00" / "part-0.parquet")
    empty = tmp_path / "empty.parquet"
    pq.write_table(_rows([]), empty)
    (tmp_path / "no-model").mkdir()
    run_job(
        JobConfig.build(model=str(tmp_path / "no-model")),
        input=str(empty),
        corpus=str(_corpus(tmp_path / "corpus.parquet", DOCS)),
        index=str(_index(tmp_path / "index", tmp_path / "corpus.parquet", list(DOCS))),
        output=str(out),
    )
    assert not list(out.glob("_staging-*")) and (out / "part-00000.parquet").is_file()


# -- 6. --overwrite replaces an earlier output only once the new one is verified ----------------------------


def _earlier_output(out: Path) -> dict:
    out.mkdir()
    pq.write_table(pa.table({"query_id": ["old"]}), out / "part-00000.parquet")
    (out / "_run_summary.json").write_text('{"run_id": "earlier"}')
    return snapshot(out)


def test_a_run_that_fails_after_its_checks_leaves_the_earlier_output_as_it_was(inputs, no_ray):
    out = inputs["root"] / "out"
    before = _earlier_output(out)
    with pytest.raises(AssertionError, match="reached Ray"):  # fails after preflight, before any commit
        run_job(
            CONFIG, input=str(inputs["logs"]), corpus=str(inputs["corpus"]), output=str(out), overwrite=True
        )
    assert snapshot(out) == before


def test_overwrite_replaces_the_earlier_output_whole(inputs, no_ray):
    out = inputs["root"] / "out"
    _earlier_output(out)
    (out / "_replaced-killed").mkdir()  # what a commit killed half-way left
    empty = inputs["root"] / "empty.parquet"
    pq.write_table(pq.read_table(next(inputs["logs"].glob("*.parquet"))).slice(0, 0), empty)
    summary = run_job(CONFIG, input=str(empty), corpus=str(inputs["corpus"]), output=str(out), overwrite=True)
    assert pq.read_table(out).num_rows == 0  # the earlier row is gone
    assert json.loads((out / "_run_summary.json").read_text())["run_id"] == summary["run_id"]
    assert [p.name for p in out.glob("*.parquet")] == ["part-00000.parquet"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(("_replaced-", "_staging-"))]
