"""The batch job's stages: one callable class per stateful stage, a plain function for the rest.

Each takes and returns a `pyarrow.Table` with one row per query (candidates as list columns), checks the
columns it needs on entry, and knows nothing of Ray or resources, so a test can call it on a hand-made
table. The working columns between stages (STATUS, CAND_IDS, ... below) live in a namespace of their own,
`schema.WORK_PREFIX` ("__rerank_"): `finalize` drops them, and an input column in it is refused up front,
so every other input column, whatever its name, is passed through.

Each stage is built from the parts of the job's config it reads (`ColumnsConfig`, `TokenizerConfig`,
the rerank `EngineConfig`, a `score_cache.CacheRef`), never the whole `JobConfig`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa

from rerank_engine import schema
from rerank_engine.config import ColumnsConfig, EngineConfig, TokenizerConfig
from rerank_engine.errors import ConfigError, InputError
from rerank_engine.job.score_cache import (
    KEY_BYTES,
    CacheRef,
    ScoreCache,
    as_arrow_keys,
    as_numpy_keys,
    pair_keys,
)
from rerank_engine.quality.score_policy import ScorePolicy
from rerank_engine.serving.query_identity import QueryNormaliser
from rerank_engine.serving.tokenization import TokenizedPairs
from rerank_engine.serving.validation import EMPTY_TEXT, text_problem

_STATUS_OF_PROBLEM = {EMPTY_TEXT: schema.EMPTY_QUERY}

# The working columns (in schema.WORK_PREFIX's namespace): recall → tokenize → rerank → finalize.
STATUS, CAND_IDS, RECALL_SCORES, RECALL_RANKS = (
    schema.WORK_PREFIX + n for n in ("status", "cand_ids", "recall_scores", "recall_ranks")
)
QUERY_EMB, CAND_ROWS = schema.WORK_PREFIX + "query_emb", schema.WORK_PREFIX + "cand_rows"  # shard stages
N_UNKNOWN, IDS_FLAT, TYPES_FLAT, LENGTHS = (
    schema.WORK_PREFIX + n for n in ("n_unknown", "ids_flat", "types_flat", "lengths")
)
CACHED_LOGITS, PAIR_KEYS, LOGITS = (schema.WORK_PREFIX + n for n in ("cached_logits", "pair_keys", "logits"))
WINDOWS = schema.WORK_PREFIX + "windows"  # per pair to score: its rows in IDS_FLAT / LENGTHS (chunk_max)


def _table(batch) -> pa.Table:
    return batch if isinstance(batch, pa.Table) else pa.table(batch)


def require_columns(batch: pa.Table, needed: Iterable[str], stage: str) -> None:
    missing = [c for c in needed if c not in batch.column_names]
    if missing:
        raise InputError(f"stage {stage}: missing columns {missing}; columns present: {batch.column_names}")


def _list_values(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, per-row lengths) of a list column; null lists count as empty."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    lengths = arr.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    return arr.flatten().to_numpy(zero_copy_only=False), lengths


def _split(flat: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    return np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []


def _key_lists(keys: np.ndarray, lengths: Sequence[int]) -> pa.Array:
    """Per-row lists of 16-byte pair keys, built from the flat keys without a trip through Python bytes."""
    offsets = pa.array(np.cumsum([0, *lengths]), pa.int32())
    return pa.ListArray.from_arrays(offsets, as_arrow_keys(keys))


def column_texts(col: pa.ChunkedArray) -> list[str | None]:
    """A string column as Python strings. Invalid UTF-8 (which Parquet readers do not check) decodes with
    lone surrogates in place of the bad bytes, so `text_problem` flags the row instead of the batch
    crashing on `to_pylist`."""
    raw = col.cast(pa.large_binary()).to_pylist()
    return [None if b is None else b.decode("utf-8", errors="surrogateescape") for b in raw]


def query_statuses(batch: pa.Table, query_col: str) -> list[str | None]:
    """None for a query that can be scored, else its row status."""
    out = []
    for q in column_texts(batch.column(query_col)):
        problem = text_problem(q if q is not None else "")
        out.append(None if problem is None else _STATUS_OF_PROBLEM.get(problem, schema.INVALID_QUERY))
    return out


def _with(batch: pa.Table, **columns) -> pa.Table:
    for name, values in columns.items():
        if name in batch.column_names:
            batch = batch.set_column(batch.column_names.index(name), name, values)
        else:
            batch = batch.append_column(name, values)
    return batch


def _with_work(batch: pa.Table, **columns) -> pa.Table:
    """Set working columns by their short names (`status=` sets STATUS)."""
    return _with(batch, **{schema.WORK_PREFIX + name: values for name, values in columns.items()})


# -- candidates (recall from an index: recall_stages.py) ----------------------------------------------------


def logged_candidates(batch, *, columns: ColumnsConfig) -> pa.Table:
    """Logged-candidates mode: the input's candidate list replaces recall (duplicates: first kept)."""
    batch = _table(batch)
    cols = columns
    require_columns(batch, [cols.query, cols.candidates], "logged_candidates")
    status = query_statuses(batch, cols.query)
    ids, ranks = [], []
    for i, cands in enumerate(batch.column(cols.candidates).to_pylist()):
        kept: dict[str, int] = {}
        for rank, d in enumerate(cands or [], start=1):
            if d is not None:
                kept.setdefault(str(d), rank)
        if status[i] is None and not kept:
            status[i] = schema.NO_CANDIDATES
        ids.append(list(kept) if status[i] is None else [])
        ranks.append(list(kept.values()) if status[i] is None else [])
    return _with_work(
        batch,
        status=pa.array(status, pa.string()),
        cand_ids=pa.array(ids, pa.list_(pa.string())),
        recall_scores=pa.array([None] * len(ids), pa.list_(pa.float32())),
        recall_ranks=pa.array(ranks, pa.list_(pa.int32())),
    )


