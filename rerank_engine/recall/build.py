"""Corpus → embeddings (Parquet) → recall index.

Two steps, each skipped when its output already matches its inputs:

1. `embed_corpus`: a streaming Ray Data job (read → embedding actors, GPU where the cluster has one →
   write_parquet) that writes `doc_id`, `embedding` (fixed-size list<float32>) to an embeddings folder with
   `_embeddings.json` (model, max_length, corpus hash, count). Reused while corpus file and model match.
2. `build_index`: loads the embeddings (sorted by doc_id, so row order does not depend on the write order),
   builds a FAISS index from a factory string (trained on a sample), measures recall@k against exact search
   on held-out queries and writes index + manifest. Re-indexing with another factory reads the Parquet
   instead of re-embedding.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rerank_engine import schema
from rerank_engine.config import ColumnsConfig
from rerank_engine.errors import ModelNotFoundError
from rerank_engine.job.inputs import check_corpus
from rerank_engine.serving.hashing import file_hash


class EmbedStage:
    """doc texts → unit embeddings (one callable class per actor, model loaded once)."""

    def __init__(self, bi_encoder: str | None, max_length: int, text_col: str, title_col: str, threads: int):
        from rerank_engine.recall.index import BiEncoder

        self.encoder = BiEncoder(bi_encoder, max_length=max_length, threads=threads)
        self.text_col, self.title_col = text_col, title_col

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = schema.passage_texts(batch, self.text_col, self.title_col)
        emb = self.encoder.encode([t if isinstance(t, str) else "" for t in texts])
        return pa.table(
            {
                "doc_id": batch.column("doc_id").cast(pa.string()),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1]),
            }
        )


EMBEDDINGS_META = "_embeddings.json"


def embed_corpus(
    corpus: str,
    out: str | Path,
    *,
    bi_encoder: str | None = None,
    max_length: int = 256,
    actors: int = 1,
    columns: ColumnsConfig | None = None,
) -> dict:
    """Embed a corpus Parquet into `out` (Parquet files + `_embeddings.json`); a no-op when `out` already
    holds this corpus file's embeddings by this model at this max_length (returns the meta with
    `"cached": true`). Written to a staging folder and renamed into place when complete."""
    from rerank_engine.job.driver import ensure_ray
    from rerank_engine.job.pipeline import embedding_pipeline
    from rerank_engine.recall.index import BiEncoder

    cols = columns or ColumnsConfig()
    table_schema = pq.read_schema(corpus)
    schema.check_corpus_schema(table_schema, schema.CorpusColumns(cols.doc_id, cols.text, cols.title), corpus)
    out = Path(out)
    key = {"model": BiEncoder.describe(bi_encoder), "max_length": max_length}
    key["corpus_hash"] = file_hash(corpus)
    old = read_embeddings_meta(out)
    if old and all(old.get(k) == v for k, v in key.items()):
        return {**old, "cached": True}

    ensure_ray()
    read_cols = [c for c in (cols.doc_id, cols.text, cols.title) if c in table_schema.names]
    n_rows = pq.ParquetFile(corpus).metadata.num_rows
    started = time.perf_counter()
    staging = out.with_name(f"_{out.name}.staging-{uuid.uuid4().hex[:8]}")
    stage = {
        "bi_encoder": bi_encoder,
        "max_length": max_length,
        "text_col": cols.text,
        "title_col": cols.title,
    }
    embedding_pipeline(corpus, read_cols, n_rows, staging, actors=actors, stage=stage, doc_id=cols.doc_id)
    written = pq.ParquetDataset(staging).read(columns=["doc_id"]).num_rows if staging.exists() else 0
    if written != n_rows:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"embedding {corpus}: wrote {written} rows for {n_rows} corpus rows")
    meta = {
        **key,
        "corpus": str(corpus),
        "count": n_rows,
        "dimension": int(pq.ParquetDataset(staging).schema.field("embedding").type.list_size),
        "embed_seconds": round(time.perf_counter() - started, 3),
    }
    (staging / EMBEDDINGS_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(out)
    return meta


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
    unless `collapse_repeats` (the corpus repeats them with identical texts, `inputs.check_corpus`): then
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


def build_index(
    corpus: str | None,
    out: str,
    *,
    embeddings: str | None = None,
    factory: str = "Flat",
    train_size: int = 100_000,
    shards: int = 1,
    nprobe: int | None = None,
    ef_search: int | None = None,
    eval_queries: int = 1000,
    k_eval: int = 20,
    seed: int = 0,
    bi_encoder: str | None = None,
    max_length: int = 256,
    actors: int = 1,
    columns: ColumnsConfig | None = None,
) -> dict:
    """Build the recall index in `out` and return its manifest.

    With `corpus`, the corpus is embedded into `embeddings` (default `<out>/embeddings`) unless that
    folder already holds its embeddings; with `corpus=None`, `embeddings` must name an existing folder.
    The manifest records `recall_at_<k_eval>` of the index against exact search on `eval_queries` corpus
    vectors sampled with `seed` (left out of the training sample); an exact index records 1.0 without
    measuring. A rebuild with the same embeddings and settings is a no-op (`"cached": true`).
    """
    from rerank_engine.recall.index import RecallIndex, exact_recall_at_k

    emb_dir = Path(embeddings) if embeddings else Path(out) / "embeddings"
    repeats = 0
    if corpus is not None:  # a doc id repeated with another text fails here, before any embedding
        repeats = check_corpus(corpus, columns or ColumnsConfig()).duplicate_rows
        emb_meta = embed_corpus(
            corpus, emb_dir, bi_encoder=bi_encoder, max_length=max_length, actors=actors, columns=columns
        )
    else:
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

    doc_ids, emb = load_embeddings(emb_dir, collapse_repeats=bool(repeats))
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
