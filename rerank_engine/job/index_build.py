"""The index-building job: corpus → bi-encoder embeddings on Ray Data (`pipeline.embedding_pipeline`,
written to Parquet) → FAISS index (`recall.build.index_from_embeddings`).

    manifest = build_index("corpus.parquet", "index/", factory="IVF4096,Flat")

Each step is skipped when its output already matches its inputs: the embeddings are reused while the
corpus file and the model are unchanged, so re-indexing with another factory does not re-embed.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq

from rerank_engine import schema
from rerank_engine.config import ColumnsConfig, EmbedConfig
from rerank_engine.recall.build import EMBEDDINGS_META, index_from_embeddings, read_embeddings_meta
from rerank_engine.recall.checks import check_corpus
from rerank_engine.serving.hashing import file_hash


def embed_corpus(
    corpus: str,
    out: str | Path,
    *,
    bi_encoder: str | None = None,
    max_length: int = 256,
    embed: EmbedConfig | None = None,
    columns: ColumnsConfig | None = None,
) -> dict:
    """Embed a corpus Parquet into `out` (Parquet files + `_embeddings.json`); a no-op when `out` already
    holds this corpus file's embeddings by this model at this max_length (returns the meta with
    `"cached": true`). Written to a staging folder and renamed into place when complete."""
    from rerank_engine.job.pipeline import embedding_pipeline
    from rerank_engine.job.ray_session import ensure_ray
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
    embedding_pipeline(
        corpus, read_cols, n_rows, staging, embed=embed or EmbedConfig(), stage=stage, doc_id=cols.doc_id
    )
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
    embed: EmbedConfig | None = None,
    columns: ColumnsConfig | None = None,
) -> dict:
    """Build the recall index in `out` and return its manifest.

    With `corpus`, the corpus is embedded into `embeddings` (default `<out>/embeddings`) unless that
    folder already holds its embeddings; with `corpus=None`, `embeddings` must name an existing folder.
    The index and its recall@k: `recall.build.index_from_embeddings`.
    """
    emb_dir = Path(embeddings) if embeddings else Path(out) / "embeddings"
    repeats = 0
    if corpus is not None:  # a doc without text, or a doc id repeated with another text, fails here
        repeats = check_corpus(corpus, columns or ColumnsConfig()).duplicate_rows
        embed_corpus(
            corpus, emb_dir, bi_encoder=bi_encoder, max_length=max_length, embed=embed, columns=columns
        )
    return index_from_embeddings(
        emb_dir,
        out,
        factory=factory,
        train_size=train_size,
        shards=shards,
        nprobe=nprobe,
        ef_search=ef_search,
        eval_queries=eval_queries,
        k_eval=k_eval,
        seed=seed,
        collapse_repeats=bool(repeats),
    )
