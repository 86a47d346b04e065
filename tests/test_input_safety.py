"""Trust in the inputs (issue 24): inputs are never written, moved or deleted; the declared relations
between inputs (index ↔ corpus, index ↔ bi-encoder, unique doc ids) are checked before Ray starts; a
folder is read as pyarrow reads it; every input column reaches the output; bad config values and
timeouts end in clean errors. Most checks run before Ray starts, so most tests here start none: a
tripwire (`no_ray`) fails any test whose job would reach Ray."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_engine.config import JobConfig
from rerank_engine.errors import ConfigError
from rerank_engine.job import run_job
from rerank_engine.nightly import NightlyConfig, run_nightly

DOCS = {
    "d1": "A standard homeowners policy excludes flood damage.",
    "d2": "Critical illness cover usually has a 90 day waiting period.",
    "d3": "Term life insurance pays nothing if you outlive the term.",
}
CONFIG = JobConfig.build(model="unused", threshold=0.0)


@pytest.fixture
def no_ray(monkeypatch):
    """Any job that gets as far as starting Ray fails the test: the checks under test come before it."""
    from rerank_engine import job

    def tripwire():
        raise AssertionError("the job reached Ray: the check under test did not stop it first")

    monkeypatch.setattr(job, "ensure_ray", tripwire)


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
