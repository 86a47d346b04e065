"""The job's recall stages: a query log's queries → their candidates from a FAISS index, in the working
columns of `stages` (CAND_IDS, RECALL_SCORES, ...). `RecallStage` searches a whole index in one actor;
with `recall.shard_stages`, `QueryEmbedStage` embeds the queries once and one `ShardSearchStage` pool per
shard merges its shard's top-k into the running one. Like every stage, Ray-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from rerank_engine import schema
from rerank_engine.config import JobConfig, RecallConfig
from rerank_engine.errors import ConfigError
from rerank_engine.job.stages import (
    CAND_IDS,
    CAND_ROWS,
    QUERY_EMB,
    RECALL_SCORES,
    STATUS,
    _table,
    _with_work,
    column_texts,
    query_statuses,
    require_columns,
)


@dataclass(frozen=True)
class RecallSpec:
    """What the recall stages read of a job: the index, the candidates per query, how to search it, the
    bi-encoder it was built with (None: the bundled one) and the query column."""

    index_dir: str
    k: int = 20
    bi_encoder: str | None = None
    query_column: str = "query"
    recall: RecallConfig = field(default_factory=RecallConfig)

    @classmethod
    def of(cls, config: JobConfig, index_dir: str) -> RecallSpec:
        return cls(str(index_dir), config.k_recall, config.bi_encoder, config.columns.query, config.recall)


class QueryEncoder:
    """The bi-encoder an index was built with, and the query statuses of a batch (shared by the recall
    stages)."""

    def __init__(self, spec: RecallSpec, manifest: dict, threads: int = 1):
        from rerank_engine.recall.index import BiEncoder

        self.query_column = spec.query_column
        self.encoder = BiEncoder(
            spec.bi_encoder, threads=threads, max_length=int(manifest.get("max_length", 256))
        )
        built_with = manifest.get("model")
        if built_with and built_with != self.encoder.model_id:
            raise ConfigError(
                f"index {spec.index_dir} was built with bi-encoder {built_with}, "
                f"but bi_encoder resolves to {self.encoder.model_id}"
            )

    def __call__(self, batch: pa.Table) -> tuple[list[str | None], list[int], np.ndarray]:
        """(row statuses, rows that can be searched, their embeddings float32 [len(ok), dim])."""
        qcol = self.query_column
        require_columns(batch, [qcol], "recall")
        status = query_statuses(batch, qcol)
        ok = [i for i, s in enumerate(status) if s is None]
        queries = column_texts(batch.column(qcol)) if ok else []
        return status, ok, self.encoder.encode([queries[i] for i in ok])


def _recall_columns(batch: pa.Table, status, ids: list[list[str]], scores: list[list[float]]) -> pa.Table:
    """The recall stage's output columns; a searchable query for which nothing was found (an approximate
    index can find fewer than k) gets `no_candidates`."""
    status = [schema.NO_CANDIDATES if s is None and not ids[i] else s for i, s in enumerate(status)]
    return _with_work(
        batch,
        status=pa.array(status, pa.string()),
        cand_ids=pa.array(ids, pa.list_(pa.string())),
        recall_scores=pa.array(scores, pa.list_(pa.float32())),
        recall_ranks=pa.array([list(range(1, len(r) + 1)) for r in ids], pa.list_(pa.int32())),
    )


class RecallStage:
    """Bi-encoder + FAISS top-k: `CAND_IDS`, `RECALL_SCORES`, `RECALL_RANKS`."""

    def __init__(self, spec: RecallSpec, threads: int = 1):
        from rerank_engine.recall.index import RecallIndex

        self.k = spec.k
        self.index = RecallIndex.load(  # memory-mapped: the node's recall actors share its pages
            spec.index_dir, nprobe=spec.recall.nprobe, ef_search=spec.recall.ef_search
        )
        self.encode = QueryEncoder(spec, self.index.manifest, threads)

    @property
    def model_id(self) -> str:
        return self.encode.encoder.model_id

    def __call__(self, batch) -> pa.Table:
        batch = _table(batch)
        status, ok, emb = self.encode(batch)
        ids: list[list[str]] = [[] for _ in status]
        scores: list[list[float]] = [[] for _ in status]
        if ok:
            s, d = self.index.search(emb, self.k)
            for row, i in enumerate(ok):
                found = [j for j, x in enumerate(d[row]) if x is not None]  # an IVF may find fewer than k
                ids[i] = [str(d[row][j]) for j in found]
                scores[i] = [float(s[row][j]) for j in found]
        return _recall_columns(batch, status, ids, scores)


# Sharded recall across nodes (recall.shard_stages): the query embeddings and the running top-k travel as
# columns through one stage per shard; each stage holds one shard and merges its hits into the running
# list (by score, ties by corpus row, exactly as `RecallIndex.search` merges shards in one process).


class QueryEmbedStage:
    """Embeds the queries for the shard stages: `STATUS`, `QUERY_EMB`, and an empty running top-k."""

    def __init__(self, spec: RecallSpec, threads: int = 1):
        from rerank_engine.recall.index import RecallIndex

        self.encode = QueryEncoder(spec, RecallIndex.read_manifest(spec.index_dir), threads)

    def __call__(self, batch) -> pa.Table:
        batch = _table(batch)
        status, ok, emb = self.encode(batch)
        full = np.zeros((len(status), emb.shape[1]), dtype=np.float32)
        full[ok] = emb
        empty = [[] for _ in status]
        return _with_work(
            batch,
            status=pa.array(status, pa.string()),
            query_emb=pa.FixedSizeListArray.from_arrays(pa.array(full.ravel()), emb.shape[1]),
            cand_ids=pa.array(empty, pa.list_(pa.string())),
            recall_scores=pa.array(empty, pa.list_(pa.float32())),
            cand_rows=pa.array(empty, pa.list_(pa.int64())),
        )


class ShardSearchStage:
    """Searches one shard and merges its top-k into the running one; the last shard's stage writes the
    recall columns `RecallStage` writes and drops the embeddings."""

    def __init__(self, spec: RecallSpec, shard: int, last: bool):
        from rerank_engine.recall.index import RecallIndex

        self.k, self.last = spec.k, last
        self.index = RecallIndex.load(
            spec.index_dir, shard=shard, nprobe=spec.recall.nprobe, ef_search=spec.recall.ef_search
        )

    def __call__(self, batch) -> pa.Table:
        batch = _table(batch)
        require_columns(batch, [STATUS, QUERY_EMB, CAND_IDS, RECALL_SCORES, CAND_ROWS], "shard")
        status = batch.column(STATUS).to_pylist()
        ok = [i for i, s in enumerate(status) if s is None]
        ids = batch.column(CAND_IDS).to_pylist()
        scores = batch.column(RECALL_SCORES).to_pylist()
        rows = batch.column(CAND_ROWS).to_pylist()
        if ok:
            dim = batch.schema.field(QUERY_EMB).type.list_size
            emb = batch.column(QUERY_EMB).combine_chunks().flatten().to_numpy().reshape(-1, dim)[ok]
            s, r = self.index.search_rows(emb, self.k)
            for row, i in enumerate(ok):
                hits = [
                    (
                        float(s[row][j]),
                        int(r[row][j]),
                        str(self.index.doc_ids[r[row][j] - self.index.row_offset]),
                    )
                    for j in range(r.shape[1])
                    if r[row][j] >= 0
                ]
                merged = sorted(
                    [*zip(scores[i], rows[i], ids[i], strict=True), *hits], key=lambda h: (-h[0], h[1])
                )
                merged = merged[: self.k]
                scores[i], rows[i], ids[i] = (
                    [h[0] for h in merged],
                    [h[1] for h in merged],
                    [h[2] for h in merged],
                )
        if self.last:
            return _recall_columns(batch.drop_columns([QUERY_EMB, CAND_ROWS]), status, ids, scores)
        return _with_work(
            batch,
            cand_ids=pa.array(ids, pa.list_(pa.string())),
            recall_scores=pa.array(scores, pa.list_(pa.float32())),
            cand_rows=pa.array(rows, pa.list_(pa.int64())),
        )


# -- the corpus embedding of the index build (pipeline.embedding_pipeline) ----------------------------------


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