# -- tokenize (CPU) ---------------------------------------------------------------------------------------


def load_corpus(path: str, columns: ColumnsConfig) -> dict[str, str]:
    """doc_id → passage text ("title. text" where a title column is present and non-empty). A corpus the
    job runs on has passed `recall.checks.check_corpus`, so every document has text; a document without
    one (in a corpus read unchecked) has no passage."""
    import pyarrow.parquet as pq

    cols = columns
    table = pq.read_table(path)
    schema.check_corpus_schema(table.schema, schema.CorpusColumns(cols.doc_id, cols.text, cols.title), path)
    ids = [str(d) for d in table.column(cols.doc_id).to_pylist()]
    texts = schema.passage_texts(table, cols.text, cols.title)
    return {d: t for d, t in zip(ids, texts, strict=True) if isinstance(t, str) and t.strip()}


class TokenizeStage:
    """Join passage text and tokenize every (query, candidate) pair: `IDS_FLAT`, `TYPES_FLAT`, `LENGTHS`,
    and `WINDOWS`, the rows each pair got (1 each, or with `tokenizer.long_passages: chunk_max` the
    windows of its passage, each a row of its own in `LENGTHS`).

    Candidates absent from the corpus are dropped (counted in `N_UNKNOWN`); a query left with none
    gets status `unknown_candidates`. With a score cache, pairs scored on earlier runs are not tokenized:
    `CACHED_LOGITS` holds their logits (NaN for the pairs still to score, which alone are tokenized) and
    `PAIR_KEYS` the keys of those, for the rerank stage to add to the cache.
    """

    def __init__(
        self,
        *,
        corpus_path: str,
        model_source: str,
        precisions: Sequence[str] = ("fp32",),
        columns: ColumnsConfig | None = None,
        tokenizer: TokenizerConfig | None = None,
        cache: CacheRef | None = None,
    ):
        """The tokenizer comes from `model_source` as this actor's node has it: an export folder is read
        where it is; a Hugging Face folder or hub id is exported into this node's cache (`precisions`, once
        per node: the rerank actors of the node wait for the same export) and read from there."""
        from rerank_engine.serving.exporting import resolve_export
        from rerank_engine.serving.tokenization import PairTokenizer

        columns = columns or ColumnsConfig()
        self.query_column = columns.query
        self.corpus = load_corpus(corpus_path, columns)
        self.tokenizer = PairTokenizer(resolve_export(model_source, precisions), tokenizer)
        self.query_key = QueryNormaliser.of(self.tokenizer.tokenizer)  # the score cache's query key
        self.cache = ScoreCache(cache.root, cache.namespace).load() if cache is not None else None

    def __call__(self, batch) -> pa.Table:
        batch = _table(batch)
        qcol = self.query_column
        require_columns(batch, [qcol, STATUS, CAND_IDS, RECALL_SCORES, RECALL_RANKS], "tokenize")
        status = batch.column(STATUS).to_pylist()
        queries = column_texts(batch.column(qcol))
        cand_ids = batch.column(CAND_IDS).to_pylist()
        rscores = batch.column(RECALL_SCORES).to_pylist()
        rranks = batch.column(RECALL_RANKS).to_pylist()
        flat_q, flat_p = [], []
        n_unknown = []
        for i, ids in enumerate(cand_ids):
            keep = [j for j, d in enumerate(ids) if d in self.corpus]
            n_unknown.append(len(ids) - len(keep))
            if status[i] is None and ids and not keep:
                status[i] = schema.UNKNOWN_CANDIDATES
            if status[i] is not None:
                keep = []
            cand_ids[i] = [ids[j] for j in keep]
            rranks[i] = [rranks[i][j] for j in keep]
            rscores[i] = None if rscores[i] is None else [rscores[i][j] for j in keep]
            flat_q.extend([queries[i]] * len(keep))
            flat_p.extend(self.corpus[ids[j]] for j in keep)
        counts = [len(c) for c in cand_ids]
        cached = np.full(len(flat_p), np.nan, dtype=np.float32)
        keys = None
        if self.cache is not None:
            flat_d = [d for ids in cand_ids for d in ids]
            row_key = [self.query_key(q) if n else "" for q, n in zip(queries, counts, strict=True)]
            keys = pair_keys(
                [k for k, n in zip(row_key, counts, strict=True) for _ in range(n)], flat_d, flat_p
            )
            cached = self.cache.lookup(keys)
            todo = np.isnan(cached)
            keys = keys[todo]
            row_starts = np.cumsum([0, *counts])
            counts_todo = [int(todo[row_starts[i] : row_starts[i + 1]].sum()) for i in range(len(counts))]
            flat_q = [q for q, t in zip(flat_q, todo, strict=True) if t]
            flat_p = [p for p, t in zip(flat_p, todo, strict=True) if t]
        else:
            counts_todo = counts
        pairs = self.tokenizer(flat_q, flat_p)
        windows = pairs.windows if pairs.windows is not None else np.ones(len(flat_p), np.int64)
        first_row = np.cumsum([0, *windows])  # each pair's first row (window) in `pairs`
        starts = first_row[np.cumsum([0, *counts_todo])]  # each query's first row
        ids_rows, types_rows, len_rows = [], [], []
        for i in range(len(counts_todo)):
            sl = slice(starts[i], starts[i + 1])
            ids_rows.append(
                np.concatenate(pairs.input_ids[sl]).astype(np.int32)
                if counts_todo[i]
                else np.zeros(0, np.int32)
            )
            types_rows.append(
                np.concatenate(pairs.token_type_ids[sl]).astype(np.int8)
                if counts_todo[i]
                else np.zeros(0, np.int8)
            )
            len_rows.append(pairs.lengths[sl].astype(np.int32))
        return _with_work(
            batch,
            status=pa.array(status, pa.string()),
            cand_ids=pa.array(cand_ids, pa.list_(pa.string())),
            recall_scores=pa.array(rscores, pa.list_(pa.float32())),
            recall_ranks=pa.array(rranks, pa.list_(pa.int32())),
            n_unknown=pa.array(n_unknown, pa.int32()),
            ids_flat=pa.array(ids_rows, pa.list_(pa.int32())),
            types_flat=pa.array(types_rows, pa.list_(pa.int8())),
            lengths=pa.array(len_rows, pa.list_(pa.int32())),
            windows=pa.array(_split(windows.astype(np.int32), np.asarray(counts_todo)), pa.list_(pa.int32())),
            cached_logits=pa.array(_split(cached, np.asarray(counts)), pa.list_(pa.float32())),
            pair_keys=(
                _key_lists(keys, counts_todo)
                if keys is not None
                else pa.nulls(len(counts), pa.list_(pa.binary(KEY_BYTES)))
            ),
        )


