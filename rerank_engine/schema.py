"""Input checks and the output schema of the batch job.

Light module: pyarrow only. Whole-file problems raise InputError naming the file or column and what was
expected, before any model is loaded; row problems become a per-row `status` in the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from rerank_engine.errors import InputError

# Row statuses written to the output `status` column.
OK = "ok"
NO_RELEVANT = "no_relevant"
EMPTY_QUERY = "empty_query"
INVALID_QUERY = "invalid_query"
NO_CANDIDATES = "no_candidates"
UNKNOWN_CANDIDATES = "unknown_candidates"
NONFINITE_SCORE = "nonfinite_score"
STATUSES = (OK, NO_RELEVANT, EMPTY_QUERY, INVALID_QUERY, NO_CANDIDATES, UNKNOWN_CANDIDATES, NONFINITE_SCORE)

# What a row's `score`s are, written to the output `score_kind` column (`score_policy.ScorePolicy.kind`).
# Both are probabilities of relevance in [0, 1], fp32; only the logit they are the sigmoid of differs.
RERANKER_PROBABILITY = "reranker_probability"  # sigmoid(logit), the cross-encoder alone
FUSED_PROBABILITY = "fused_probability"  # sigmoid(scale · (logit + w · recall_score) + bias), fusion.json
SCORE_KINDS = (RERANKER_PROBABILITY, FUSED_PROBABILITY)

RESULT_TYPE = pa.struct(
    [
        ("doc_id", pa.string()),
        ("rank", pa.int32()),
        # probability of relevance, fp32: sigmoid(logit), or the fused score (the row's `score_kind`)
        ("score", pa.float32()),
        ("logit", pa.float32()),  # the cross-encoder's own, never fused
        ("recall_score", pa.float32()),  # bi-encoder cosine; null in logged-candidates mode
        ("recall_rank", pa.int32()),  # 1-based position in the recall (or logged) list
    ]
)

# The namespace of the job's working columns between stages (rerank_engine.job.stages): never in the output,
# and an input column in it is refused (check_query_schema), so no input column can collide with one.
WORK_PREFIX = "__rerank_"

# Columns the job adds; everything else in the input is passed through unchanged.
OUTPUT_FIELDS = [
    pa.field("results", pa.list_(RESULT_TYPE)),
    pa.field("n_candidates", pa.int32()),
    pa.field("n_kept", pa.int32()),
    # the best candidate's score, handed on or not (under the threshold: how near it came); null when
    # the row was not ranked (an error status)
    pa.field("top_score", pa.float32()),
    pa.field("status", pa.string()),
    pa.field("threshold", pa.float32()),  # applied to `score`: kept when score >= threshold
    pa.field("score_kind", pa.string()),  # what `score` is: one of SCORE_KINDS
    pa.field("reranker_model", pa.string()),
    pa.field("recall_model", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("n_tokens", pa.int64()),  # diagnostics: real tokens scored for this query
    pa.field("n_padded_tokens", pa.float64()),  # its share of the padded tokens of its batches
    pa.field("provider", pa.string()),  # onnxruntime provider that scored it
    pa.field("n_cached", pa.int32()),  # candidates whose score came from the score cache
    # (query, window) rows scored for this query: one per scored candidate, or with chunk_max its windows
    pa.field("windows_scored", pa.int32()),
    pa.field("n_unknown", pa.int32()),  # candidates dropped: their doc id is not in the corpus
]

EXPLODED_FIELDS = [
    pa.field("doc_id", pa.string()),
    pa.field("rank", pa.int32()),
    pa.field("score", pa.float32()),
    pa.field("logit", pa.float32()),
    pa.field("recall_score", pa.float32()),
    pa.field("recall_rank", pa.int32()),
]


def exploded_heads(table: pa.Table) -> pa.Table:
    """The rows of an exploded output that stand for its input rows, one each: an input row's first kept
    pair (rank 1, as kept pairs are ranked from 1), or its one row with none kept (rank null). Its other
    rows (ranks 2, 3, ...) repeat its per-query columns. Counting and checking heads counts an input row
    once even where its query id repeats."""
    return table.filter(pc.fill_null(pc.equal(table.column("rank"), 1), True))


@dataclass(frozen=True)
class QueryColumns:
    query_id: str = "query_id"
    query: str = "query"
    candidates: str = "candidates"


@dataclass(frozen=True)
class CorpusColumns:
    doc_id: str = "doc_id"
    text: str = "text"
    title: str = "title"


def passage_texts(table: pa.Table, text: str, title: str) -> list:
    """A corpus table's passages as the reranker and the bi-encoder read them: "title. text" where the
    `title` column is present and both are non-empty, else the text (None where the text is null)."""
    texts = table.column(text).to_pylist()
    if title not in table.column_names:
        return texts
    titles = table.column(title).to_pylist()
    return [f"{t}. {x}" if t and x else x for t, x in zip(titles, texts, strict=True)]


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def check_query_schema(schema: pa.Schema, cols: QueryColumns, where: str, *, exploded: bool = False) -> bool:
    """Raise InputError unless `schema` has a string query column and a query id column, and no column the
    job writes (with `exploded`, the exploded output's columns too). Returns True when it carries a
    candidates column (logged-candidates mode)."""
    names = schema.names
    for role, name in (("query id", cols.query_id), ("query", cols.query)):
        if name not in names:
            raise InputError(f"{where}: missing {role} column {name!r}; columns present: {names}")
    qtype = schema.field(cols.query).type
    if not _is_string(qtype):
        raise InputError(f"{where}: column {cols.query!r} must hold strings, found {qtype}")
    idtype = schema.field(cols.query_id).type
    if not (_is_string(idtype) or pa.types.is_integer(idtype)):
        raise InputError(f"{where}: column {cols.query_id!r} must hold strings or integers, found {idtype}")
    for reserved in (f.name for f in OUTPUT_FIELDS):
        if reserved in names:
            raise InputError(f"{where}: column {reserved!r} is written by the job; rename it in the input")
    for reserved in (f.name for f in EXPLODED_FIELDS) if exploded else ():
        if reserved in names:
            raise InputError(
                f"{where}: column {reserved!r} is written by the job (exploded: true); rename it in the input"
            )
    for name in names:
        if name.startswith(WORK_PREFIX):
            raise InputError(
                f"{where}: column {name!r} is in the namespace of the job's working columns "
                f"({WORK_PREFIX}*); rename it in the input"
            )
    if cols.candidates in names:
        ctype = schema.field(cols.candidates).type
        if not (pa.types.is_list(ctype) or pa.types.is_large_list(ctype)) or not (
            _is_string(ctype.value_type) or pa.types.is_integer(ctype.value_type)
        ):
            raise InputError(
                f"{where}: column {cols.candidates!r} must be a list of doc ids (strings), found {ctype}"
            )
        return True
    return False


UTF8_BATCH_ROWS = 65_536


def check_utf8(batch: pa.RecordBatch, where: str, first_row: int = 0) -> None:
    """Raise InputError unless every string in `batch` (its string columns, and the values of its lists of
    strings) is valid UTF-8, naming the column, the row (`first_row` + its index in the batch, counted from
    0) and the bytes. Parquet readers do not check UTF-8, and `to_pylist` on such a column fails with a bare
    UnicodeDecodeError. Arrow validates; the bad row is looked for only when it fails."""
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if not _holds_strings(column.type):
            continue
        is_list = not _is_string(column.type)
        try:
            column.validate(full=True)
        except pa.ArrowInvalid:
            found = _first_invalid_utf8(column.flatten() if is_list else column)
            if found is None:
                raise  # Arrow found something else wrong
            i, raw, bad = found
            row = first_row + (int(pc.list_parent_indices(column)[i].as_py()) if is_list else i)
            raise InputError(
                f"{where}: column {name!r}, row {row} (counted from 0) holds {_shown(raw, bad)}, which is "
                "not valid UTF-8; expected UTF-8 strings"
            ) from None


def _holds_strings(t: pa.DataType) -> bool:
    """A string column, or a list of strings."""
    is_list = pa.types.is_list(t) or pa.types.is_large_list(t)
    return _is_string(t) or (is_list and _is_string(t.value_type))


def _first_invalid_utf8(values: pa.Array) -> tuple[int, bytes, int] | None:
    """(index, bytes, offset of the first bad byte) of the first value of a string array that is not
    UTF-8, or None."""
    for i, raw in enumerate(values.cast(pa.large_binary()).to_pylist()):
        try:
            (raw or b"").decode("utf-8")
        except UnicodeDecodeError as exc:
            return i, raw, exc.start
    return None


def check_file_utf8(reader, columns: Sequence[str], where: str) -> None:
    """`check_utf8` on `columns` of a `pyarrow.parquet.ParquetFile`, read a batch at a time (only those of
    them that hold strings or lists of strings)."""
    file_schema = reader.schema_arrow
    wanted = [c for c in columns if c in file_schema.names and _holds_strings(file_schema.field(c).type)]
    if not wanted:
        return
    first_row = 0
    for batch in reader.iter_batches(batch_size=UTF8_BATCH_ROWS, columns=wanted):
        check_utf8(batch, where, first_row)
        first_row += batch.num_rows


def _shown(raw: bytes, bad: int, width: int = 40) -> str:
    """`raw` as a bytes repr, cut to `width` bytes around byte `bad` where it is longer."""
    if len(raw) <= width:
        return repr(raw)
    start = max(0, min(bad - width // 2, len(raw) - width))
    cut = repr(raw[start : start + width])
    return ("…" if start else "") + cut + ("…" if start + width < len(raw) else "")


def check_corpus_schema(schema: pa.Schema, cols: CorpusColumns, where: str) -> None:
    names = schema.names
    for role, name in (("doc id", cols.doc_id), ("text", cols.text)):
        if name not in names:
            raise InputError(f"{where}: missing corpus {role} column {name!r}; columns present: {names}")
    if not _is_string(schema.field(cols.text).type):
        raise InputError(
            f"{where}: corpus column {cols.text!r} must hold strings, found {schema.field(cols.text).type}"
        )


def output_schema(input_schema: pa.Schema, drop: Sequence[str] = ()) -> pa.Schema:
    kept = [f for f in input_schema if f.name not in drop]
    return pa.schema(kept + OUTPUT_FIELDS)


def exploded_output_schema(input_schema: pa.Schema, drop: Sequence[str] = ()) -> pa.Schema:
    """The output with `exploded: true` (`job.stages.explode`): one row per kept pair, the `results`
    list replaced by one pair's fields."""
    plain = output_schema(input_schema, drop)
    return pa.schema([f for f in plain if f.name != "results"] + EXPLODED_FIELDS)
