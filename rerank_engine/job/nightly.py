"""Nightly operation: one date partition of the query log in, one committed output folder out.

    config = load_nightly_config("jobs/configs/nightly_local.yaml")
    summary = run_nightly(config, "2026-11-26")          # date=None: yesterday (UTC)

The date's rows are cut into chunks of `chunk_rows`; each chunk runs through `run_job` (which checks
its own chunk exactly once) and is committed by an atomic rename. When every chunk is committed, the
output folder is assembled beside it with `_manifest.json` and `_SUCCESS`, checked again against every
input query id, and renamed into place in one step. For an output `<root>/dt=D`:

    <root>/_nightly/dt=D.lock          one run per date at a time (flock, released when the process dies)
    <root>/_nightly/dt=D/plan/         plan.json (resume key, chunk list) + the chunk inputs
    <root>/_nightly/dt=D/staging/<c>/  run_job writes chunk <c> here; a killed run leaves it half written
    <root>/_nightly/dt=D/chunks/<c>/   chunk <c> committed: its staging folder renamed
    <root>/_nightly/dt=D/final-<run>/  part files (hard links to the chunks), manifest, _SUCCESS last
    <root>/dt=D/                       that folder renamed into place: readers see all of it or nothing

The work folder starts with "_", so readers that skip such paths (pyarrow datasets, Spark, Hive) never
list it. A rerun resumes: committed chunks are kept when what decides the output (`resume_key`: the
config less its placement keys, the model's weights and calibration files, the corpus's and the input's
bytes, the index manifest) is what they were made with, anything else in the work folder is redone; on
a changed key the date starts over, with a warning naming what changed (resuming would mix two outputs
in one date). A committed date is a no-op unless `overwrite`, which recomputes the date from scratch and
swaps the folder (two renames).

Output must be a path every node can write (local disk for one machine, a shared mount on a cluster):
`run_job` writes with local file APIs and the commit relies on rename. Input may be a pyarrow URI.
Light module: imports no ray (run_job does, when a chunk runs).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from pydantic import Field, field_validator

from rerank_engine import schema
from rerank_engine.config import JobConfig, _Frozen, apply_overrides, read_yaml_mapping
from rerank_engine.errors import ConfigError, InputError, RerankEngineError
from rerank_engine.files import check_output_apart
from rerank_engine.job.driver import inspect_query_log, job_inputs, run_job
from rerank_engine.job.exactly_once import InputIds
from rerank_engine.job.run_report import QueryFigures, write_report, write_trend
from rerank_engine.serving.hashing import FUSION_FILE, THRESHOLD_FILE, content_hash, file_hash

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"
WORK_DIR = "_nightly"
DATE_FIELD = "{date}"


class InjectedFailure(RerankEngineError):
    """Raised on purpose by `fail_after_chunks` to test that a crashed run is completed by its rerun."""


class NightlyConfig(_Frozen):
    """Where a date's query log is and where its output goes; `job` is a normal JobConfig."""

    input_template: str = Field(description="query log of one date, e.g. s3://bucket/logs/dt={date}/")
    output_template: str = Field(description="output folder of one date, e.g. /shared/out/dt={date}")
    corpus: str
    index: str | None = None  # None: logged-candidates mode (the input has a candidates column)
    chunk_rows: int = Field(100_000, ge=1, description="rows per chunk: the unit of commit and resume")
    job: JobConfig = JobConfig()

    @field_validator("input_template", "output_template")
    @classmethod
    def _has_date(cls, value: str) -> str:
        if DATE_FIELD not in value:
            raise ValueError(f"must contain {DATE_FIELD}")
        return value

    @field_validator("output_template")
    @classmethod
    def _local(cls, value: str) -> str:
        if "://" in value:
            raise ValueError(
                "must be a path every node can write (local disk or a shared mount such as /shared): "
                "the commit renames folders, which object stores cannot do atomically"
            )
        return value


