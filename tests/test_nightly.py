"""Nightly operation: date templates, the chunked exactly-once commit, resume, and the cluster configs.

The commit protocol is tested twice: quickly, with a plain-Python chunk runner standing in for `run_job`
(one output row per input row), and for real on a local Ray with the tiny exported model (`ray`, `slow`):
a date run twice (the second a no-op, through the CLI), and a run crashed by fault injection whose rerun
equals a clean run row for row. The last tests check cluster.yaml against the JSON schema shipped in the
`ray` package and the KubeRay manifests in k8s/ for the fields KubeRay documents.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from rerank_engine import schema
from rerank_engine.config import load_job_config
from rerank_engine.errors import ConfigError, InputError
from rerank_engine.job.nightly import (
    SUCCESS,
    InjectedFailure,
    NightlyConfig,
    NightlyPaths,
    load_nightly_config,
    parse_date,
    resume_key,
    run_nightly,
)
from rerank_engine.probe_pairs import PASSAGES, QUERIES

REPO = Path(__file__).resolve().parents[1]
DATE = "2026-11-26"
QUERY_LOG = [*QUERIES, "", "   ", "Is hail damage to my car covered?"]  # 11 rows


def write_query_log(root: Path, date: str = DATE, split: int = 7) -> Path:
    """The date's partition as two Parquet files (7 + 4 rows), so chunks of 6 rows straddle them."""
    folder = root / "logs" / f"dt={date}"
    folder.mkdir(parents=True)
    table = pa.table(
        {
            "query_id": [f"q{i:02d}" for i in range(len(QUERY_LOG))],
            "query": QUERY_LOG,
            "tenant": [f"t{i % 3}" for i in range(len(QUERY_LOG))],
        }
    )
    pq.write_table(table.slice(0, split), folder / "part-0.parquet")
    pq.write_table(table.slice(split), folder / "part-1.parquet")
    return folder


def nightly_config(root: Path, model: str, out: str = "out", **job) -> NightlyConfig:
    return NightlyConfig.build(
        input_template=str(root / "logs" / "dt={date}") + "/",
        output_template=str(root / out / "dt={date}"),
        corpus=str(root / "corpus.parquet"),
        index=str(root / "index"),
        chunk_rows=6,
        job={"model": model, **job},
    )


def read_output(folder: Path) -> list[dict]:
    return sorted(pq.read_table(folder).to_pylist(), key=lambda r: r["query_id"])


# -- config, dates, paths -------------------------------------------------------------------------------


def test_shipped_nightly_configs_load():
    local = load_nightly_config(REPO / "jobs/configs/nightly_local.yaml", {"job.k_rerank": 3})
    assert local.job == load_job_config(REPO / "jobs/configs/local.yaml", {"k_rerank": 3})
    cluster = load_nightly_config(REPO / "jobs/configs/nightly_cluster.yaml")
    assert cluster.job == load_job_config(REPO / "jobs/configs/cluster.yaml")
    assert cluster.input_template.startswith("s3://") and "{date}" in cluster.output_template


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"output_template.*must contain \{date\}"):
        NightlyConfig.build(input_template="a/{date}", output_template="out", corpus="c")
    with pytest.raises(ConfigError, match=r"output_template.*shared mount"):
        NightlyConfig.build(input_template="a/{date}", output_template="s3://b/{date}", corpus="c")
    with pytest.raises(ConfigError, match=r"job\.k_rerank"):
        NightlyConfig.build(
            input_template="a/{date}", output_template="o/{date}", corpus="c", job={"k_rerank": 0}
        )


@pytest.mark.parametrize("bad", ["2026-13-01", "20261126", "2026-11-26T00:00", "yesterday"])
def test_bad_dates_are_refused(bad):
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        parse_date(bad)


def test_work_folder_sits_beside_the_output_under_an_underscore():
    paths = NightlyPaths.for_output("/shared/out/dt=2026-11-26/")
    assert paths.output == Path("/shared/out/dt=2026-11-26")
    assert paths.work == Path("/shared/out/_nightly/dt=2026-11-26")
    assert paths.lock == Path("/shared/out/_nightly/dt=2026-11-26.lock")


