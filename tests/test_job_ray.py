"""The batch job on a real local Ray cluster, with the output Parquet read back row by row.

One head is started per module with `ray start --head --block --num-gpus=1` (no real GPU here), so
every run below places its rerank actors by GPU resource and must fall back to the CPU provider; one
run asks for CPU actors instead. The last test submits the job with `ray job submit`.
"""

from __future__ import annotations

import json
import os
import re
import signal
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


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory, start_ray_head):
    """A head of our own (see conftest.start_ray_head) with one (fake) GPU, for this module."""
    with start_ray_head(tmp_path_factory.mktemp("ray-head"), "--num-gpus=1") as head:
        yield head


@pytest.fixture(scope="module")
def data(tmp_path_factory, ray_head):
    from rerank_engine.job.index_build import build_index

    root = tmp_path_factory.mktemp("job")
    doc_ids = [f"doc-{i:02d}" for i in range(len(PASSAGES))]
    pq.write_table(pa.table({"doc_id": doc_ids, "text": PASSAGES}), root / "corpus.parquet")
    queries = [*QUERIES, "", "   ", "Is hail damage to my car covered?"]
    pq.write_table(
        pa.table(
            {
                "query_id": [f"q{i}" for i in range(len(queries))],
                "query": queries,
                "tenant": [f"t{i % 3}" for i in range(len(queries))],
                "weight": [float(i) if i != 2 else float("nan") for i in range(len(queries))],
            }
        ),
        root / "queries.parquet",
    )
    build_index(str(root / "corpus.parquet"), str(root / "index"))
    return root, dict(zip(doc_ids, PASSAGES, strict=True))


def _run(config_overrides, root, output, **kw):
    from rerank_engine.config import load_job_config
    from rerank_engine.job.driver import run_job

    config = load_job_config(REPO / "jobs/configs/local.yaml", {"timeout_s": 600, **config_overrides})
    return run_job(config, corpus=str(root / "corpus.parquet"), output=str(output), **kw)


def test_recall_mode_row_by_row(data, tiny_export):
    from rerank_engine.recall.index import RecallIndex

    root, docs = data
    summary = _run(
        {"model": str(tiny_export), "precision": "fp32", "k_recall": 8, "k_rerank": 3, "threshold": 0.0},
        root,
        root / "out",
        input=str(root / "queries.parquet"),
        index=str(root / "index"),
    )
    out = pq.read_table(root / "out").to_pylist()
    inp = pq.read_table(root / "queries.parquet").to_pylist()
    assert sorted(r["query_id"] for r in out) == sorted(r["query_id"] for r in inp)  # each exactly once
    assert summary["queries"] == len(inp) and summary["errors"] == {"empty_query": 2}
    assert summary["ray_gpus_for_rerank"] == 1  # placed by the declared GPU ...
    assert summary["providers"] == ["CPUExecutionProvider"]  # ... and fell back to CPU: no CUDA here
    assert json.loads((root / "out" / "_run_summary.json").read_text())["run_id"] == summary["run_id"]
    assert all(r["top_score"] == r["results"][0]["score"] for r in out if r["results"])  # threshold 0
    assert all(r["top_score"] is None for r in out if r["status"] == "empty_query")
    from rerank_engine.job import run_report

    report = (root / "out" / "_report.md").read_text()  # beside the output, skipped by Parquet readers
    assert report.startswith(f"# Run report: {summary['run_id']}") and "| empty_query | 2 |" in report
    assert all(p.stat().st_size > 2_000 for p in run_report.plot_files(root / "out"))
    stages = summary["stage_s"]  # five figures rounded to 0.01 s: their sum may pass wall_s by 0.03
    assert 0 < sum(stages.values()) <= summary["wall_s"] + 0.03 and stages["pipeline"] > 0

    _assert_recall_rows(out, inp, RecallIndex.load(root / "index"), docs, tiny_export)