def load_nightly_config(path: str | Path, overrides: dict | None = None) -> NightlyConfig:
    """YAML file + dotted overrides like {"job.k_rerank": 3}. `job:` may be a mapping or the path of a
    job YAML (jobs/configs/cluster.yaml), read relative to the working directory."""
    values = read_yaml_mapping(path)
    if isinstance(values.get("job"), str):
        values["job"] = read_yaml_mapping(values["job"])
    return NightlyConfig.build(**apply_overrides(values, overrides))


# -- dates, paths, identities ---------------------------------------------------------------------------


def yesterday_utc() -> str:
    return (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()


def parse_date(value: str) -> str:
    try:
        parsed = dt.date.fromisoformat(value) if len(value) == 10 else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise ConfigError(f"date {value!r} is not a calendar date in the form YYYY-MM-DD")
    return parsed.isoformat()


@dataclass(frozen=True)
class NightlyPaths:
    output: Path
    work: Path
    lock: Path

    @classmethod
    def for_output(cls, output: str) -> NightlyPaths:
        out = Path(output.rstrip("/"))
        work_root = out.parent / WORK_DIR
        return cls(output=out, work=work_root / out.name, lock=work_root / f"{out.name}.lock")

    @property
    def plan(self) -> Path:
        return self.work / "plan"

    def staging(self, chunk: str) -> Path:
        return self.work / "staging" / chunk

    def committed(self, chunk: str) -> Path:
        return self.work / "chunks" / chunk


# Job keys that decide where, how fast and how long the work runs, not what it computes: left out of the
# resume key, so a retry with a longer timeout (after JobTimeoutError) or smaller batches (after running
# out of memory) keeps the committed chunks. A pair's logit depends only on the model, the precision, the
# tokenizer settings and the pair (the score cache's rule), so batch sizes, actor counts, CPU shares and
# threads change none of it. resources.rerank_gpus stays: it decides CPU or CUDA, hence what precision
# "auto" scores in. Keys added later stay in the key until listed here.
PLACEMENT_KEYS = {
    "timeout_s": True,
    "batching": True,
    "resources": dict.fromkeys(
        (
            "recall_actors",
            "recall_cpus",
            "recall_batch_rows",
            "shard_actors",
            "shard_cpus",
            "tokenize_actors",
            "tokenize_cpus",
            "rerank_actors",
            "rerank_cpus",
            "rerank_batch_rows",
            "rerank_threads",
            "io_cpus",
            "fit_to_nodes",
            "block_rows",
            "fanout_block_rows",
        ),
        True,
    ),
}

# The parts of the resume key, and what each is in the error naming those that changed.
KEY_PARTS = {
    "config_hash": "the config (placement keys aside)",
    "model_hash": "the reranker's weights",
    THRESHOLD_FILE: f"the model's {THRESHOLD_FILE}",
    FUSION_FILE: f"the model's {FUSION_FILE}",
    "corpus": "the corpus file's content",
    "index_manifest": "the index's manifest.json",
    "input": "the input files",
}


def config_hash(config: NightlyConfig) -> str:
    """sha256 of the resolved config less its placement keys (`PLACEMENT_KEYS`)."""
    blob = json.dumps(config.model_dump(mode="json", exclude={"job": PLACEMENT_KEYS}), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def model_hash(model: str) -> str:
    """Content hash of the reranker's weights: from an export's manifest, else from the model folder."""
    from rerank_engine.serving.manifest import MANIFEST_NAME, read_manifest

    if (Path(model) / MANIFEST_NAME).is_file():
        return str(read_manifest(model).source["content_hash"])
    from rerank_engine.serving.export_cache import resolve_source

    return content_hash(resolve_source(model)[0])


def file_fingerprint(path: str, filesystem=None) -> list:
    """[path, sha256] of a file, local or on `filesystem`: the same bytes whatever their modification
    time (a file rebuilt in place differs, one touched or copied unchanged does not)."""
    if filesystem is None:
        return [os.path.abspath(path), file_hash(path)]
    return [path, file_hash(path, filesystem=filesystem)]


def resume_key(config: NightlyConfig, files: list[str], filesystem) -> dict:
    """What decides a date's output (`KEY_PARTS`): committed chunks are kept only where it is unchanged.
    The calibration files are read where the job reads them, beside `job.model`."""
    from rerank_engine.recall.index import RecallIndex

    model = Path(config.job.model)
    calibration = {
        name: file_hash(model / name) if (model / name).is_file() else None
        for name in (THRESHOLD_FILE, FUSION_FILE)
    }
    index = None if config.index is None else Path(config.index) / RecallIndex.MANIFEST_FILE
    return {
        "config_hash": config_hash(config),
        "model_hash": model_hash(config.job.model),
        **calibration,
        "corpus": file_fingerprint(config.corpus),
        "index_manifest": None if index is None else file_hash(index),
        "input": [file_fingerprint(f, filesystem) for f in files],
    }


def code_version() -> dict:
    """The package version, and the git commit where the code runs from a checkout (absent under
    `ray job submit`, whose working-dir upload has no .git)."""
    from rerank_engine import __version__

    commit = None
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if done.returncode == 0 and done.stdout.strip():
            commit = done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package": __version__, "git_commit": commit}


@contextmanager
def exclusive(lock: Path):
    """One run per date: a second one fails at once instead of interleaving commits."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RerankEngineError(f"another nightly run of this date holds {lock}") from None
        yield


# -- the run --------------------------------------------------------------------------------------------


def run_nightly(
    config: NightlyConfig,
    date: str | None = None,
    *,
    overwrite: bool = False,
    fail_after_chunks: int | None = None,
    runner: Callable[..., dict] = run_job,
) -> dict:
    """Rerank one date and commit it exactly once. Returns the committed summary (`_SUCCESS`) with
    `skipped` = whether the date was already committed. `runner` is `run_job`; tests of the commit
    protocol pass a plain-Python runner with the same signature."""
    started = time.perf_counter()
    date = parse_date(date) if date else yesterday_utc()
    source = config.input_template.replace(DATE_FIELD, date)
    paths = NightlyPaths.for_output(config.output_template.replace(DATE_FIELD, date))
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]

    check_output_apart(  # before the lock file: nothing is written beside an input either
        {"output": paths.output, "nightly work folder": paths.work.parent},
        job_inputs(config.job, input=source, corpus=config.corpus, index=config.index),
    )
    with exclusive(paths.lock):
        if (paths.output / SUCCESS).is_file() and not overwrite:
            shutil.rmtree(paths.work, ignore_errors=True)  # left by a run killed right after its commit
            return {**json.loads((paths.output / SUCCESS).read_text()), "skipped": True}
        if paths.output.exists() and not overwrite:
            raise InputError(
                f"output {paths.output} exists but has no {SUCCESS}: no nightly run committed it; "
                "pass --overwrite to replace it"
            )
        if overwrite:
            shutil.rmtree(paths.work, ignore_errors=True)

        files, filesystem, file_schema, _, _ = inspect_query_log(source, config.job)
        key = resume_key(config, files, filesystem)
        plan = load_or_make_plan(paths, key, files, filesystem, file_schema, config.chunk_rows)

        summaries, ran = [], 0
        for chunk in plan["chunks"]:
            cid = chunk["id"]
            if not paths.committed(cid).is_dir():
                staging = paths.staging(cid)
                shutil.rmtree(staging, ignore_errors=True)  # a killed attempt's partial output
                staging.parent.mkdir(parents=True, exist_ok=True)
                runner(
                    config.job,
                    input=str(paths.plan / chunk["file"]),
                    corpus=config.corpus,
                    index=config.index,
                    output=str(staging),
                    run_id=f"{run_id}-{cid}",
                )
                paths.committed(cid).parent.mkdir(parents=True, exist_ok=True)
                os.rename(staging, paths.committed(cid))  # the chunk's commit
                ran += 1
                log.info("%s: committed %s (%d rows)", date, cid, chunk["rows"])
                if fail_after_chunks is not None and ran >= fail_after_chunks:
                    raise InjectedFailure(f"fault injection: stopped after {ran} committed chunk(s)")
            summaries.append(json.loads((paths.committed(cid) / "_run_summary.json").read_text()))

        success = {
            "date": date,
            "input": source,
            "input_files": len(files),
            "output": str(paths.output),
            **aggregate(summaries),
            "chunks": len(plan["chunks"]),
            "chunks_run": ran,
            "chunks_resumed": len(plan["chunks"]) - ran,
            "chunk_run_ids": [s.get("run_id") for s in summaries],
            "config_hash": key["config_hash"],
            "model_hash": key["model_hash"],
            "code_version": code_version(),
            "run_id": run_id,
        }
        success = commit(config, paths, plan, success, files, filesystem, file_schema, started)
    return {**success, "skipped": False}


def load_or_make_plan(paths: NightlyPaths, key: dict, files, filesystem, file_schema, chunk_rows: int):
    """The plan of an earlier run with the same key, or else a new one: where what decides the output
    changed (`KEY_PARTS`), the earlier run's chunks, committed or not, are discarded with a warning
    naming the change, since resuming would mix the outputs of two corpora, models or configs in one
    date. Starting over unattended keeps a scheduled retry (which passes no --overwrite) working; the
    key leaves placement out, so a retry with a longer timeout or smaller batches still resumes."""
    plan_file = paths.plan / "plan.json"
    if plan_file.is_file():
        plan = json.loads(plan_file.read_text())
        if plan["key"] == key:
            return plan
        changed = [KEY_PARTS.get(k, k) for k in {**plan["key"], **key} if plan["key"].get(k) != key.get(k)]
        committed = [c["id"] for c in plan["chunks"] if paths.committed(c["id"]).is_dir()]
        log.warning(
            "%s: %s changed since the earlier run of this date; its work in %s (%d committed chunk(s)) is "
            "discarded and the date starts over",
            paths.output.name,
            " and ".join(changed),
            paths.work,
            len(committed),
        )
    shutil.rmtree(paths.work, ignore_errors=True)
    tmp = paths.work / f"plan-tmp-{uuid.uuid4().hex[:8]}"
    (tmp / "inputs").mkdir(parents=True)
    plan = {
        "key": key,
        "chunk_rows": chunk_rows,
        "chunks": split_input(files, filesystem, file_schema, chunk_rows, tmp),
    }
    (tmp / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    os.rename(tmp, paths.plan)
    return plan


def split_input(files, filesystem, file_schema, chunk_rows: int, out: Path) -> list[dict]:
    """Cut the files, in order, into Parquet chunks of `chunk_rows` rows (the last may be shorter)."""
    chunks: list[dict] = []
    writer = None
    for f in files:
        with pq.ParquetFile(filesystem.open_input_file(f) if filesystem else f) as reader:
            for batch in reader.iter_batches(batch_size=min(chunk_rows, 65_536)):
                while batch.num_rows:
                    if writer is None:
                        cid = f"chunk-{len(chunks):05d}"
                        chunks.append({"id": cid, "file": f"inputs/{cid}.parquet", "rows": 0})
                        writer = pq.ParquetWriter(out / chunks[-1]["file"], file_schema)
                    take = min(batch.num_rows, chunk_rows - chunks[-1]["rows"])
                    writer.write_batch(batch.slice(0, take))
                    chunks[-1]["rows"] += take
                    batch = batch.slice(take)
                    if chunks[-1]["rows"] == chunk_rows:
                        writer.close()
                        writer = None
    if writer is not None:
        writer.close()
    return chunks


SUMMED = (  # run summary counts that add up over chunks
    "queries",
    "pairs",
    "pairs_cached",
    "pairs_scored",
    "windows_scored",
    "candidates_unknown",
    "kept",
    "passages_below_threshold",
    "ok",
    "no_relevant",
)


def aggregate(summaries: list[dict]) -> dict:
    """Chunk run summaries → one: counts summed; models, score kind, threshold and mode must agree."""
    totals: Counter = Counter()
    errors: Counter = Counter()
    providers: set[str] = set()
    same: dict[str, set] = {
        k: set() for k in ("reranker_model", "recall_model", "score_kind", "threshold", "mode")
    }
    for s in summaries:
        for k in SUMMED:
            totals[k] += s.get(k, 0)
        totals["pipeline_s"] += s.get("pipeline_s", 0.0)
        errors.update(s.get("errors", {}))
        providers.update(s.get("providers", []))
        for k, values in same.items():
            values.add(s.get(k))
    for k, values in same.items():
        if len(values) > 1:
            raise RerankEngineError(
                f"the committed chunks disagree on {k}: {sorted(map(str, values))}; pass --overwrite to "
                "recompute the date from scratch"
            )
    return {
        **{k: totals[k] for k in SUMMED},
        "errors": dict(errors),
        "providers": sorted(providers),
        **{k: next(iter(v)) if v else None for k, v in same.items()},
        "pipeline_s": round(totals["pipeline_s"], 2),
    }


def commit(
    config: NightlyConfig, paths: NightlyPaths, plan, summary: dict, files, filesystem, file_schema, started
) -> dict:
    """Check every input query once across all chunks, assemble the output beside it, rename it in.
    A date without rows gets one empty part file with the output schema, which readers infer the
    date's columns from (Spark fails on a folder without one). Returns what `_SUCCESS` holds."""
    id_col = config.job.columns.query_id
    parts = [
        (chunk["id"], p)
        for chunk in plan["chunks"]
        for p in sorted(paths.committed(chunk["id"]).glob("*.parquet"))
    ]
    paths_read = [str(p) for _, p in parts]
    # the ids to check and the report's per-query columns, in one read (parts not written by run_job
    # may lack the latter: the report then shows them unknown)
    present = set(pq.read_schema(paths_read[0]).names) if parts else set()
    columns = [id_col, *(c for c in QueryFigures.COLUMNS if c in present)]
    columns += ["rank"] if config.job.exploded else []  # an exploded input row is its head row
    table = pq.read_table(paths_read, columns=columns, partitioning=None) if parts else None
    InputIds.read(files, filesystem, id_col).verify(table, id_col, config.job.exploded)
    figures = QueryFigures.of(table, id_col, config.job.exploded)

    for stale in paths.work.glob("final-*"):  # assembled by a run killed before its rename
        shutil.rmtree(stale)
    final = paths.work / f"final-{summary['run_id']}"
    final.mkdir()
    entries = []
    for i, (cid, src) in enumerate(parts):
        name = f"part-{i:05d}.parquet"
        try:
            os.link(src, final / name)  # the chunk stays intact should this run die here
        except OSError:
            shutil.copy2(src, final / name)
        entries.append({"file": name, "chunk": cid, "rows": pq.ParquetFile(src).metadata.num_rows})
    if not parts:
        output = schema.exploded_output_schema if config.job.exploded else schema.output_schema
        pq.write_table(output(file_schema).empty_table(), final / "part-00000.parquet")
        entries.append({"file": "part-00000.parquet", "chunk": None, "rows": 0})
    wall_s = round(time.perf_counter() - started, 2)
    success = {
        **summary,
        "rows": sum(e["rows"] for e in entries),
        "committed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wall_s": wall_s,
        "top_score_median": figures.median_top_score(),
        "stage_s": {  # the chunks' pipelines, and the rest: checks, Ray and model start-up, commits
            "chunk pipelines": summary.get("pipeline_s", 0.0),
            "checks, start-up, commits": round(wall_s - summary.get("pipeline_s", 0.0), 2),
        },
    }
    (final / MANIFEST).write_text(json.dumps({"files": entries, "rows": success["rows"]}, indent=2) + "\n")
    (final / "_resolved_config.json").write_text(config.model_dump_json(indent=2) + "\n")
    write_report(final, figures, success)
    (final / SUCCESS).write_text(json.dumps(success, indent=2, sort_keys=True) + "\n")

    if paths.output.exists():  # --overwrite: swap (readers see the old folder, none, then the new one)
        os.rename(paths.output, paths.work / f"replaced-{summary['run_id']}")
    os.rename(final, paths.output)  # the date's commit
    shutil.rmtree(paths.work)
    write_trend(paths.output.parent, SUCCESS)  # every committed date beside this one
    return success