# -- the commit protocol, with a plain-Python chunk runner ----------------------------------------------


class PlainRunner:
    """Stands in for run_job where only the commit protocol is under test: one output row per input row
    (query length / 100 as its top score), written as two files plus `_run_summary.json`. `crash_on`
    makes the n-th call die half way through writing, like a killed process."""

    def __init__(self, crash_on: int | None = None):
        self.inputs: list[str] = []
        self.crash_on = crash_on

    def __call__(self, config, *, input, corpus, output, index=None, run_id=None) -> dict:
        self.inputs.append(Path(input).name)
        table = pq.read_table(input)
        scores = [len(q) / 100 for q in table.column("query").to_pylist()]
        table = table.append_column("top_score", pa.array(scores, pa.float32()))
        table = table.append_column("n_kept", pa.array([1] * table.num_rows, pa.int32()))
        table = table.append_column("status", pa.array(["ok"] * table.num_rows))
        out = Path(output)
        out.mkdir(parents=True)
        half = table.num_rows // 2
        pq.write_table(table.slice(0, half), out / "a.parquet")
        if self.crash_on == len(self.inputs):
            raise RuntimeError("killed while writing")
        pq.write_table(table.slice(half), out / "b.parquet")
        summary = {"queries": table.num_rows, "ok": table.num_rows, "run_id": run_id, "reranker_model": "m"}
        (out / "_run_summary.json").write_text(json.dumps(summary))
        return summary


def write_corpus(root: Path, texts: list[str]) -> Path:
    corpus = root / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": [f"d{i}" for i in range(len(texts))], "text": texts}), corpus)
    return corpus