def _assert_recall_rows(out, inp, index, docs, model_dir, max_length=None):
    """Each output row as the bare RecallIndex + engine (at `max_length`, else the model's default) rank
    it: recall top-8, rerank top-3."""
    from rerank_engine.config import EngineConfig
    from rerank_engine.recall.index import BiEncoder
    from rerank_engine.serving.engine import CrossEncoderEngine

    encoder = BiEncoder()
    tokenizer = {} if max_length is None else {"max_length": max_length}
    engine = CrossEncoderEngine(
        EngineConfig.build(model_dir=model_dir, precision="fp32", tokenizer=tokenizer)
    )
    by_id = {r["query_id"]: r for r in inp}
    for row in out:
        src = by_id[row["query_id"]]
        assert row["tenant"] == src["tenant"]  # pass-through survives
        assert row["weight"] == src["weight"] or (np.isnan(row["weight"]) and np.isnan(src["weight"]))
        if not src["query"].strip():
            assert row["status"] == "empty_query" and row["results"] == []
            continue
        _, cands = index.search(encoder.encode([src["query"]]), 8)
        cands = list(cands[0])
        result = engine.score([src["query"]] * len(cands), [docs[d] for d in cands])
        scores = result.scores  # ordered by logit (no ties where fp32 probabilities saturate)
        expected = sorted(range(len(cands)), key=lambda j: (-result.logits[j], cands[j]))[:3]
        assert [r["doc_id"] for r in row["results"]] == [cands[j] for j in expected]
        np.testing.assert_allclose([r["score"] for r in row["results"]], scores[expected], atol=1e-5)
        assert [r["recall_rank"] for r in row["results"]] == [j + 1 for j in expected]
        assert row["status"] == "ok" and row["n_candidates"] == 8 and row["n_kept"] == 3


def test_recall_mode_fuses_the_recall_cosine(data, tiny_export, copy_export):
    """With a fusion.json beside the model, each passage's score is the fused probability of its logit and
    its recall cosine; passages are ordered and thresholded on it (the file's threshold), at the max_length
    the fusion was calibrated at."""
    from rerank_engine.config import EngineConfig
    from rerank_engine.quality.fusion import Fusion
    from rerank_engine.recall.index import BiEncoder, RecallIndex
    from rerank_engine.serving.engine import CrossEncoderEngine
    from rerank_engine.serving.manifest import read_manifest

    root, docs = data
    model = copy_export(tiny_export, "fused-model")
    fusion = Fusion(
        recall_weight=10.0,
        scale=2.0,
        bias=-12.0,
        model_id=read_manifest(model).model_id,
        recall_model=json.loads((root / "index" / "manifest.json").read_text())["model"],
        calibration={"settings": {"max_length": 64}},
    )
    index, encoder = RecallIndex.load(root / "index"), BiEncoder()
    engine = CrossEncoderEngine(
        EngineConfig.build(model_dir=model, precision="fp32", tokenizer={"max_length": 64})
    )
    queries = [q for q in pq.read_table(root / "queries.parquet").to_pylist() if q["query"].strip()]
    expected = {}
    for q in queries:
        cos, cands = index.search(encoder.encode([q["query"]]), 8)
        logits = engine.score([q["query"]] * 8, [docs[d] for d in cands[0]]).logits
        p, z = fusion.scores(logits, cos[0]), fusion.fused_logits(logits, cos[0])
        top = sorted(range(8), key=lambda j: (-z[j], cands[0][j]))[:3]
        expected[q["query_id"]] = [(cands[0][j], p[j]) for j in top]
    cut = float(np.median([s for top in expected.values() for _, s in top]))  # some kept, some not
    Fusion(**{**fusion.to_dict(), "threshold": cut}).save(model / "fusion.json")

    summary = _run(
        {"model": str(model), "precision": "fp32", "k_recall": 8, "k_rerank": 3},
        root,
        root / "out-fused",
        input=str(root / "queries.parquet"),
        index=str(root / "index"),
    )
    assert summary["fusion"] == fusion.weights() and summary["threshold"] == pytest.approx(cut)
    assert summary["threshold_source"].endswith("fusion.json") and summary["max_length"] == 64
    assert summary["score_kind"] == "fused_probability" and summary["fusion_source"].endswith("fusion.json")
    rows = {r["query_id"]: r for r in pq.read_table(root / "out-fused").to_pylist()}
    assert {r["score_kind"] for r in rows.values()} == {"fused_probability"}  # the output says which score
    for qid, top in expected.items():
        kept = [(d, s) for d, s in top if s >= cut]
        assert [r["doc_id"] for r in rows[qid]["results"]] == [d for d, _ in kept]
        np.testing.assert_allclose(
            [r["score"] for r in rows[qid]["results"]], [s for _, s in kept], rtol=1e-5
        )
        assert rows[qid]["status"] == ("ok" if kept else "no_relevant")
    assert {r["n_kept"] for r in rows.values()} - {0, 3}  # the cut fell inside some top-3


