"""Scores already computed, kept across runs: skip (query, passage) pairs scored on earlier dates.

A logit is a pure function of the model, the scoring settings and the pair, so the cache is a memo:
a crashed run's entries are as good as a committed run's, and nothing about it needs exactly-once.

    <root>/<namespace>/part-<run>.parquet     compacted at the end of each successful run
    <root>/<namespace>/incoming/<uuid>.parquet  written by rerank actors, one file per batch

`namespace` hashes the model id (content hash of its weights), the precision that scores and the
tokenizer settings: a new model, int8 vs fp16, or another max_length never reads another's scores.
A pair's key is the first 16 bytes of BLAKE2b over (query key, doc_id, passage text): the query as the cross-
encoder's tokenizer reads it (`serving/query_identity.py`: texts it cannot tell apart share a key, a cased
model's "US" and "us" do not), the passage exactly, so an edited passage is scored again. Each file is written
under a temporary name and renamed, so readers never see half a file. Loaded, the cache is a sorted array of
16-byte keys and one of float32 logits (20 bytes a pair: 50 million pairs fit in 1 GB per tokenize actor).
`root` must be a path every node reads and writes.

Light module: numpy and pyarrow only.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

KEY_BYTES = 16
_SCHEMA = pa.schema([pa.field("key", pa.binary(KEY_BYTES)), pa.field("logit", pa.float32())])


# What a pair key is made of: 2 = the query as the cross-encoder's tokenizer normalises it (1 was
# `str.casefold`, which merged texts a cased model tells apart). Part of the namespace: another rule
# never reads a cache written under this one.
KEY_RULE = 2


def pair_keys(query_keys: Sequence[str], doc_ids: Sequence[str], passages: Sequence[str]) -> np.ndarray:
    """One 16-byte key per pair (numpy `S16`); `query_keys`: each pair's query as its `QueryNormaliser`
    gives it."""
    out = np.empty(len(query_keys), dtype=f"S{KEY_BYTES}")
    for i, (q, d, p) in enumerate(zip(query_keys, doc_ids, passages, strict=True)):
        blob = "\x1f".join((q, d, p)).encode("utf-8", errors="surrogateescape")
        out[i] = hashlib.blake2b(blob, digest_size=KEY_BYTES).digest()
    return out


def namespace(model_id: str, precision: str, tokenizer: dict) -> str:
    blob = json.dumps(
        {"model": model_id, "precision": precision, "tokenizer": tokenizer, "key_rule": KEY_RULE},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class CacheRef:
    """Which cache a job's stages read and write: its root folder, the namespace of this model, precision
    and tokenizer, and the precision the rerank actors must score in (the namespace's)."""

    root: str
    namespace: str
    precision: str


class ScoreCache:
    def __init__(self, root: str | Path, namespace: str):
        self.dir = Path(root) / namespace
        self.keys = np.empty(0, dtype=f"S{KEY_BYTES}")
        self.logits = np.empty(0, dtype=np.float32)

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.parquet")) + sorted(self.dir.glob("incoming/*.parquet"))

    def load(self) -> ScoreCache:
        """Read every committed and incoming file (a repeated key keeps its first logit)."""
        files = self.files()
        if files:
            table = pq.read_table([str(f) for f in files], schema=_SCHEMA, partitioning=None)
            keys = as_numpy_keys(table.column("key"))
            logits = table.column("logit").to_numpy().astype(np.float32)
            self.keys, first = np.unique(keys, return_index=True)
            self.logits = logits[first]
        return self

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Cached logit per key, NaN where the pair has not been scored."""
        out = np.full(len(keys), np.nan, dtype=np.float32)
        if len(self.keys) and len(keys):
            at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
            hit = self.keys[at] == keys
            out[hit] = self.logits[at[hit]]
        return out

    def add(self, keys: np.ndarray, logits: np.ndarray) -> None:
        """Write newly scored pairs (finite logits only) as one incoming file."""
        finite = np.isfinite(logits)
        if not finite.any():
            return
        table = pa.table(
            {"key": as_arrow_keys(keys[finite]), "logit": logits[finite]},
            schema=_SCHEMA,
        )
        _write_atomic(table, self.dir / "incoming" / f"{uuid.uuid4().hex}.parquet")

    def compact(self, run_id: str) -> int:
        """Fold the incoming files into one part file; returns the number of pairs cached in all."""
        incoming = sorted(self.dir.glob("incoming/*.parquet"))
        if incoming:
            table = pq.read_table([str(f) for f in incoming], schema=_SCHEMA, partitioning=None)
            _write_atomic(table, self.dir / f"part-{run_id}-{uuid.uuid4().hex[:6]}.parquet")
            for f in incoming:
                f.unlink(missing_ok=True)
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files())


def _write_atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp")  # not matched by the readers' *.parquet
    pq.write_table(table, tmp)
    tmp.rename(path)


# numpy `S16` drops trailing zero bytes when an element is read out, so keys cross to and from Arrow
# as raw buffers, never as Python bytes.
def as_arrow_keys(keys: np.ndarray) -> pa.Array:
    keys = np.ascontiguousarray(keys, dtype=f"S{KEY_BYTES}")
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(KEY_BYTES), len(keys), [None, pa.py_buffer(keys.tobytes())]
    )


def as_numpy_keys(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return np.frombuffer(
        arr.buffers()[1], dtype=f"S{KEY_BYTES}", count=len(arr), offset=arr.offset * KEY_BYTES
    )