@pytest.fixture
def plain_files(tmp_path) -> str:
    """What the resume key reads, for the plain runner (which reads none of it): a model folder, the
    corpus and the index manifest. Returns the model folder."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bert"}')
    write_corpus(tmp_path, ["hail is covered", "floods are not"])
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "manifest.json").write_text('{"count": 2, "model": "bi-encoder"}\n')
    return str(model)


def test_plain_run_commits_once_and_a_rerun_is_a_noop(tmp_path, plain_files):
    write_query_log(tmp_path)
    config, runner = nightly_config(tmp_path, plain_files), PlainRunner()
    summary = run_nightly(config, DATE, runner=runner)
    out = tmp_path / "out" / f"dt={DATE}"
    assert runner.inputs == ["chunk-00000.parquet", "chunk-00001.parquet"]  # 6 + 5 rows
    assert summary["skipped"] is False and summary["queries"] == summary["rows"] == 11
    assert sorted(p.name for p in out.iterdir()) == [
        "_SUCCESS",
        "_manifest.json",
        "_report.md",
        "_report_kept.png",
        "_report_stages.png",
        "_report_status.png",
        "_report_top_score.png",
        "_resolved_config.json",
        *[f"part-{i:05d}.parquet" for i in range(4)],
    ]
    before = read_output(out)
    assert [r["query_id"] for r in before] == [f"q{i:02d}" for i in range(11)]
    marker = json.loads((out / SUCCESS).read_text())
    assert marker["chunks"] == 2 and marker["chunks_run"] == 2 and len(marker["config_hash"]) == 64
    assert marker["code_version"]["package"] and marker["model_hash"]
    assert not (tmp_path / "out" / "_nightly" / f"dt={DATE}").exists()  # work folder gone
    assert (
        marker["top_score_median"] is not None
        and f"run {summary['run_id']}" in (out / "_report.md").read_text()
    )
    trend = (tmp_path / "out" / "_nightly_trend.md").read_text()  # beside the dates, not inside one
    assert f"| {DATE} | 11 |" in trend and "1 committed date(s)" in trend

    again = run_nightly(config, DATE, runner=runner)
    assert again["skipped"] is True and again["run_id"] == summary["run_id"] and len(runner.inputs) == 2

    redone = run_nightly(config, DATE, runner=runner, overwrite=True)
    assert redone["skipped"] is False and redone["run_id"] != summary["run_id"] and len(runner.inputs) == 4
    assert read_output(out) == before  # the folder was swapped for an equal one
    assert json.loads((out / SUCCESS).read_text())["run_id"] == redone["run_id"]


def test_crashes_leave_nothing_visible_and_the_rerun_completes_without_redoing(tmp_path, plain_files):
    write_query_log(tmp_path)
    config = nightly_config(tmp_path, plain_files)
    out = tmp_path / "out" / f"dt={DATE}"
    work = tmp_path / "out" / "_nightly" / f"dt={DATE}"

    with pytest.raises(InjectedFailure):
        run_nightly(config, DATE, runner=PlainRunner(), fail_after_chunks=1)
    assert not out.exists() and (work / "chunks" / "chunk-00000").is_dir()

    killed = PlainRunner(crash_on=1)  # dies half way through chunk 1: a partial staging folder stays
    with pytest.raises(RuntimeError, match="killed"):
        run_nightly(config, DATE, runner=killed)
    assert killed.inputs == ["chunk-00001.parquet"] and not out.exists()
    assert (work / "staging" / "chunk-00001" / "a.parquet").is_file()

    finish = PlainRunner()
    summary = run_nightly(config, DATE, runner=finish)
    assert finish.inputs == ["chunk-00001.parquet"]  # chunk 0 was not redone
    assert summary["chunks_resumed"] == 1 and summary["chunks_run"] == 1
    clean_config = nightly_config(tmp_path, plain_files, out="clean")
    run_nightly(clean_config, DATE, runner=PlainRunner())
    assert read_output(out) == read_output(tmp_path / "clean" / f"dt={DATE}")


def test_changed_input_after_a_committed_chunk_starts_the_date_over(tmp_path, plain_files, caplog):
    folder = write_query_log(tmp_path)
    config = nightly_config(tmp_path, plain_files)
    with pytest.raises(InjectedFailure):
        run_nightly(config, DATE, runner=PlainRunner(), fail_after_chunks=1)
    pq.write_table(
        pa.table({"query_id": ["late"], "query": ["a late query"], "tenant": ["t0"]}), folder / "p2.parquet"
    )
    runner = PlainRunner()
    summary = run_nightly(config, DATE, runner=runner)  # a scheduled retry: no --overwrite
    assert runner.inputs == ["chunk-00000.parquet", "chunk-00001.parquet"]  # 12 rows: both redone
    assert summary["queries"] == 12 and summary["chunks_resumed"] == 0
    assert "the input files changed since the earlier run" in caplog.text
    assert "(1 committed chunk(s)) is discarded" in caplog.text


def test_changed_input_before_any_chunk_is_committed_is_planned_again(tmp_path, plain_files):
    folder = write_query_log(tmp_path)
    config = nightly_config(tmp_path, plain_files)
    with pytest.raises(RuntimeError, match="killed"):  # dies half way through chunk 0: nothing committed
        run_nightly(config, DATE, runner=PlainRunner(crash_on=1))
    pq.write_table(
        pa.table({"query_id": ["late"], "query": ["a late query"], "tenant": ["t0"]}), folder / "p2.parquet"
    )
    summary = run_nightly(config, DATE, runner=PlainRunner())
    assert summary["queries"] == 12 and summary["chunks_run"] == 2


def _resume_key(config: NightlyConfig, root: Path) -> dict:
    files = sorted(str(p) for p in (root / "logs" / f"dt={DATE}").glob("*.parquet"))
    return resume_key(config, files, None)


def test_the_resume_key_follows_content_and_leaves_out_placement(tmp_path, plain_files):
    write_query_log(tmp_path)
    config = nightly_config(tmp_path, plain_files)
    base = _resume_key(config, tmp_path)

    def changed(key: dict) -> list[str]:
        return [part for part in base if key[part] != base[part]]

    placed = nightly_config(  # where, how fast and how long: a retry may change these and resume
        tmp_path,
        plain_files,
        timeout_s=7200,
        resources={"rerank_actors": 4, "rerank_cpus": 2.0, "rerank_batch_rows": 8, "block_rows": 16},
        batching={"max_batch_tokens": 2048},
    )
    assert _resume_key(placed, tmp_path) == base
    fewer = nightly_config(tmp_path, plain_files, k_rerank=3)
    assert changed(_resume_key(fewer, tmp_path)) == ["config_hash"]
    on_cpu = nightly_config(tmp_path, plain_files, resources={"rerank_gpus": 0})  # fp32 where auto is fp16
    assert changed(_resume_key(on_cpu, tmp_path)) == ["config_hash"]

    # the corpus rebuilt in place: same path, same size, even the same modification time
    corpus = tmp_path / "corpus.parquet"
    before = corpus.stat()
    write_corpus(tmp_path, ["hail is excluded", "floods are not"])
    os.utime(corpus, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert corpus.stat().st_mtime_ns == before.st_mtime_ns
    assert changed(_resume_key(config, tmp_path)) == ["corpus"]
    base = _resume_key(config, tmp_path)

    model = Path(plain_files)
    (model / "threshold.json").write_text('{"value": 0.4}')
    assert changed(_resume_key(config, tmp_path)) == ["threshold.json"]
    base = _resume_key(config, tmp_path)
    (model / "threshold.json").write_text('{"value": 0.6}')
    assert changed(_resume_key(config, tmp_path)) == ["threshold.json"]
    (model / "fusion.json").write_text('{"weight": 0.5, "threshold": 0.6}')
    assert changed(_resume_key(config, tmp_path)) == ["threshold.json", "fusion.json"]
    base = _resume_key(config, tmp_path)
    (model / "fusion.json").write_text('{"weight": 0.7, "threshold": 0.6}')  # the same threshold
    assert changed(_resume_key(config, tmp_path)) == ["fusion.json"]

    base = _resume_key(config, tmp_path)
    (tmp_path / "index" / "manifest.json").write_text('{"count": 2, "model": "another bi-encoder"}\n')
    assert changed(_resume_key(config, tmp_path)) == ["index_manifest"]


def test_a_rebuilt_corpus_or_recalibrated_model_starts_over_and_placement_resumes(
    tmp_path, plain_files, caplog
):
    """A night that crashed after a chunk: its retry resumes with a longer timeout and other placement,
    and never mixes corpora or calibrations in one date: it starts over, naming what changed."""
    write_query_log(tmp_path)
    config = nightly_config(tmp_path, plain_files)
    with pytest.raises(InjectedFailure):
        run_nightly(config, DATE, runner=PlainRunner(), fail_after_chunks=1)

    write_corpus(tmp_path, ["hail is excluded", "floods are not"])  # rebuilt in place
    (Path(plain_files) / "fusion.json").write_text('{"weight": 0.7}')
    runner = PlainRunner()
    with pytest.raises(InjectedFailure):  # the retry starts over, and crashes after a chunk again
        run_nightly(config, DATE, runner=runner, fail_after_chunks=1)
    assert runner.inputs == ["chunk-00000.parquet"]  # chunk 0 scored again, not resumed
    assert "the model's fusion.json and the corpus file's content changed since" in caplog.text

    retry = nightly_config(tmp_path, plain_files, timeout_s=7200, resources={"rerank_actors": 2})
    summary = run_nightly(retry, DATE, runner=runner)
    assert runner.inputs == ["chunk-00000.parquet", "chunk-00001.parquet"]
    assert summary["chunks_resumed"] == 1


@pytest.mark.parametrize("exploded", [False, True])
def test_a_date_with_no_rows_commits_an_empty_part_with_the_output_schema(tmp_path, plain_files, exploded):
    """Readers infer the date's schema from its part files (Spark fails on a folder without one)."""
    folder = tmp_path / "logs" / f"dt={DATE}"
    folder.mkdir(parents=True)
    logged = pa.schema([("query_id", pa.string()), ("query", pa.string()), ("tenant", pa.string())])
    pq.write_table(logged.empty_table(), folder / "part-0.parquet")
    runner = PlainRunner()
    summary = run_nightly(nightly_config(tmp_path, plain_files, exploded=exploded), DATE, runner=runner)
    assert runner.inputs == [] and summary["rows"] == summary["queries"] == 0 and summary["chunks"] == 0
    out = tmp_path / "out" / f"dt={DATE}"
    table = pq.read_table(out)
    want = schema.exploded_output_schema(logged) if exploded else schema.output_schema(logged)
    assert table.num_rows == 0 and table.schema.equals(want)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest == {"files": [{"file": "part-00000.parquet", "chunk": None, "rows": 0}], "rows": 0}