def test_recall_shard_stages_one_actor_pool_per_shard(data, tiny_export):
    """A 3-shard index searched by three shard stages (recall.shard_stages) gives, row by row, what the
    in-process search over all shards gives."""
    from rerank_engine.job.index_build import build_index
    from rerank_engine.recall.index import RecallIndex

    root, docs = data
    build_index(
        str(root / "corpus.parquet"),
        str(root / "index-3"),
        embeddings=str(root / "index" / "embeddings"),
        shards=3,
    )
    summary = _run(
        {
            "model": str(tiny_export),
            "precision": "fp32",
            "k_recall": 8,
            "k_rerank": 3,
            "threshold": 0.0,
            "recall": {"shard_stages": True},
            # the 2-core budget: embed 0.1 + 3 shard actors × 0.05 + tokenize 0.25 + rerank 0.5 = 1 CPU
            "resources.recall_cpus": 0.1,
        },
        root,
        root / "out-sharded",
        input=str(root / "queries.parquet"),
        index=str(root / "index-3"),
    )
    assert summary["recall_shard_stages"] == 3
    out = pq.read_table(root / "out-sharded").to_pylist()
    inp = pq.read_table(root / "queries.parquet").to_pylist()
    assert sorted(r["query_id"] for r in out) == sorted(r["query_id"] for r in inp)
    _assert_recall_rows(out, inp, RecallIndex.load(root / "index-3"), docs, tiny_export)


def test_logged_candidates_cpu_actors_and_no_relevant(data, tiny_export):
    root, docs = data
    ids = list(docs)
    pq.write_table(
        pa.table(
            {
                "query_id": ["a", "b", "c"],
                "query": [QUERIES[0], QUERIES[1], QUERIES[2]],
                "candidates": pa.array([ids[:5], ["unknown-doc"], []], pa.list_(pa.string())),
            }
        ),
        root / "logged.parquet",
    )
    summary = _run(
        {"model": str(tiny_export), "precision": "fp32", "threshold": 0.99, "resources.rerank_gpus": 0},
        root,
        root / "out-logged",
        input=str(root / "logged.parquet"),
    )
    rows = {r["query_id"]: r for r in pq.read_table(root / "out-logged").to_pylist()}
    assert summary["mode"] == "logged_candidates" and summary["ray_gpus_for_rerank"] == 0
    assert (
        rows["a"]["status"] == "no_relevant" and rows["a"]["results"] == [] and rows["a"]["n_candidates"] == 5
    )
    assert rows["b"]["status"] == "unknown_candidates"
    assert rows["c"]["status"] == "no_candidates"