# -- rerank (GPU where present) --------------------------------------------------------------------------


class RerankStage:
    """Score every pair of the batch with the engine (bucketed across the whole batch): `LOGITS`, one per
    candidate. With `WINDOWS` (chunk_max) the rows are windows, and a candidate's logit is its best
    window's (the engine's rule); `windows_scored` counts the rows scored per query.

    Pairs the tokenize stage found in the score cache keep their cached logit (`n_cached` counts them);
    the newly scored ones are added to the cache."""

    def __init__(self, engine: EngineConfig, *, gpu: bool = False, cache: CacheRef | None = None):
        """`engine.model_dir` is the model source (`JobConfig.engine`): exported on this actor's node
        (the variants a GPU or a CPU needs; `gpu`: this actor has a GPU) and loaded from there."""
        from rerank_engine.serving.engine import CrossEncoderEngine
        from rerank_engine.serving.exporting import needed_precisions, resolve_export

        export_dir = resolve_export(engine.model_dir, needed_precisions(engine.precision, gpu=gpu))
        self.engine = CrossEncoderEngine(engine.model_copy(update={"model_dir": export_dir}))
        self.cache = None
        if cache is not None:
            if self.engine.precision != cache.precision:  # the cache read so far holds another precision
                raise ConfigError(
                    f"score cache {cache.root}: this rerank actor scores in {self.engine.precision}, "
                    f"the job expected {cache.precision}; set `precision` explicitly"
                )
            self.cache = ScoreCache(cache.root, cache.namespace)  # written to, never loaded here

    def __call__(self, batch) -> pa.Table:
        batch = _table(batch)
        require_columns(batch, [IDS_FLAT, TYPES_FLAT, LENGTHS], "rerank")
        flat_ids, _ = _list_values(batch.column(IDS_FLAT))
        flat_types, _ = _list_values(batch.column(TYPES_FLAT))
        lengths, windows_per_row = _list_values(batch.column(LENGTHS))  # one length per row (window)
        windows, per_row = None, windows_per_row  # per_row: pairs per query
        if WINDOWS in batch.column_names:
            windows, per_row = _list_values(batch.column(WINDOWS))
            windows = windows.astype(np.int64)
        pairs = TokenizedPairs(
            input_ids=[x.astype(np.int64) for x in _split(flat_ids, lengths)],
            token_type_ids=[x.astype(np.int64) for x in _split(flat_types, lengths)],
            lengths=lengths.astype(np.int64),
            windows=windows,
        )
        logits = np.zeros(0, np.float32)
        padded_share = np.zeros(len(per_row))
        real = np.zeros(len(per_row), dtype=np.int64)
        if len(pairs):
            result = self.engine.score_tokenized(pairs)
            logits = result.logits
            query_of_row = np.repeat(np.arange(len(per_row)), windows_per_row)
            real = np.bincount(query_of_row, weights=lengths, minlength=len(per_row)).astype(np.int64)
            padded_share = real / result.padding_efficiency
        n_cached = np.zeros(len(per_row), dtype=np.int32)
        if CACHED_LOGITS in batch.column_names:
            cached, per_row_all = _list_values(batch.column(CACHED_LOGITS))
            cached = cached.astype(np.float32)  # a writable copy
            todo = np.isnan(cached)
            if self.cache is not None and len(logits):
                self.cache.add(as_numpy_keys(batch.column(PAIR_KEYS).combine_chunks().flatten()), logits)
            cached[todo] = logits
            logits, per_row = cached, per_row_all
            n_cached = np.bincount(
                np.repeat(np.arange(len(per_row)), per_row), weights=~todo, minlength=len(per_row)
            ).astype(np.int32)
        provider = self.engine.providers[0]
        return _with(
            _with_work(batch, logits=pa.array(_split(logits, per_row), pa.list_(pa.float32()))),
            n_cached=pa.array(n_cached, pa.int32()),
            windows_scored=pa.array(windows_per_row.astype(np.int32), pa.int32()),
            n_tokens=pa.array(real, pa.int64()),
            n_padded_tokens=pa.array(padded_share, pa.float64()),
            provider=pa.array([provider] * len(per_row), pa.string()),
        )


