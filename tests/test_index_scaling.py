"""Recall at scale: FAISS factory indexes, query-time nprobe/efSearch, recall@k in the manifest, memory-mapped
loading, sharded search, embeddings reused from Parquet, and the scaling benchmark's quick mode.

Real FAISS, real files; random unit vectors stand in for embeddings except in the Ray test, which embeds a
tiny corpus with the bundled bi-encoder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rerank_engine.errors import ConfigError
from rerank_engine.job.index_build import build_index
from rerank_engine.recall.build import read_embeddings_meta, write_embeddings
from rerank_engine.recall.index import RecallIndex, exact_recall_at_k

REPO_ROOT = Path(__file__).resolve().parents[1]


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def doc_ids(n: int) -> list[str]:
    return [f"d{i:06d}" for i in range(n)]


def test_sharded_search_equals_unsharded_for_exact_index(tmp_path):
    """Same ids and scores, ties included (duplicated vectors), k larger than a shard, after save + load."""
    emb = unit_vectors(2000, 32)
    emb[[7, 700, 1500, 1999]] = emb[3]  # five identical vectors spread over several shards
    ids = doc_ids(len(emb))
    queries = np.concatenate([emb[[3, 10, 1500]], unit_vectors(40, 32, seed=1)])
    RecallIndex.build(emb, ids).save(tmp_path / "flat")
    RecallIndex.build(emb, ids, shards=7).save(tmp_path / "sharded")
    flat, sharded = RecallIndex.load(tmp_path / "flat"), RecallIndex.load(tmp_path / "sharded")
    assert len(sharded.parts) == 7 and (tmp_path / "sharded" / "shards" / "00006" / "index.faiss").is_file()
    assert not (tmp_path / "sharded" / "index.faiss").exists()
    for k in (1, 20, 400):  # 400 > 2000 / 7 rows in a shard
        s1, d1 = flat.search(queries, k)
        s2, d2 = sharded.search(queries, k)
        assert d1.shape == (len(queries), k)
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_allclose(s1, s2, rtol=0, atol=1e-6)
    # ties come out in corpus-row order, the same sharded or not
    assert flat.search(emb[[3]], 5)[1][0].tolist() == ["d000003", "d000007", "d000700", "d001500", "d001999"]


@pytest.mark.parametrize(
    ("factory", "param"), [("IVF16,Flat", "nprobe"), ("IVF16,PQ8x4", "nprobe"), ("HNSW16", "ef_search")]
)
def test_factory_index_roundtrip_and_query_time_params(tmp_path, factory, param):
    emb = unit_vectors(3000, 32)
    ids = doc_ids(len(emb))
    index = RecallIndex.build(emb, ids, factory=factory, train_size=2000, **{param: 2})
    assert index.manifest["index_type"] == factory and index.manifest["search_params"] == {param: 2}
    assert index.manifest["train_size"] == (0 if factory.startswith("HNSW") else 2000)
    index.save(tmp_path / "ix")
    queries = unit_vectors(50, 32, seed=3)
    low = RecallIndex.load(tmp_path / "ix")  # the manifest's default: 2
    high = RecallIndex.load(tmp_path / "ix", **{param: 16 if param == "nprobe" else 256})
    assert low.search_params == {param: 2} and high.search_params[param] > 2
    r_low, r_high = exact_recall_at_k(low, emb, queries), exact_recall_at_k(high, emb, queries)
    assert r_high > r_low
    if factory == "IVF16,Flat":
        assert r_high == 1.0  # every list probed: exact
    with pytest.raises(ConfigError, match="does not apply"):
        RecallIndex.load(tmp_path / "ix", **{"ef_search" if param == "nprobe" else "nprobe": 4})


def test_flat_rejects_approximate_params_and_bad_factory():
    emb = unit_vectors(100, 16)
    with pytest.raises(ConfigError, match="nprobe applies to IVF"):
        RecallIndex.build(emb, doc_ids(100), nprobe=4)
    with pytest.raises(ConfigError, match="factory"):
        RecallIndex.build(emb, doc_ids(100), factory="NoSuchIndex12")
    with pytest.raises(ConfigError, match="training"):
        RecallIndex.build(emb, doc_ids(100), factory="IVF512,Flat")  # fewer vectors than lists


def test_missing_candidates_are_none_and_last(tmp_path):
    """An IVF index with nprobe=1 can find fewer than k: the gaps are None / -inf, after the found ones."""
    emb = unit_vectors(400, 16)
    index = RecallIndex.build(emb, doc_ids(400), factory="IVF8,Flat", nprobe=1)
    scores, ids = index.search(emb[:5], 400)
    for s_row, d_row in zip(scores, ids, strict=True):
        found = np.array([d is not None for d in d_row])
        assert 0 < found.sum() < 400 and found[: found.sum()].all()
        assert np.isneginf(s_row[~found]).all() and (np.diff(s_row[found]) <= 0).all()


MMAP_PROBE = """
import json, sys
import numpy as np
from rerank_engine.recall.index import RecallIndex