def test_exploded_output_is_the_plain_output_row_for_row_with_repeated_query_ids(data, tiny_export):
    """exploded: true on a log whose query ids repeat (two rows of q0, the same query; two of q1, another
    query the second time): one row per kept pair or per row with none kept, the same pairs and scores
    as the plain output's results, and every input row counted in the summary."""
    root, _ = data
    log = pq.read_table(root / "queries.parquet")
    again = log.slice(0, 2).set_column(1, "query", pa.array([QUERIES[0], "Does my policy cover theft?"]))
    pq.write_table(pa.concat_tables([log, again]), root / "repeated.parquet")
    config = {"model": str(tiny_export), "precision": "fp32", "threshold": 0.5}
    inp = str(root / "repeated.parquet")
    plain = _run(config, root, root / "out-plain", input=inp, index=str(root / "index"))
    flat = _run({**config, "exploded": True}, root, root / "out-flat", input=inp, index=str(root / "index"))

    rows = pq.read_table(root / "out-plain").to_pylist()
    exploded = pq.read_table(root / "out-flat").to_pylist()
    assert flat["queries"] == plain["queries"] == len(rows) == log.num_rows + 2
    assert flat["kept"] == plain["kept"] and flat["ok"] == plain["ok"] and flat["errors"] == plain["errors"]

    def pairs(r, results):
        return [(r["query_id"], r["query"], x["doc_id"], x["rank"], x["score"]) for x in results]

    want = sorted(
        (
            p
            for r in rows
            for p in (pairs(r, r["results"]) or [(r["query_id"], r["query"], None, None, None)])
        ),
        key=str,
    )
    got = sorted(((r["query_id"], r["query"], r["doc_id"], r["rank"], r["score"]) for r in exploded), key=str)
    assert got == want
    assert sum(1 for r in exploded if r["query_id"] == "q0" and r["rank"] in (1, None)) == 2


def test_chunk_max_one_row_per_passage_and_windows_in_the_summary(ray_head, tiny_export, tmp_path):
    """long_passages chunk_max on a real local Ray: passages of many windows at max_length 32, logged
    candidates, one query repeated (scored once, fanned out). Read back: one result per candidate
    passage, its score the chunk_max engine's (its best window), and the windows the engine's tokenizer
    cuts counted per row and, once per distinct query, in the run summary."""
    from rerank_engine.config import EngineConfig
    from rerank_engine.serving.engine import CrossEncoderEngine

    rng = np.random.default_rng(7)
    docs = {f"long-{i}": " ".join(rng.choice(PASSAGES, size=i + 1).tolist()) for i in range(6)}
    pq.write_table(pa.table({"doc_id": list(docs), "text": list(docs.values())}), tmp_path / "corpus.parquet")
    cands = [list(docs), ["long-5", "long-0", "long-2"], list(docs)]
    pq.write_table(
        pa.table(
            {
                "query_id": ["a", "b", "a-again"],
                "query": [QUERIES[0], QUERIES[1], QUERIES[0]],
                "candidates": pa.array(cands, pa.list_(pa.string())),
            }
        ),
        tmp_path / "logged.parquet",
    )
    tokenizer = {"max_length": 32, "long_passages": "chunk_max", "stride": 8}
    summary = _run(
        {
            "model": str(tiny_export),
            "precision": "fp32",
            "k_recall": 6,
            "k_rerank": 6,
            "threshold": 0.0,
            "resources.rerank_gpus": 0,
            **{f"tokenizer.{k}": v for k, v in tokenizer.items()},
        },
        tmp_path,
        tmp_path / "out",
        input=str(tmp_path / "logged.parquet"),
    )
    engine = CrossEncoderEngine(
        EngineConfig.build(model_dir=tiny_export, precision="fp32", tokenizer=tokenizer)
    )
    rows = {r["query_id"]: r for r in pq.read_table(tmp_path / "out").to_pylist()}
    windows = {}
    for qid, query, ids in zip(
        ["a", "b", "a-again"], [QUERIES[0], QUERIES[1], QUERIES[0]], cands, strict=True
    ):
        result = engine.score([query] * len(ids), [docs[d] for d in ids])
        windows[qid] = int(engine.tokenize([query] * len(ids), [docs[d] for d in ids]).windows.sum())
        got = {r["doc_id"]: r["logit"] for r in rows[qid]["results"]}
        assert sorted(got) == sorted(ids) and rows[qid]["n_candidates"] == len(ids)  # one row per passage
        np.testing.assert_allclose([got[d] for d in ids], result.logits, atol=1e-5)
        assert rows[qid]["windows_scored"] == windows[qid] == result.windows_scored > len(ids)
    assert summary["long_passages"] == "chunk_max" and summary["stride"] == 8 and summary["max_length"] == 32
    assert summary["distinct_queries"] == 2 and summary["pairs_scored"] == 6 + 3
    assert summary["windows_scored"] == windows["a"] + windows["b"]  # the repeat was scored once
    saved = json.loads((tmp_path / "out" / "_run_summary.json").read_text())
    assert saved["windows_scored"] == summary["windows_scored"]