def test_foreign_output_is_not_replaced_without_overwrite(tmp_path, plain_files):
    write_query_log(tmp_path)
    (tmp_path / "out" / f"dt={DATE}").mkdir(parents=True)
    with pytest.raises(InputError, match="no _SUCCESS"):
        run_nightly(nightly_config(tmp_path, plain_files), DATE, runner=PlainRunner())


def test_a_missing_partition_fails_loudly(tmp_path, plain_files):
    with pytest.raises(InputError, match="matches no Parquet file"):
        run_nightly(nightly_config(tmp_path, plain_files), DATE, runner=PlainRunner())


def test_a_chunk_that_loses_rows_is_not_committed(tmp_path, plain_files):
    write_query_log(tmp_path)

    def lossy(config, *, input, output, **kw):
        table = pq.read_table(input).slice(1)  # drops a row (run_job would have caught it itself)
        Path(output).mkdir(parents=True)
        pq.write_table(table, Path(output) / "a.parquet")
        (Path(output) / "_run_summary.json").write_text(json.dumps({"queries": table.num_rows}))
        return {}

    with pytest.raises(Exception, match="query rows missing"):
        run_nightly(nightly_config(tmp_path, plain_files), DATE, runner=lossy)
    assert not (tmp_path / "out" / f"dt={DATE}").exists()


