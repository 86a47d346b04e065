"""Every input query row in the output exactly once, checked in memory that does not grow with the ids'
lengths: the input's query ids and the output's are compared as sorted 16-byte digests (80 MB for 5M
rows), read a batch at a time; the ids' text is read again only to name examples when something is wrong.

    ids = InputIds.read(files, filesystem, "query_id")   # before the run
    ids.verify(table, "query_id", exploded)              # after it: raises naming missing / extra ids
    ids.verify_digests(parts, id_column, rows=None)      # the same on digests read a file at a time

Light module: numpy and pyarrow only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rerank_engine import schema
from rerank_engine.errors import RerankEngineError

DIGEST_BYTES = 16
DIGEST = f"S{DIGEST_BYTES}"
BATCH_ROWS = 65_536
_NULL = b"\x00null"  # a missing id: no string encodes to it (ids are hashed with a leading \x01)


def digests(ids: Iterable[str | None]) -> np.ndarray:
    """One 16-byte BLAKE2b digest (numpy S16) per id, unsorted."""
    values = list(ids)
    out = np.empty(len(values), dtype=DIGEST)
    for i, v in enumerate(values):
        blob = _NULL if v is None else b"\x01" + str(v).encode("utf-8", errors="surrogateescape")
        out[i] = hashlib.blake2b(blob, digest_size=DIGEST_BYTES).digest()
    return out


def _counts(sorted_digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.unique(sorted_digests, return_counts=True)


def _difference(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    """The digests that `a` holds more often than `b` (a multiset difference), and how many rows."""
    va, ca = _counts(a)
    vb, cb = _counts(b)
    at = np.minimum(np.searchsorted(vb, va), max(0, len(vb) - 1))
    in_b = (vb[at] == va) if len(vb) else np.zeros(len(va), dtype=bool)
    more = ca - np.where(in_b, cb[at] if len(vb) else 0, 0)
    return va[more > 0], int(more[more > 0].sum())


@dataclass(frozen=True)
class InputIds:
    """The query ids of the input files, as sorted digests, and where to read their text again."""

    sorted_digests: np.ndarray
    files: tuple[str, ...]
    filesystem: object
    column: str

    @classmethod
    def read(cls, files: Iterable[str], filesystem, column: str) -> InputIds:
        files = tuple(files)
        parts = [digests(batch.column(0).to_pylist()) for batch in _batches(files, filesystem, column)]
        found = np.concatenate(parts) if parts else np.empty(0, dtype=DIGEST)
        return cls(np.sort(found), files, filesystem, column)

    def __len__(self) -> int:
        return len(self.sorted_digests)

    def repeated(self, examples: int = 5) -> tuple[int, list[str]]:
        """How many ids occur more than once, and the first few of them."""
        values, counts = _counts(self.sorted_digests)
        repeated = values[counts > 1]
        return len(repeated), (self.examples(repeated, examples) if len(repeated) else [])

    def examples(self, wanted: np.ndarray, n: int = 5) -> list[str | None]:
        """Up to `n` distinct input ids whose digests are in `wanted`, in input order."""
        found: list[str | None] = []
        for batch in _batches(self.files, self.filesystem, self.column):
            ids = batch.column(0).to_pylist()
            for i in np.flatnonzero(np.isin(digests(ids), wanted)):
                if ids[i] not in found:
                    found.append(ids[i])
                if len(found) == n:
                    return found
        return found

    def verify(self, table: pa.Table | None, id_col: str, exploded: bool) -> None:
        """Every input query row appears in `table` exactly once (exploded: as its head row,
        `schema.exploded_heads`, and no row is of an id the input lacks); otherwise a RerankEngineError
        naming how many rows are missing and extra, with examples."""
        if table is None:
            return self.verify_digests([], lambda: None)
        column = table.column(id_col)
        heads = schema.exploded_heads(table).column(id_col) if exploded else column
        rows = [ids_digests(column)] if exploded else None
        self.verify_digests([ids_digests(heads)], lambda: column, rows=rows)

    def verify_digests(
        self,
        parts: list[np.ndarray],
        id_column: Callable[[], pa.ChunkedArray | None],
        rows: list[np.ndarray] | None = None,
    ) -> None:
        """`verify` on the digests (`ids_digests`, in parts) of the output rows that stand for input rows,
        and, for an exploded output, of all its `rows`; `id_column()` gives the output's ids again, read
        only when something is wrong, to name the extra ones."""
        got = np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=DIGEST)
        expected = self.sorted_digests
        strays = np.empty(0, dtype=DIGEST)  # exploded rows (ranks 2, 3, ...) of an id the input lacks
        if rows:
            distinct = np.unique(np.concatenate(rows))
            strays = distinct[~np.isin(distinct, expected)]
        if len(got) == len(expected) and np.array_equal(got, expected) and not len(strays):
            return
        missing, n_missing = _difference(expected, got)
        extra, n_extra = _difference(got, expected)
        extra = np.union1d(extra, strays)
        n_extra += len(np.setdiff1d(strays, got))
        column = id_column()
        ids = column.to_pylist() if column is not None else []  # only now, to name examples
        extra_ids = [ids[i] for i in np.flatnonzero(np.isin(digests(ids), extra))]
        raise RerankEngineError(
            f"output check failed: {n_missing} query rows missing (e.g. {self.examples(missing)}), "
            f"{n_extra} extra (e.g. {list(dict.fromkeys(extra_ids))[:5]})"
        )


def ids_digests(column: pa.ChunkedArray) -> np.ndarray:
    """The digests of an id column, a chunk at a time (unsorted)."""
    parts = [digests(chunk.to_pylist()) for chunk in column.chunks]
    return np.concatenate(parts) if parts else np.empty(0, dtype=DIGEST)


def _batches(files: Iterable[str], filesystem, column: str):
    for f in files:
        with pq.ParquetFile(f, filesystem=filesystem) as reader:
            yield from reader.iter_batches(batch_size=BATCH_ROWS, columns=[column])