def test_ray_job_submit_round_trip(data, tiny_export, ray_head):
    root, _ = data
    out = root / "out-submitted"
    cmd = [
        RAY,
        "job",
        "submit",
        "--address",
        ray_head["dashboard"],
        "--working-dir",
        str(REPO),
        "--",
        sys.executable,
        "-m",
        "jobs.rerank",
        "--config",
        "jobs/configs/local.yaml",
        "--input",
        str(root / "queries.parquet"),
        "--corpus",
        str(root / "corpus.parquet"),
        "--index",
        str(root / "index"),
        "--output",
        str(out),
        "--set",
        f"model={tiny_export}",
        "--set",
        "precision=fp32",
        "--set",
        "timeout_s=600",
    ]
    done = subprocess.run(cmd, env=ray_head["env"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = pq.read_table(out)
    assert sorted(table.column("query_id").to_pylist()) == sorted(
        pq.read_table(root / "queries.parquet").column("query_id").to_pylist()
    )
    assert re.search(r"\n  queries +11\n", done.stdout)  # the summary table, streamed back by Ray
    assert re.search(r"\n  full summary +\S+/out-submitted/_run_summary.json", done.stdout)
    logs = done.stdout + done.stderr  # the driver's output is a log, not a terminal: no progress bars
    assert "row/s" not in logs and "Total Progress" not in logs


def test_rerank_actor_killed_mid_run_every_query_once(data, tiny_export, tmp_path):
    """SIGKILL the rerank actor's process while the job runs: Ray Data brings the actor back (its actors
    have max_restarts=-1, max_task_retries=-1), and every query is in the output exactly once."""
    import threading

    from ray.util.state import list_actors

    root, docs = data
    ids = list(docs)
    n = 1500  # long enough that the job is still running on an idle machine when the actor comes up
    rng = np.random.default_rng(0)
    pq.write_table(
        pa.table(
            {
                "query_id": [f"k{i}" for i in range(n)],
                "query": [QUERIES[i % len(QUERIES)] for i in range(n)],
                "candidates": [rng.choice(ids, size=8, replace=False).tolist() for _ in range(n)],
            }
        ),
        tmp_path / "many.parquet",
    )
    out, done, killed = tmp_path / "out", threading.Event(), []

    def rerank_actors():
        return [a for a in list_actors(detail=True, limit=1000) if "RerankStage" in (a.repr_name or "")]

    def killer():
        while not done.is_set():
            alive = [a for a in rerank_actors() if a.state == "ALIVE" and a.pid]
            staged = list(out.glob("_staging-*/*.parquet")) if out.exists() else []
            if alive:  # kill at first sight: the pipeline cannot have finished before its rerank actor
                os.kill(alive[0].pid, signal.SIGKILL)
                killed.append((alive[0].pid, len(staged), not done.is_set()))
                return
            time.sleep(0.2)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        summary = _run(
            {
                "model": str(tiny_export),
                "precision": "fp32",
                "threshold": 0.0,
                "resources.rerank_gpus": 0,
                "resources.rerank_batch_rows": 4,
            },
            root,
            out,
            input=str(tmp_path / "many.parquet"),
        )
    finally:
        done.set()
        thread.join(timeout=30)
    assert killed and killed[0][2], f"the actor was not killed while the job ran: {killed}"
    got = pq.read_table(out, columns=["query_id", "status"])
    assert got.num_rows == n and len(set(got.column("query_id").to_pylist())) == n  # lost 0, duplicated 0
    assert summary["queries"] == n and summary["ok"] == n
    print(f"killed rerank actor pid {killed[0][0]} after {killed[0][1]} staged files; {n} rows, 0 lost")


@pytest.mark.parametrize("family", ["xlm-roberta", "deberta-v2", "modernbert", "electra", "bert-2"])
def test_each_family_through_the_job_end_to_end(data, family_dirs, family):
    """Each family of the README's table (tiny random models with their own kind of tokenizer, built in
    conftest; bge-reranker-v2-m3 is an XLM-R, "bert-2" a two-logit BERT) through the whole job on the
    module's Ray; every row as the bare engine ranks it, at the job's default max_length cap."""
    from rerank_engine.recall.index import RecallIndex

    root, docs = data
    _, export = family_dirs(family)
    out_dir = root / f"out-{family}"
    summary = _run(
        {"model": str(export), "precision": "fp32", "k_recall": 8, "k_rerank": 3, "threshold": 0.0},
        root,
        out_dir,
        input=str(root / "queries.parquet"),
        index=str(root / "index"),
    )
    out = pq.read_table(out_dir).to_pylist()
    inp = pq.read_table(root / "queries.parquet").to_pylist()
    assert sorted(r["query_id"] for r in out) == sorted(r["query_id"] for r in inp)
    assert summary["queries"] == len(inp) and summary["max_length"] == 256
    _assert_recall_rows(out, inp, RecallIndex.load(root / "index"), docs, export)


def test_an_llm_reranker_through_the_job_end_to_end(data, qwen3_export):
    """A tiny Qwen3-Reranker-shaped causal LM (its export is a one-logit classifier that keeps the prompt in
    its manifest) through the whole job on Ray, with the README's settings for it; every row as the bare
    engine ranks it (tests/test_llm_reranker.py proves the engine equals the model card's scoring)."""
    from rerank_engine.recall.index import RecallIndex

    root, docs = data
    summary = _run(
        {
            "model": str(qwen3_export), "precision": "fp32", "k_recall": 8, "k_rerank": 3, "threshold": 0.0,
            "dedupe_queries": False, "tokenizer": {"max_length": 512},
        },
        root,
        root / "out-qwen3",
        input=str(root / "queries.parquet"),
        index=str(root / "index"),
    )  # fmt: skip
    out = pq.read_table(root / "out-qwen3").to_pylist()
    inp = pq.read_table(root / "queries.parquet").to_pylist()
    assert sorted(r["query_id"] for r in out) == sorted(r["query_id"] for r in inp)
    assert summary["queries"] == len(inp) and summary["max_length"] == 512
    _assert_recall_rows(out, inp, RecallIndex.load(root / "index"), docs, qwen3_export, max_length=512)


def test_the_job_refuses_a_checkpoint_without_a_head(data, tmp_path, headless_model_dir):
    from rerank_engine.errors import ModelFormatError

    root, _ = data
    with pytest.raises(ModelFormatError, match=r"classifier\.bias, classifier\.weight would be newly"):
        _run({"model": str(headless_model_dir)}, root, tmp_path / "out", input=str(root / "queries.parquet"),
             index=str(root / "index"))  # fmt: skip
    assert not list((tmp_path / "out").glob("*.parquet"))