# -- threshold and top-k (plain function) ---------------------------------------------------------------


def finalize(batch, *, k_rerank: int, policy: ScorePolicy, run_id: str) -> pa.Table:
    """Sort each query's candidates by score (ties by doc_id), keep top-k ≥ threshold, set status.

    The score, its threshold and the models come from `policy` (`rerank_engine.quality.score_policy`):
    sigmoid(logit), or the fused score of the logit and the recall cosine; the row's `score_kind` says
    which."""
    batch = _table(batch)
    require_columns(batch, [STATUS, CAND_IDS, RECALL_SCORES, RECALL_RANKS, LOGITS], "finalize")
    status = batch.column(STATUS).to_pylist()
    results, n_cands, n_kept, top_scores = [], [], [], []
    for i, (ids, logits, rscores, rranks) in enumerate(
        zip(
            batch.column(CAND_IDS).to_pylist(),
            batch.column(LOGITS).to_pylist(),
            batch.column(RECALL_SCORES).to_pylist(),
            batch.column(RECALL_RANKS).to_pylist(),
            strict=True,
        )
    ):
        logits = np.asarray(logits or [], dtype=np.float32)
        n_cands.append(len(ids))
        if status[i] is None and not np.all(np.isfinite(logits)):
            status[i] = schema.NONFINITE_SCORE
        if status[i] is not None:
            results.append([])
            n_kept.append(0)
            top_scores.append(None)
            continue
        # ordered by the (fused) logit: the same order as the probability, without fp32 saturation ties
        z, scores = policy.scores(logits, rscores)
        order = sorted(range(len(ids)), key=lambda j: (-z[j], ids[j]))[:k_rerank]
        passes = policy.keep(scores)
        kept = [j for j in order if passes[j]]
        top_scores.append(float(scores[order[0]]) if order else None)
        results.append(
            [
                {
                    "doc_id": ids[j],
                    "rank": r,
                    "score": float(scores[j]),
                    "logit": float(logits[j]),
                    "recall_score": None if rscores is None else rscores[j],
                    "recall_rank": rranks[j],
                }
                for r, j in enumerate(kept, start=1)
            ]
        )
        n_kept.append(len(kept))
        status[i] = schema.OK if kept else schema.NO_RELEVANT
    n = batch.num_rows
    out = _with(
        batch,
        results=pa.array(results, pa.list_(schema.RESULT_TYPE)),
        n_candidates=pa.array(n_cands, pa.int32()),
        n_kept=pa.array(n_kept, pa.int32()),
        top_score=pa.array(top_scores, pa.float32()),
        status=pa.array(status, pa.string()),
        threshold=pa.array([policy.threshold] * n, pa.float32()),
        score_kind=pa.array([policy.kind] * n, pa.string()),
        reranker_model=pa.array([policy.reranker_model] * n, pa.string()),
        recall_model=pa.array([policy.recall_model] * n, pa.string()),
        run_id=pa.array([run_id] * n, pa.string()),
    )
    if N_UNKNOWN in out.column_names:  # counted by the tokenize stage
        out = _with(out, n_unknown=out.column(N_UNKNOWN))
    for field in schema.OUTPUT_FIELDS:  # diagnostics absent when no rerank stage ran
        if field.name not in out.column_names:
            out = out.append_column(field, pa.nulls(n, field.type))
    written = {f.name for f in schema.OUTPUT_FIELDS}
    passed = [c for c in out.column_names if not c.startswith(schema.WORK_PREFIX) and c not in written]
    return out.select(passed + [f.name for f in schema.OUTPUT_FIELDS])


def explode(batch, *, query_id: str, query: str) -> pa.Table:
    """One row per kept (query, doc) pair; a query with none kept gets one row with a null doc_id.

    Columns are gathered with Arrow `take`, never through Python objects, so any value that came in
    (invalid UTF-8 included) goes out unchanged."""
    batch = _table(batch)
    results = batch.column("results").combine_chunks()
    n_kept = results.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(batch.num_rows), np.maximum(n_kept, 1))
    starts = results.offsets.to_numpy()[:-1]
    # index into the flattened results; null where a query kept nothing
    flat_index = [
        int(starts[r]) + k if n_kept[r] else None
        for r in range(batch.num_rows)
        for k in range(max(int(n_kept[r]), 1))
    ]
    kept = results.flatten().take(pa.array(flat_index, pa.int64()))
    out = batch.drop_columns(["results"]).take(pa.array(rows, pa.int64()))
    for f in schema.EXPLODED_FIELDS:
        out = out.append_column(f, kept.field(f.name))
    return out
