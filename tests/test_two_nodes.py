"""The job on a cluster of two 1-CPU nodes through `ray job submit` (issue #24 finding 5).

A head and a worker are started on this machine, each with its own `--temp-dir`, free ports and export
cache ($RERANK_ENGINE_CACHE in the node's environment, inherited by its workers). The same job runs once
on the head alone and once after the worker has joined: both must finish (Ray Data's V2 reader asked for
a whole CPU that no node had left), every query once, with the same results, and the second run's actors
must have run on both nodes. Only the nodes started here are stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_engine.probe_pairs import PASSAGES, QUERIES

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def _inputs(root: Path) -> Path:
    from rerank_engine.job.index_build import build_index

    doc_ids = [f"doc-{i:02d}" for i in range(len(PASSAGES))]
    pq.write_table(pa.table({"doc_id": doc_ids, "text": PASSAGES}), root / "corpus.parquet")
    queries = QUERIES * 3
    pq.write_table(
        pa.table({"query_id": [f"q{i}" for i in range(len(queries))], "query": queries}),
        root / "queries.parquet",
    )
    build_index(str(root / "corpus.parquet"), str(root / "index"))
    return root


def _submit(head: dict, root: Path, model: Path, out: Path, submission_id: str) -> str:
    cmd = [
        RAY, "job", "submit", "--address", head["dashboard"], "--working-dir", str(REPO),
        "--submission-id", submission_id, "--",
        sys.executable, "-m", "jobs.rerank", "--config", "jobs/configs/local.yaml",
        "--input", str(root / "queries.parquet"), "--corpus", str(root / "corpus.parquet"),
        "--index", str(root / "index"), "--output", str(out),
        "--set", f"model={model}", "--set", "precision=fp32", "--set", "threshold=0.0",
        "--set", "timeout_s=240",
    ]  # fmt: skip
    for _ in range(12):  # a head just started may have no job agent up yet: Ray says to try again later
        done = subprocess.run(cmd, env=head["env"], capture_output=True, text=True, timeout=600)
        if "No available agent to submit job" not in done.stderr:
            break
        time.sleep(5)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _results(out: Path) -> dict:
    rows = pq.read_table(out).to_pylist()
    ids = [r["query_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a query came out twice"
    return {r["query_id"]: [(p["doc_id"], p["score"]) for p in r["results"]] for r in rows}


def _job_actors(head: dict, submission_id: str) -> list[dict]:
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors

    job_id = JobSubmissionClient(head["dashboard"]).get_job_info(submission_id).job_id
    actors = list_actors(
        filters=[("job_id", "=", job_id)], detail=True, limit=1000, raise_on_missing_output=False
    )
    return [a for a in actors if "MapWorker" in a["class_name"]]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, PermissionError, ProcessLookupError, NotADirectoryError):
            continue
        if text.encode() in cmdline:
            found.append(int(pid))
    return found


def test_a_cluster_of_one_cpu_nodes_finishes_on_both_nodes(
    tmp_path, tiny_model_dir, start_ray_head, start_ray_worker
):
    root = _inputs(tmp_path)
    caches = {"head": tmp_path / "cache-head", "worker": tmp_path / "cache-worker"}
    expected_ids = sorted(pq.read_table(root / "queries.parquet").column("query_id").to_pylist())
    with start_ray_head(
        tmp_path, "--num-gpus=0", num_cpus=1, env={"RERANK_ENGINE_CACHE": str(caches["head"])}
    ) as head:
        import ray

        head_node = ray.get_runtime_context().get_node_id()
        _submit(head, root, tiny_model_dir, tmp_path / "out-one", "one-node")
        one = _results(tmp_path / "out-one")
        assert sorted(one) == expected_ids

        with start_ray_worker(
            head, tmp_path, num_cpus=1, env={"RERANK_ENGINE_CACHE": str(caches["worker"])}
        ) as worker:
            worker_node, worker_temp = worker["node_id"], str(worker["temp_dir"])
            assert _processes_mentioning(worker_temp), "the worker node's processes were not found"
            stdout = _submit(head, root, tiny_model_dir, tmp_path / "out-two", "two-nodes")
            actors = _job_actors(head, "two-nodes")
        assert "queries" in stdout

        two = _results(tmp_path / "out-two")
        assert sorted(two) == expected_ids
        for qid in expected_ids:  # the same passages in the same order, the same scores
            assert [d for d, _ in two[qid]] == [d for d, _ in one[qid]], qid
            np.testing.assert_allclose([s for _, s in two[qid]], [s for _, s in one[qid]], atol=1e-6)

        nodes = {a["node_id"] for a in actors}
        assert nodes == {head_node, worker_node}, actors
        rerank_nodes = {a["node_id"] for a in actors if "RerankStage" in a["class_name"]}
        for name, node in (("head", head_node), ("worker", worker_node)):
            if node in rerank_nodes:  # a rerank actor exported the model into its own node's cache
                assert any(caches[name].rglob("model.onnx")), f"no export in the {name}'s cache"
        head_temp = str(head["temp_dir"])
    assert not _processes_mentioning(head_temp), "the head's processes outlived the test"
    assert not _processes_mentioning(worker_temp), "the worker's processes outlived the test"