# -- the real job on a local Ray ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for this module (2 CPUs, one declared GPU: rerank actors are placed by GPU resource
    and fall back to the CPU provider). Reused if the session already has one."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level=logging.WARNING)
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_data(tmp_path_factory, local_ray):
    from rerank_engine.job.index_build import build_index

    root = tmp_path_factory.mktemp("nightly")
    doc_ids = [f"doc-{i:02d}" for i in range(len(PASSAGES))]
    pq.write_table(pa.table({"doc_id": doc_ids, "text": PASSAGES}), root / "corpus.parquet")
    build_index(str(root / "corpus.parquet"), str(root / "index"))
    write_query_log(root)
    return root


def ray_config(root: Path, model: Path, out: str) -> NightlyConfig:
    # One block and one rerank batch per chunk (block_rows, rerank_batch_rows ≥ chunk_rows): the same
    # chunk is scored in the same batch in every run, so reruns agree to the bit.
    return nightly_config(
        root, str(model), out=out, precision="fp32", k_recall=8, k_rerank=3, threshold=0.0, timeout_s=600
    )


NOT_COMPARED = {"run_id", "n_padded_tokens"}  # one id per run; a diagnostic of batch composition


@pytest.mark.ray
@pytest.mark.slow
def test_nightly_twice_second_is_a_noop(ray_data, tiny_export):
    config = ray_config(ray_data, tiny_export, "out-twice")
    first = run_nightly(config, DATE)
    out = ray_data / "out-twice" / f"dt={DATE}"
    rows = read_output(out)
    assert [r["query_id"] for r in rows] == [f"q{i:02d}" for i in range(11)]
    assert "dt" not in rows[0]  # the dt=… folders in the paths do not become a column
    assert first["queries"] == 11 and first["errors"] == {"empty_query": 2} and first["chunks_run"] == 2
    assert (
        first["providers"] == ["CPUExecutionProvider"]
        and first["reranker_model"] == rows[0]["reranker_model"]
    )
    assert all(r["status"] == "ok" and r["n_kept"] == 3 for r in rows if r["query"].strip())

    # The second run goes through the CLI; a committed date returns before Ray is touched.
    cfg = ray_data / "nightly.yaml"
    cfg.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    done = subprocess.run(
        [sys.executable, "-m", "jobs.nightly", "--config", str(cfg), "--date", DATE, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    second = json.loads(done.stdout)
    assert second["skipped"] is True and second["run_id"] == first["run_id"]
    assert read_output(out) == rows


@pytest.mark.ray
@pytest.mark.slow
def test_crash_after_one_chunk_then_rerun_equals_a_clean_run(ray_data, tiny_export):
    crashed = ray_config(ray_data, tiny_export, "out-crashed")
    with pytest.raises(InjectedFailure):
        run_nightly(crashed, DATE, fail_after_chunks=1)
    assert not (ray_data / "out-crashed" / f"dt={DATE}").exists()  # nothing visible
    resumed = run_nightly(crashed, DATE)
    assert resumed["chunks_resumed"] == 1 and resumed["chunks_run"] == 1

    clean = ray_config(ray_data, tiny_export, "out-clean")
    run_nightly(clean, DATE)
    got = read_output(ray_data / "out-crashed" / f"dt={DATE}")
    want = read_output(ray_data / "out-clean" / f"dt={DATE}")
    assert len(got) == len(want) == 11
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if k not in NOT_COMPARED | {"results"}} == {
            k: v for k, v in w.items() if k not in NOT_COMPARED | {"results"}
        }
        ranked = ("doc_id", "rank", "recall_rank")
        assert [[r[k] for k in ranked] for r in g["results"]] == [
            [r[k] for k in ranked] for r in w["results"]
        ]
        for field in ("score", "logit", "recall_score"):
            np.testing.assert_allclose(
                [r[field] for r in g["results"]], [r[field] for r in w["results"]], rtol=0, atol=1e-6
            )


@pytest.mark.ray
@pytest.mark.slow
def test_incremental_second_date_reuses_the_first_dates_scores(ray_data, tiny_export):
    """The same queries logged on two dates: the second scores nothing and gives the first's results."""
    next_day = "2026-11-27"
    write_query_log(ray_data, next_day)
    config = nightly_config(
        ray_data,
        str(tiny_export),
        out="out-incremental",
        precision="auto",  # the cache namespace names what auto runs: fp32 on a cluster without GPUs
        resources={"rerank_gpus": 0},
        k_recall=8,
        k_rerank=3,
        threshold=0.0,
        timeout_s=600,
        score_cache=str(ray_data / "score-cache"),
    )
    first = run_nightly(config, DATE)
    assert first["pairs"] == 9 * 8 and first["pairs_cached"] == 0 and first["pairs_scored"] == 72
    second = run_nightly(config, next_day)
    assert second["pairs_cached"] == 72 and second["pairs_scored"] == 0
    day1 = read_output(ray_data / "out-incremental" / f"dt={DATE}")
    day2 = read_output(ray_data / "out-incremental" / f"dt={next_day}")
    assert [r["n_cached"] for r in day2 if r["query"].strip()] == [8] * 9
    assert [r["results"] for r in day2] == [r["results"] for r in day1]


@pytest.mark.ray
@pytest.mark.slow
def test_repeated_queries_are_scored_once_and_every_row_gets_its_results(ray_data, tiny_export, tmp_path):
    """The job with query de-duplication equals the job without, row for row, on a log with repeats."""
    from rerank_engine.job.driver import run_job

    queries = [*QUERY_LOG, QUERY_LOG[-1].upper(), "  " + QUERY_LOG[0] + " ", "", QUERY_LOG[3]]  # 15 rows
    log_file = tmp_path / "log.parquet"
    pq.write_table(
        pa.table({"query_id": [f"r{i:02d}" for i in range(len(queries))], "query": queries}), log_file
    )
    job = ray_config(ray_data, tiny_export, "unused").job
    runs = {}
    for dedupe in (True, False):
        summary = run_job(
            job.model_copy(update={"dedupe_queries": dedupe}),
            input=str(log_file),
            corpus=str(ray_data / "corpus.parquet"),
            index=str(ray_data / "index"),
            output=str(tmp_path / f"out-{dedupe}"),
        )
        runs[dedupe] = (summary, read_output(tmp_path / f"out-{dedupe}"))
    (once, rows), (plain, want) = runs[True], runs[False]
    assert once["queries"] == plain["queries"] == 15 and once["distinct_queries"] == 10
    assert once["pairs"] == plain["pairs"] == 12 * 8 and once["pairs_scored"] == 9 * 8
    assert [r["query"] for r in rows] == queries and once["errors"] == {"empty_query": 3}
    for g, w in zip(rows, want, strict=True):
        assert {k: v for k, v in g.items() if k not in NOT_COMPARED | {"results"}} == {
            k: v for k, v in w.items() if k not in NOT_COMPARED | {"results"}
        }
        assert [r["doc_id"] for r in g["results"]] == [r["doc_id"] for r in w["results"]]
        np.testing.assert_allclose(
            [r["score"] for r in g["results"]], [r["score"] for r in w["results"]], rtol=0, atol=1e-5
        )


# -- cluster.yaml and KubeRay manifests -----------------------------------------------------------------


def _cluster_job_config():
    return load_nightly_config(REPO / "jobs/configs/nightly_cluster.yaml").job


def test_cluster_yaml_validates_against_rays_schema_and_fits_the_pipeline():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    jsonschema.validate(cluster, schema)

    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # no tasks or actors on the head
    workers = {name: t for name, t in types.items() if name != cluster["head_node_type"]}
    # The pipeline asks for CPU (every stage) and GPU (rerank, num_gpus=1): no other resource names.
    assert {r for t in types.values() for r in t["resources"]} <= {"CPU", "GPU"}
    gpu = {n: t for n, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    cpu = {
        n: t for n, t in workers.items() if t["resources"].get("GPU", 0) == 0 and t["resources"]["CPU"] > 0
    }
    assert gpu and cpu

    r = _cluster_job_config().resources
    assert r.rerank_gpus in ("auto", 1)  # the rerank stage asks for one GPU per actor
    assert all(t["resources"]["CPU"] >= r.rerank_cpus for t in gpu.values())  # CPU + GPU on one node
    assert sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu.values()) >= r.rerank_actors
    assert all(t["resources"]["CPU"] >= r.recall_cpus for t in cpu.values())
    actor_cpus = (
        r.recall_actors * r.recall_cpus
        + r.tokenize_actors * r.tokenize_cpus
        + r.rerank_actors * r.rerank_cpus
    )
    assert sum(t["max_workers"] * t["resources"]["CPU"] for t in workers.values()) > actor_cpus
    assert cluster["idle_timeout_minutes"] > 0
    assert any("pip install" in c for c in cluster["setup_commands"])


def _k8s(name: str) -> dict:
    return yaml.safe_load((REPO / "k8s" / name).read_text())


def _check_rayjob_spec(spec: dict):
    import ray

    assert spec["entrypoint"].startswith("python -m jobs.nightly --config ")
    config_path = spec["entrypoint"].split("--config ")[1].split()[0]
    assert (REPO / config_path).is_file()
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["template"]["spec"]["containers"]
    groups = cluster["workerGroupSpecs"]
    assert {"groupName", "replicas", "minReplicas", "maxReplicas", "template"} <= set(groups[0])

    def limits(group):
        return group["template"]["spec"]["containers"][0]["resources"]["limits"]

    gpu = [g for g in groups if int(limits(g).get("nvidia.com/gpu", 0)) >= 1]
    cpu = [g for g in groups if "nvidia.com/gpu" not in limits(g)]
    assert gpu and cpu
    assert sum(g["maxReplicas"] * int(limits(g)["nvidia.com/gpu"]) for g in gpu) >= (
        _cluster_job_config().resources.rerank_actors
    )


def test_kuberay_rayjob():
    job = _k8s("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    _check_rayjob_spec(job["spec"])


def test_kuberay_raycronjob():
    cron = _k8s("raycronjob.yaml")
    assert cron["apiVersion"] == "ray.io/v1" and cron["kind"] == "RayCronJob"
    fields = cron["spec"]["schedule"].split()
    assert len(fields) == 5 and all(f.replace("*", "0").replace(",", "").isdigit() for f in fields)
    _check_rayjob_spec(cron["spec"]["jobTemplate"])
    assert cron["spec"]["jobTemplate"]["entrypoint"] == _k8s("rayjob.yaml")["spec"]["entrypoint"]