def anon_kb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("RssAnon")).split()[1])

before = anon_kb()
index = RecallIndex.load(sys.argv[1], mmap=sys.argv[2] == "1")
index.search(np.ones((4, 64), np.float32), 5)
print(json.dumps({"anon_mb": (anon_kb() - before) / 1024}))
"""


def test_mmap_load_keeps_the_index_out_of_the_process_heap(tmp_path):
    """A 49 MB flat index read normally lands in anonymous memory; memory-mapped, it stays file-backed
    (the node's page cache, shared by every process that maps the file)."""
    emb = unit_vectors(200_000, 64)
    RecallIndex.build(emb, doc_ids(len(emb))).save(tmp_path / "ix")
    anon = {}
    for flag in ("0", "1"):
        out = subprocess.run(
            [sys.executable, "-c", MMAP_PROBE, str(tmp_path / "ix"), flag],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        anon[flag] = json.loads(out.stdout.strip().splitlines()[-1])["anon_mb"]
    assert anon["0"] > 45, anon  # the vectors (49 MB) copied into the heap
    assert anon["1"] < anon["0"] - 40, anon  # only the doc-id list and the like


def test_build_index_from_embeddings_reuses_them_and_records_recall(tmp_path):
    """Two factories from one embeddings folder, via the CLI: no corpus, no model, no re-embedding."""
    from jobs.build_index import main

    emb = unit_vectors(4000, 32)
    ids = doc_ids(len(emb))[::-1]  # stored out of order: the index sorts by doc id
    write_embeddings(tmp_path / "emb", ids, emb, model="test-model@0", max_length=64, corpus_hash="c0")
    base = ["--from-embeddings", str(tmp_path / "emb"), "--eval-queries", "300", "--train-size", "2000"]
    assert (
        main([*base, "--out", str(tmp_path / "ivf"), "--index-factory", "IVF32,Flat", "--nprobe", "4"]) == 0
    )
    manifest = json.loads((tmp_path / "ivf" / "manifest.json").read_text())
    assert manifest["model"] == "test-model@0" and manifest["max_length"] == 64
    assert manifest["index_type"] == "IVF32,Flat" and manifest["search_params"] == {"nprobe": 4}
    assert 0.2 < manifest["recall_at_20"] < 1.0 and manifest["recall_eval"]["queries"] == 300
    assert manifest["train_size"] == 2000
    index = RecallIndex.load(tmp_path / "ivf", nprobe=32)
    assert exact_recall_at_k(index, emb[::-1], emb[:50]) == 1.0  # rows are sorted by id = reversed emb

    assert main([*base, "--out", str(tmp_path / "flat"), "--shards", "3"]) == 0
    flat = json.loads((tmp_path / "flat" / "manifest.json").read_text())
    assert flat["recall_at_20"] == 1.0 and flat["recall_eval"]["measured"] is False and flat["shards"] == 3
    again = build_index(None, str(tmp_path / "flat"), embeddings=str(tmp_path / "emb"), shards=3,
                        eval_queries=300, train_size=2000)  # fmt: skip
    assert again["cached"] is True
    assert main(["--from-embeddings", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2


@pytest.mark.ray
@pytest.mark.slow
def test_embedding_job_writes_parquet_once_for_two_factories(tmp_path):
    """The Ray Data embedding job writes Parquet; a second index over the same corpus re-uses it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rerank_engine.recall.index import BiEncoder

    texts = [
        f"policy {w} covers {w} claims after {i} days" for i, w in enumerate(["flood", "fire", "theft"] * 6)
    ]
    pq.write_table(
        pa.table({"doc_id": [f"doc{i:02d}" for i in range(len(texts))], "text": texts}),
        tmp_path / "c.parquet",
    )
    first = build_index(str(tmp_path / "c.parquet"), str(tmp_path / "ix"), eval_queries=5)
    emb_meta = read_embeddings_meta(tmp_path / "ix" / "embeddings")
    assert emb_meta["count"] == len(texts) and "cached" not in emb_meta and first["count"] == len(texts)
    second = build_index(str(tmp_path / "c.parquet"), str(tmp_path / "ix"), factory="HNSW8", eval_queries=5)
    assert second["index_type"] == "HNSW8" and "cached" not in second
    assert read_embeddings_meta(tmp_path / "ix" / "embeddings")["embed_seconds"] == emb_meta["embed_seconds"]

    encoder = BiEncoder()
    q = encoder.encode(["fire claims after 4 days"])
    _, got = RecallIndex.load(tmp_path / "ix", ef_search=64).search(q, 3)
    exact = RecallIndex.build(encoder.encode(texts), [f"doc{i:02d}" for i in range(len(texts))])
    assert got.tolist() == exact.search(q, 3)[1].tolist()


def test_index_scaling_benchmark_quick(tmp_path):
    from benchmarks.index_scaling import main

    out = tmp_path / "bench.json"
    assert main(["--quick", "--json", str(out)]) == 0
    rows = [r for r in json.loads(out.read_text())["rows"] if "qps" in r]  # (not the ground-truth timing)
    assert {r["factory"] for r in rows} >= {"Flat", "HNSW32"}
    assert all(r["qps"] > 0 and 0 <= r["recall_at_20"] <= 1 for r in rows)
    assert all(r["recall_at_20"] == 1.0 for r in rows if r["factory"] == "Flat")


@pytest.fixture(scope="module")
def ivf_index_dir(tmp_path_factory):
    """40 short passages embedded by the bundled bi-encoder, in an IVF8,Flat index probing 1 list."""
    from rerank_engine.recall.index import BiEncoder

    encoder = BiEncoder(max_length=64)
    texts = [
        f"policy {i} covers {topic}" for i in range(8) for topic in ("fire", "flood", "theft", "rent", "car")
    ]
    index = RecallIndex.build(
        encoder.encode(texts),
        [f"p{i:02d}" for i in range(len(texts))],
        factory="IVF8,Flat",
        nprobe=1,
        model=encoder.model_id,
        max_length=64,
    )
    return str(index.save(tmp_path_factory.mktemp("ivf")))


@pytest.mark.slow
def test_recall_stage_keeps_only_found_candidates_and_takes_nprobe(ivf_index_dir):
    """With nprobe=1 the index finds fewer than k_recall: the stage passes on only real doc ids (no
    "None"), with finite scores; `recall.nprobe` from the job config overrides the manifest's default."""
    import pyarrow as pa

    from rerank_engine.config import JobConfig
    from rerank_engine.job.recall_stages import RecallSpec, RecallStage

    batch = pa.table({"query_id": ["a", "b"], "query": ["does my policy cover flood?", "stolen car"]})
    narrow = RecallStage(RecallSpec.of(JobConfig.build(k_recall=20, k_rerank=5), ivf_index_dir))(batch)
    wide = RecallStage(
        RecallSpec.of(JobConfig.build(k_recall=20, k_rerank=5, recall={"nprobe": 8}), ivf_index_dir)
    )(batch)
    for ids, scores in zip(
        narrow["__rerank_cand_ids"].to_pylist(), narrow["__rerank_recall_scores"].to_pylist(), strict=True
    ):
        assert 0 < len(ids) < 20 and len(scores) == len(ids)
        assert all(d.startswith("p") for d in ids) and np.isfinite(scores).all()
    assert narrow["__rerank_status"].to_pylist() == [None, None]
    assert [len(ids) for ids in wide["__rerank_cand_ids"].to_pylist()] == [20, 20]  # all 8 lists probed


def test_job_rejects_a_search_parameter_the_index_lacks(tmp_path):
    """nprobe on an exact index, ef_search on an IVF one: ConfigError from the manifest alone."""
    flat = RecallIndex.build(unit_vectors(50, 8), doc_ids(50)).save(tmp_path / "flat")
    with pytest.raises(ConfigError, match=r"recall.nprobe does not apply .*'Flat'"):
        RecallIndex.read_manifest(flat, nprobe=4)
    ivf = RecallIndex.build(unit_vectors(400, 8), doc_ids(400), factory="IVF4,Flat").save(tmp_path / "ivf")
    assert RecallIndex.read_manifest(ivf, nprobe=4)["search_params"] == {"nprobe": 32}
    with pytest.raises(ConfigError, match=r"recall.ef_search does not apply .*\['nprobe'\]"):
        RecallIndex.read_manifest(ivf, ef_search=16)


@pytest.mark.slow
def test_shard_stages_equal_one_recall_stage_over_the_unsharded_index(tmp_path):
    """recall.shard_stages: embed once, then one stage per shard carrying the running top-k. The chain
    equals one recall stage searching all shards in-process, exactly, ties included (duplicated passages
    sit in different shards); against the unsharded index the scores agree and so do the ids, except
    that equal passages may swap places (FAISS scores them an ulp apart depending on their position in
    its blocks). A bad query row passes through with its status."""
    import pyarrow as pa

    from rerank_engine.config import JobConfig
    from rerank_engine.job.recall_stages import QueryEmbedStage, RecallSpec, RecallStage, ShardSearchStage
    from rerank_engine.recall.index import BiEncoder

    encoder = BiEncoder(max_length=64)
    topics = ("fire damage", "flood water", "stolen bike", "rental car", "dental visit", "roof leak")
    texts = [f"claim {i % 4} for {t}" for i in range(6) for t in topics]  # each text occurs 1-2 times
    emb = encoder.encode(texts)
    ids = [f"p{i:02d}" for i in range(len(texts))]
    meta = {"model": encoder.model_id, "max_length": 64}
    whole = RecallIndex.build(emb, ids, **meta).save(tmp_path / "whole")
    sharded = RecallIndex.build(emb, ids, shards=3, **meta).save(tmp_path / "sharded")
    batch = pa.table(
        {"query_id": ["a", "b", "c"], "query": ["water in the basement", "   ", "claim 1 for stolen bike"]}
    )
    config = JobConfig.build(k_recall=10, k_rerank=5, recall={"shard_stages": True})

    out = QueryEmbedStage(RecallSpec.of(config, str(sharded)))(batch)
    for shard in range(3):
        out = ShardSearchStage(RecallSpec.of(config, str(sharded)), shard=shard, last=shard == 2)(out)

    in_process = RecallStage(RecallSpec.of(config, str(sharded)))(batch)
    assert out.column_names == in_process.column_names
    assert out.to_pylist() == in_process.to_pylist()
    assert out["__rerank_status"].to_pylist() == [None, "empty_query", None]

    unsharded = RecallStage(RecallSpec.of(config, str(whole)))(batch)
    for got, want in zip(out.to_pylist(), unsharded.to_pylist(), strict=True):
        np.testing.assert_allclose(got["__rerank_recall_scores"], want["__rerank_recall_scores"], atol=1e-6)
        text_of = dict(zip(ids, texts, strict=True))
        got_texts = [text_of[d] for d in got["__rerank_cand_ids"]]
        assert got_texts == [text_of[d] for d in want["__rerank_cand_ids"]]
    top = in_process["__rerank_recall_scores"].to_pylist()[2]
    assert len(set(np.round(top, 5))) < len(top)  # the third query's top-10 holds ties


def test_the_embedding_resources_are_config_and_a_bad_one_is_named(tmp_path, capsys):
    """The index build's Ray pipeline is sized by EmbedConfig (`--actors`, `--set batch_rows=…`), checked
    before anything is embedded."""
    from jobs import build_index as cmd

    argv = ["--corpus", str(tmp_path / "c.parquet"), "--out", str(tmp_path / "ix"), "--set", "batch_rowz=8"]
    assert cmd.main(argv) == 2
    err = capsys.readouterr().err
    assert "invalid EmbedConfig: batch_rowz: Extra inputs are not permitted" in err and "batch_rows" in err
    assert not (tmp_path / "ix").exists()
