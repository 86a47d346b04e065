"""The recall index from corpus embeddings, and the embeddings folder's format. No Ray: the corpus is
embedded by the index-building job (`rerank_engine.job.index_build`), which then calls
`index_from_embeddings` here.

- An embeddings folder holds Parquet files of `doc_id`, `embedding` (fixed-size list<float32>) and
  `_embeddings.json` (model, max_length, corpus hash, count); `write_embeddings` writes one from vectors
  made elsewhere.
- `index_from_embeddings` loads them (sorted by doc_id, so row order does not depend on the write order),
  builds a FAISS index from a factory string (trained on a sample), measures recall@k against exact search
  on held-out vectors and writes index + manifest. Re-indexing with another factory reads the Parquet
  instead of re-embedding.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rerank_engine import schema
from rerank_engine.errors import ModelNotFoundError

EMBEDDINGS_META = "_embeddings.json"


def read_embeddings_meta(folder: str | Path) -> dict | None:
    """The `_embeddings.json` of an embeddings folder, or None when there is none."""
    path = Path(folder) / EMBEDDINGS_META
    return json.loads(path.read_text()) if path.is_file() else None


def write_embeddings(folder: str | Path, doc_ids, embeddings: np.ndarray, **meta) -> dict:
    """Write embeddings made elsewhere in the folder format `embed_corpus` writes (one Parquet file and
    `_embeddings.json` holding `meta`: give `model` and `max_length` for the recall stage's model check)."""
    folder = Path(folder)
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "doc_id": pa.array([str(d) for d in doc_ids], pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1]),
        }
    )
    pq.write_table(table, folder / "part-00000.parquet")
    meta = {**meta, "count": len(emb), "dimension": int(emb.shape[1])}
    (folder / EMBEDDINGS_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def load_embeddings(folder: str | Path, *, collapse_repeats: bool = False) -> tuple[list[str], np.ndarray]:
    """(doc ids sorted, float32 [n, dim] in that order) from an embeddings folder; duplicate ids fail,
    unless `collapse_repeats` (the corpus repeats them with identical texts, `checks.check_corpus`): then
    the first of each is kept."""
    if read_embeddings_meta(folder) is None:
        raise ModelNotFoundError(f"{folder} holds no {EMBEDDINGS_META}; write it with embed_corpus")
    table = pq.ParquetDataset(folder).read(columns=["doc_id", "embedding"])
    emb_col = table.column("embedding").combine_chunks()
    emb = emb_col.flatten().to_numpy(zero_copy_only=False).reshape(len(emb_col), -1).astype(np.float32)
    ids = np.asarray(table.column("doc_id").to_pylist(), dtype=object)
    order = np.argsort(ids, kind="stable")
    ids, emb = ids[order], emb[order]
    if collapse_repeats and len(ids) > 1:
        first = np.concatenate([[True], ids[1:] != ids[:-1]])
        ids, emb = ids[first], emb[first]
    if len(ids) > 1 and (dup := np.flatnonzero(ids[1:] == ids[:-1])).size:
        raise schema.InputError(f"doc_id {ids[dup[0]]!r} appears more than once; doc ids must be unique")
    return ids.tolist(), emb


def index_from_embeddings(
    emb_dir: str | Path,
    out: str | Path,
    *,
    factory: str = "Flat",
    train_size: int = 100_000,
    shards: int = 1,
    nprobe: int | None = None,
    ef_search: int | None = None,
    eval_queries: int = 1000,
    k_eval: int = 20,
    seed: int = 0,
    collapse_repeats: bool = False,
) -> dict:
    """Build the recall index of the embeddings in `emb_dir` into `out` and return its manifest.

    The manifest records `recall_at_<k_eval>` of the index against exact search on `eval_queries` corpus
    vectors sampled with `seed` (left out of the training sample); an exact index records 1.0 without
    measuring. A rebuild with the same embeddings and settings is a no-op (`"cached": true`).
    `collapse_repeats`: the corpus repeats doc ids with identical texts (`checks.check_corpus`).
    """
    from rerank_engine.recall.index import RecallIndex, exact_recall_at_k

    emb_dir = Path(emb_dir)
    emb_meta = read_embeddings_meta(emb_dir)
    if emb_meta is None:
        raise ModelNotFoundError(f"{emb_dir} holds no embeddings ({EMBEDDINGS_META}); give a corpus")
    settings = {
        "index_type": factory,
        "train_size_requested": train_size,
        "shards": shards,
        "seed": seed,
        "eval_queries_requested": eval_queries,
        "k_eval": k_eval,
        "requested_search_params": {"nprobe": nprobe, "ef_search": ef_search},
    }
    source = {k: emb_meta.get(k) for k in ("model", "max_length", "corpus", "corpus_hash")}
    manifest_path = Path(out) / RecallIndex.MANIFEST_FILE
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if all(old.get(k) == v for k, v in {**source, **settings}.items()):
            return {**old, "cached": True}

    doc_ids, emb = load_embeddings(emb_dir, collapse_repeats=collapse_repeats)
    rng = np.random.default_rng(seed)
    held_out = rng.choice(len(emb), min(eval_queries, len(emb)), replace=False)
    train_rows = np.setdiff1d(np.arange(len(emb)), held_out)
    if not len(train_rows):  # a corpus smaller than eval_queries: train on everything
        train_rows = np.arange(len(emb))
    index = RecallIndex.build(
        emb,
        doc_ids,
        factory=factory,
        train_size=train_size,
        shards=shards,
        nprobe=nprobe,
        ef_search=ef_search,
        seed=seed,
        train_rows=train_rows,
        embeddings_dir=str(emb_dir),
        **source,
        **{k: v for k, v in settings.items() if k not in ("index_type", "shards", "seed")},
    )
    started = time.perf_counter()
    if index.manifest["exact"]:
        recall = 1.0
    else:
        recall = round(exact_recall_at_k(index, emb, emb[held_out], k_eval), 4)
    index.manifest[f"recall_at_{k_eval}"] = recall
    index.manifest["recall_eval"] = {
        "queries": len(held_out),
        "source": "corpus vectors sampled with seed, left out of the training sample",
        "k": k_eval,
        "search_params": dict(index.search_params),
        "measured": not index.manifest["exact"],
        "seconds": round(time.perf_counter() - started, 3),
    }
    index.save(out)
    return index.manifest
