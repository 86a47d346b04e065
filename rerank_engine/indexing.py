"""Corpus → recall index, embedding in Ray Data actors (GPU where the cluster has one)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rerank_engine import schema
from rerank_engine.config import ColumnsConfig
from rerank_engine.hashing import file_hash


class EmbedStage:
    """doc texts → unit embeddings (one callable class per actor, model loaded once)."""

    def __init__(self, bi_encoder: str | None, max_length: int, text_col: str, title_col: str, threads: int):
        from rerank_engine.recall import BiEncoder

        self.encoder = BiEncoder(bi_encoder, max_length=max_length, threads=threads)
        self.text_col, self.title_col = text_col, title_col

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column(self.text_col).to_pylist()
        if self.title_col in batch.column_names:
            titles = batch.column(self.title_col).to_pylist()
            texts = [f"{t}. {x}" if t and x else x for t, x in zip(titles, texts, strict=True)]
        emb = self.encoder.encode([t if isinstance(t, str) else "" for t in texts])
        return pa.table(
            {
                "doc_id": batch.column("doc_id").cast(pa.string()),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1]),
            }
        )


def build_index(
    corpus: str,
    out: str,
    *,
    bi_encoder: str | None = None,
    max_length: int = 256,
    actors: int = 1,
    columns: ColumnsConfig | None = None,
) -> dict:
    from rerank_engine.job import ensure_ray
    from rerank_engine.recall import BiEncoder, RecallIndex

    cols = columns or ColumnsConfig()
    table_schema = pq.read_schema(corpus)
    schema.check_corpus_schema(table_schema, schema.CorpusColumns(cols.doc_id, cols.text, cols.title), corpus)
    model_id = BiEncoder.describe(bi_encoder)
    corpus_hash = file_hash(corpus)
    manifest_path = Path(out) / RecallIndex.MANIFEST_FILE
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("corpus_hash") == corpus_hash and old.get("model") == model_id:
            return {**old, "cached": True}

    ray = ensure_ray()
    from ray.data import ActorPoolStrategy

    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    read_cols = [c for c in (cols.doc_id, cols.text, cols.title) if c in table_schema.names]
    n_rows = pq.ParquetFile(corpus).metadata.num_rows
    ds = ray.data.read_parquet(
        corpus, columns=read_cols, num_cpus=0.1, override_num_blocks=max(1, n_rows // 512)
    )
    if cols.doc_id != "doc_id":
        ds = ds.rename_columns({cols.doc_id: "doc_id"})
    ds = ds.map_batches(
        EmbedStage,
        fn_constructor_kwargs={
            "bi_encoder": bi_encoder,
            "max_length": max_length,
            "text_col": cols.text,
            "title_col": cols.title,
            "threads": 2,
        },
        batch_format="pyarrow",
        batch_size=256,
        compute=ActorPoolStrategy(size=actors),
        num_cpus=1,
        num_gpus=gpus,
    )
    ids, chunks = [], []
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        ids.extend(batch.column("doc_id").to_pylist())
        emb = batch.column("embedding").combine_chunks()
        chunks.append(emb.flatten().to_numpy().reshape(len(emb), -1))
    emb = np.concatenate(chunks).astype(np.float32)
    if len(set(ids)) != len(ids):
        dup = next(d for d in ids if ids.count(d) > 1)
        raise schema.InputError(f"{corpus}: doc_id {dup!r} appears more than once; doc ids must be unique")
    index = RecallIndex.build(
        emb, ids, model=model_id, max_length=max_length, corpus=str(corpus), corpus_hash=corpus_hash
    )
    index.save(out)
    return index.manifest
