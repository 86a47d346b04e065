"""The batch job: check inputs, resolve model and threshold, run the pipeline on Ray, verify that every
input query is in the output exactly once, commit, and write the run summary.

    summary = run_job(config, input="q.parquet", corpus="corpus.parquet", index="idx/", output="out/")
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rerank_engine import schema
from rerank_engine.config import JobConfig
from rerank_engine.errors import ConfigError, InputError, JobTimeoutError
from rerank_engine.files import check_output_apart, resolve_files
from rerank_engine.job.exactly_once import InputIds
from rerank_engine.job.output_scan import scan_output, summarize
from rerank_engine.job.ray_session import ensure_ray
from rerank_engine.job.run_report import QueryFigures, write_report
from rerank_engine.quality.score_policy import ScorePolicy
from rerank_engine.recall.checks import check_corpus, check_index

log = logging.getLogger(__name__)

STAGING = "_staging-"  # <output>/_staging-<run id>: the run's files until they are verified
REPLACED = "_replaced-"  # <output>/_replaced-<run id>: an earlier output, set aside while it is replaced


def _is_work(path: Path) -> bool:
    return path.name.startswith((STAGING, REPLACED))


# -- inputs ---------------------------------------------------------------------------------------------


def inspect_query_log(path: str, config: JobConfig):
    """Fail fast on whole-file problems. Returns (files, filesystem, schema, n_rows, logged_mode)."""
    files, filesystem = resolve_files(path)
    cols = config.columns
    first_schema, n_rows, logged = None, 0, False
    for f in files:
        try:
            meta = pq.ParquetFile(filesystem.open_input_file(f) if filesystem else f)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{f} is not a readable Parquet file: {exc}") from None
        file_schema = meta.schema_arrow
        logged = schema.check_query_schema(
            file_schema,
            schema.QueryColumns(cols.query_id, cols.query, cols.candidates),
            f,
            exploded=config.exploded,
        )
        if first_schema is None:
            first_schema = file_schema
        elif not file_schema.equals(first_schema):
            raise InputError(
                f"{f} has columns {_columns(file_schema)} but {files[0]} has {_columns(first_schema)}; "
                "all files of one input must share a schema"
            )
        schema.check_file_utf8(meta, [cols.query_id, cols.candidates], f)  # ids, candidate ids: UTF-8
        n_rows += meta.metadata.num_rows
    return files, filesystem, first_schema, n_rows, logged


def job_inputs(config: JobConfig, *, input: str, corpus: str, index: str | None) -> dict:
    """What a job reads, by role, for `check_output_apart`: no output may touch these."""
    return {
        "query log": input,
        "corpus": corpus,
        "index": index,
        "model": config.model if Path(config.model).exists() else None,
        "score cache": config.score_cache,
    }


def check_model_source(model: str) -> None:
    """A model given as a local path must exist (a hub id such as `org/name` is resolved later)."""
    if Path(model).exists():
        return
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ConfigError(
            f"model: folder {model} does not exist (expected an export folder, a Hugging Face model "
            "folder or a hub id)"
        )


def _columns(s: pa.Schema) -> str:
    return "[" + ", ".join(f"{f.name}: {f.type}" for f in s) + "]"


# -- running --------------------------------------------------------------------------------------------


@contextmanager
def deadline(seconds: float, doing: Callable[[], str] = lambda: "running"):
    """Fail instead of hanging (a stalled Ray pipeline shows no error of its own): JobTimeoutError after
    `seconds`, naming what the job was `doing()` then."""

    def _raise(signum, frame):
        raise JobTimeoutError(
            f"the job ran past its timeout of {seconds:g} s (config key timeout_s) while {doing()}"
        )

    try:
        previous = signal.signal(signal.SIGALRM, _raise)
    except ValueError:  # not the main thread: no alarm
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True)
class Checked:
    """What `preflight` found: the query log's files and rows, the corpus and index checks, the input
    ids (for the exactly-once check) and the output folder, made ready."""

    files: list[str]
    filesystem: object
    input_schema: pa.Schema
    n_rows: int
    logged: bool
    corpus_check: object  # inputs.CorpusCheck
    index_manifest: dict | None
    expected: InputIds
    n_duplicated: int
    out: Path


def preflight(
    config: JobConfig, *, input: str, corpus: str, output: str, index: str | None, overwrite: bool
) -> Checked:
    """Whole-file and config problems, before any model is loaded and before anything is written; then
    the output folder made ready (emptied with `overwrite`, a killed run's staging removed) and the
    input's query ids read."""
    cols = config.columns
    files, filesystem, input_schema, n_rows, logged = inspect_query_log(input, config)
    check_output_apart({"output": output}, job_inputs(config, input=input, corpus=corpus, index=index))
    check_model_source(config.model)
    if not Path(corpus).is_file():
        raise InputError(f"corpus {corpus} does not exist (expected a Parquet file with doc_id, text)")
    corpus_check = check_corpus(corpus, cols)  # its columns, and doc ids unique
    if not logged and index is None:
        raise ConfigError(f"--index is required: {files[0]} has no {cols.candidates!r} column")
    index_manifest = None
    if not logged:
        from rerank_engine.recall.index import RecallIndex

        index_manifest = RecallIndex.read_manifest(
            index, nprobe=config.recall.nprobe, ef_search=config.recall.ef_search
        )
        check_index(index, index_manifest, corpus, corpus_check, config.bi_encoder)
    out = Path(output)
    if out.exists() and not overwrite and any(not _is_work(p) for p in out.iterdir()):
        raise InputError(f"output {out} is not empty; choose another folder or pass --overwrite")
    # with overwrite, what is there stays until the new output is verified: `commit` replaces it
    for stale in sorted(out.glob(f"{STAGING}*")):  # what a killed run of this output left (never committed)
        log.warning("removing %s, left unfinished by an earlier run", stale)
        shutil.rmtree(stale, ignore_errors=True)
    expected = InputIds.read(files, filesystem, cols.query_id)
    n_duplicated, duplicated_examples = expected.repeated()
    if n_duplicated:  # kept: each row is reranked and written, and counted as often as it occurs
        log.warning(
            "%d query ids occur more than once in %s (e.g. %s); every row is kept",
            n_duplicated,
            input,
            duplicated_examples,
        )
    return Checked(
        files,
        filesystem,
        input_schema,
        n_rows,
        logged,
        corpus_check,
        index_manifest,
        expected,
        n_duplicated,
        out,
    )


def commit(staging: Path, out: Path, written: list[str]) -> None:
    """The verified files move out of staging into the output folder, then staging goes. What the
    folder held before (an earlier output, replaced with `overwrite`) is set aside first and removed
    last, so a run that fails before this point leaves the earlier output as it was. The run files
    (`_run_summary.json` last) are written after this: an output without its summary is incomplete."""
    earlier = [p for p in out.iterdir() if not _is_work(p)]
    if earlier:
        aside = out / (REPLACED + staging.name.removeprefix(STAGING))
        aside.mkdir()
        for p in earlier:
            p.rename(aside / p.name)
    for f in written:
        shutil.move(f, out / Path(f).name)
    shutil.rmtree(staging)
    for aside in sorted(out.glob(f"{REPLACED}*")):  # this run's, and any a killed commit left
        shutil.rmtree(aside)


@dataclass(frozen=True)
class Prepared:
    """What `prepare` resolved once Ray is up: the config as served (actors fitted to the nodes, the
    tokenizer's served max_length), the score policy, the pipeline's inputs and the score cache."""

    config: JobConfig
    policy: ScorePolicy
    inputs: object  # pipeline.PipelineInputs
    cache: object | None  # score_cache.ScoreCache
    gpus: int


def prepare(config: JobConfig, c: Checked, *, corpus: str, index: str | None, run_id: str) -> Prepared:
    """The export (on this node: for its manifest), the actors' CPU shares fitted to the nodes, the score
    policy and served tokenizer settings, and the score cache's namespace."""
    from rerank_engine.job.pipeline import PipelineInputs, fit_to_cluster, node_cpus, rerank_gpus
    from rerank_engine.job.score_cache import CacheRef, ScoreCache, namespace
    from rerank_engine.serving.exporting import needed_precisions, resolve_export
    from rerank_engine.serving.manifest import read_manifest
    from rerank_engine.serving.tokenization import check_long_passages

    gpus = rerank_gpus(config)
    precisions = tuple(needed_precisions(config.precision, gpu=bool(gpus)))
    manifest = read_manifest(resolve_export(config.model, precisions))
    recall_model, shard_bytes = None, ()
    if not c.logged:
        from rerank_engine.recall.index import RecallIndex

        recall_model = str(c.index_manifest.get("model", "unknown"))
        shard_bytes = tuple(
            (Path(index) / shard["path"] / RecallIndex.INDEX_FILE).stat().st_size
            for shard in c.index_manifest.get("shard_files", [])
        )
    shards = len(shard_bytes) if config.recall.shard_stages and len(shard_bytes) > 1 else 0
    nodes = node_cpus()
    resources, scale = fit_to_cluster(config.resources, nodes, logged=c.logged, shards=shards)
    if scale < 1.0:
        log.info("actor CPU shares scaled by %.2f to fit nodes of %s CPUs", scale, sorted(nodes))
        config = config.model_copy(update={"resources": resources})
    policy = ScorePolicy.for_job(config, manifest.model_id, recall_model)  # score, threshold, max_length
    config = policy.serve(config)
    check_long_passages(config.tokenizer, manifest.prompt, config.model)  # before any actor starts
    config = config.model_copy(
        update={"tokenizer": config.tokenizer.served_by(manifest.max_length, config.model)}
    )
    cache = cache_ref = None
    if config.score_cache:
        # exclude_none (and scoring_dump's truncate): an unset instruction, and truncated long passages,
        # leave the namespaces of caches written before those keys existed
        tokenizer = config.tokenizer.scoring_dump(exclude_none=True)
        precision = precisions[0]  # the variant the rerank actors score ("auto" resolved)
        cache = ScoreCache(config.score_cache, namespace(manifest.model_id, precision, tokenizer))
        cache_ref = CacheRef(config.score_cache, cache.dir.name, precision)
    inputs = PipelineInputs(
        files=c.files,
        n_rows=c.n_rows,
        logged=c.logged,
        corpus=str(corpus),
        index_dir=index,
        model_source=config.model,
        precisions=precisions,
        policy=policy,
        run_id=run_id,
        filesystem=c.filesystem,
        cache=cache_ref,
        index_shard_bytes=shard_bytes if shards else (),
    )
    return Prepared(config, policy, inputs, cache, gpus)


@dataclass
class Scored:
    """What `score_and_write` leaves besides the files: the distinct queries' plan and results (None
    where every row was scored as it is)."""

    distinct: object | None = None  # dedupe.DistinctPlan
    results: pa.Table | None = None


def score_and_write(config: JobConfig, inp, staging: Path, doing: list[str]) -> Scored:
    """Recall, rerank and write every input row into `staging`: each distinct query once, then fanned
    out to its rows (`dedupe`), or, where nothing repeats or `dedupe_queries` is off, every row as it is.
    `doing[0]` says what runs, for the timeout's message."""
    import ray

    from rerank_engine.job.dedupe import plan_distinct
    from rerank_engine.job.pipeline import build_fanout, build_pipeline, write_output

    distinct = key = None
    if config.dedupe_queries:
        key = query_key(inp, config.bi_encoder)
        distinct = plan_distinct(
            inp.files, inp.filesystem, config.columns, inp.logged, staging / "_distinct", key
        )
    if distinct is None:
        doing[0] = f"scoring and writing the {inp.n_rows} input rows"
        write_output(build_pipeline(config, inp), config, staging)
        return Scored()
    doing[0] = f"scoring the {len(distinct.keys)} distinct queries"
    only_distinct = dataclasses.replace(
        inp, files=[distinct.path], n_rows=len(distinct.keys), filesystem=None
    )
    results = pa.concat_tables(ray.get(build_pipeline(config, only_distinct).to_arrow_refs()))
    doing[0] = f"fanning the results out to the {inp.n_rows} input rows and writing them"
    write_output(build_fanout(config, inp, results, distinct.keys, key), config, staging)
    return Scored(distinct, results)


def query_key(inp, bi_encoder: str | None):
    """Which query texts are one query to this run: the cross-encoder's tokenizer, and where recall runs
    the bi-encoder's, cannot tell them apart (`serving/query_identity.py`)."""
    from transformers import AutoTokenizer

    from rerank_engine.recall.index import bundled_minilm_dir
    from rerank_engine.serving.exporting import resolve_export
    from rerank_engine.serving.query_identity import QueryKey, QueryNormaliser

    folders = [resolve_export(inp.model_source, inp.precisions)]
    if not inp.logged:
        folders.append(Path(bi_encoder) if bi_encoder else bundled_minilm_dir())
    return QueryKey(
        [QueryNormaliser.of(AutoTokenizer.from_pretrained(str(f), use_fast=True)) for f in folders]
    )


def run_job(
    config: JobConfig,
    *,
    input: str,
    corpus: str,
    output: str,
    index: str | None = None,
    run_id: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Preflight, prepare, score and write into staging, verify exactly-once, commit, summarize."""
    started = time.perf_counter()
    run_id = run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    c = preflight(config, input=input, corpus=corpus, output=output, index=index, overwrite=overwrite)
    staging = c.out / f"{STAGING}{run_id}"
    if c.n_rows == 0:  # nothing to rerank: an empty output with the output schema, and no model started
        staging.mkdir(parents=True)
        empty = staging / "part-00000.parquet"
        form = schema.exploded_output_schema if config.exploded else schema.output_schema
        pq.write_table(form(c.input_schema).empty_table(), empty)
        commit(staging, c.out, [str(empty)])
        summary = summarize(None, config, pipeline_s=0.0, wall_s=time.perf_counter() - started)
        summary.update(_about(c, run_id=run_id, input=input))
        _write_run_files(
            c.out, summary, config, QueryFigures.of(None, config.columns.query_id, config.exploded)
        )
        return summary

    from rerank_engine.job.watch import running_operators, watch_executions

    checked = time.perf_counter()
    ray = ensure_ray()
    p = prepare(config, c, corpus=corpus, index=index, run_id=run_id)
    pipeline_started = time.perf_counter()
    step = ["planning the distinct queries"]  # what the job is doing, for the timeout's message

    def doing() -> str:
        ops = running_operators()
        return step[0] + (f"; Ray Data operators not finished: {', '.join(ops)}" if ops else "")

    watch_executions()
    try:  # a timeout, a failed stage or check, Ctrl-C: the unverified output goes with the error
        with deadline(p.config.timeout_s, doing):
            scored = score_and_write(p.config, p.inputs, staging, step)
        pipeline_s = time.perf_counter() - pipeline_started
        written = sorted(str(f) for f in staging.glob("*.parquet"))
        counts, figures = scan_output(written, p.config, c.expected)  # exactly once, the summary's figures
        verified = time.perf_counter()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    commit(staging, c.out, written)
    committed = time.perf_counter()  # the end of the last stage and of the wall time alike
    summary = summarize(counts, p.config, pipeline_s=pipeline_s, wall_s=committed - started)
    if p.cache is not None:
        summary["score_cache_pairs"] = p.cache.compact(run_id)
    summary.update(_scored_counts(scored, summary["queries"]))
    summary.update(
        _about(c, run_id=run_id, input=input),
        **p.policy.summary(),  # score_kind, threshold, fusion and where each came from, the models
        max_length=p.config.tokenizer.max_length,
        long_passages=p.config.tokenizer.long_passages,
        stride=p.config.tokenizer.stride,
        duplicate_query_ids=c.n_duplicated,
        recall_shard_stages=len(p.inputs.index_shard_bytes),
        ray_gpus_for_rerank=p.gpus,
        ray_version=ray.__version__,
        driver_peak_rss_mb=driver_peak_rss_mb(),
        top_score_median=figures.median_top_score(),
        stage_s={
            "input checks": round(checked - started, 2),
            "Ray, export, model": round(pipeline_started - checked, 2),
            "pipeline": round(pipeline_s, 2),
            "read back, verify": round(verified - pipeline_started - pipeline_s, 2),
            "commit": round(committed - verified, 2),
        },
    )
    _write_run_files(c.out, summary, p.config, figures)
    from rerank_engine.job import ray_metrics

    ray_metrics.record(summary)
    return summary


def _about(c: Checked, *, run_id: str, input: str) -> dict:
    """The summary's lines about the run and its inputs."""
    return {
        "run_id": run_id,
        "input": input,
        "input_files": len(c.files),  # Parquet files read (what engines leave beside them skipped)
        "output": str(c.out),
        "mode": "logged_candidates" if c.logged else "recall",
        "corpus_duplicate_rows": c.corpus_check.duplicate_rows,  # same doc id and text: one document
    }


def _scored_counts(scored: Scored, queries: int) -> dict:
    """Distinct queries, and where they were scored once per query, the pairs and windows scored then
    (the output's per-row counts would count each repeat again)."""
    if scored.distinct is None:
        return {"distinct_queries": queries}

    def total(column: str) -> int:
        return int(pa.compute.sum(scored.results.column(column)).as_py() or 0)

    return {
        "distinct_queries": len(scored.distinct.keys),
        "pairs_scored": total("n_candidates") - total("n_cached"),
        "windows_scored": total("windows_scored"),
    }


def _write_run_files(out: Path, summary: dict, config: JobConfig, figures) -> None:
    """`_run_summary.json`, `_resolved_config.json` and the report beside the output files."""
    (out / "_resolved_config.json").write_text(config.model_dump_json(indent=2) + "\n")
    write_report(out, figures, summary)
    (out / "_run_summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")  # last


def driver_peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (the driver's; Ray's workers are apart), in MB."""
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes on macOS, else KiB
