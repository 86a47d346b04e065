"""What a corpus and its recall index declare about each other, checked before any embedding or Ray.

    corpus = check_corpus("corpus.parquet", config.columns)  # every doc has text; doc ids unique
    check_index("index/", manifest, "corpus.parquet", corpus, bi_encoder=None)

- Every document has text: a null or whitespace-only text is an InputError naming how many and the first
  doc ids (the job would count such a candidate as not in the corpus, the index would embed it as "").
  A title does not make up for a blank text. The doc ids, texts and titles are valid UTF-8.
- The corpus's doc ids are unique. A doc id repeated with the same text (and title) is one document: the
  repeats are counted (`CorpusCheck.duplicate_rows`, in the run summary) and collapse to one. A doc id
  repeated with different texts is an InputError naming it: which text a candidate would get is not
  defined.
- The index was built from this corpus: its manifest's `corpus_hash` (the corpus file's sha256) matches;
  an index built from embeddings made elsewhere records no hash, and then its count and doc ids must
  match the corpus's.
- The index was built with this bi-encoder: the manifest's `model` is what `bi_encoder` resolves to.

Errors name both files. Light module: pyarrow only (no ray, torch or faiss).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rerank_engine import schema
from rerank_engine.config import ColumnsConfig
from rerank_engine.errors import ConfigError, InputError
from rerank_engine.serving.hashing import file_hash


@dataclass(frozen=True)
class CorpusCheck:
    rows: int
    doc_ids: pa.Array  # the distinct doc ids, as strings
    duplicate_rows: int  # rows that repeat an earlier row's doc id and text: collapsed into it


def check_corpus(path: str | Path, cols: ColumnsConfig) -> CorpusCheck:
    """The corpus's columns are there, every document has text, and its doc ids are unique, or repeated
    only with identical texts; InputError naming the file (and the doc ids) otherwise."""
    schema.check_corpus_schema(
        pq.read_schema(path), schema.CorpusColumns(cols.doc_id, cols.text, cols.title), str(path)
    )
    _check_texts(path, cols)
    ids = pq.read_table(path, columns=[cols.doc_id]).column(cols.doc_id).cast(pa.string())
    counts = pc.value_counts(ids.combine_chunks())
    distinct = counts.field("values")
    repeated = distinct.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        _check_repeats_identical(path, cols, repeated)
    return CorpusCheck(rows=len(ids), doc_ids=distinct, duplicate_rows=len(ids) - len(distinct))


def _check_texts(path, cols: ColumnsConfig, examples: int = 5) -> None:
    """No null or blank (whitespace-only) text, read a batch at a time with Arrow; valid UTF-8 first (Arrow
    refuses to trim invalid UTF-8)."""
    reader = pq.ParquetFile(path)
    wanted = [c for c in (cols.doc_id, cols.text, cols.title) if c in reader.schema_arrow.names]
    n_blank, shown, rows = 0, [], 0
    for batch in reader.iter_batches(columns=wanted):
        schema.check_utf8(batch, f"corpus {path}", first_row=rows)
        rows += batch.num_rows
        blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(batch.column(cols.text)), ""), True)
        n = pc.sum(blank).as_py() or 0
        if n and len(shown) < examples:
            ids = batch.column(cols.doc_id).filter(blank).slice(0, examples - len(shown))
            shown += ids.cast(pa.string()).to_pylist()
        n_blank += n
    if n_blank:
        more = ", …" if n_blank > len(shown) else ""
        raise InputError(
            f"corpus {path}: {n_blank} of its {rows} documents have no text (a null or whitespace-only "
            f"{cols.text!r}; a title alone does not count): doc ids {', '.join(map(repr, shown))}{more}. "
            "Give them text or remove them from the corpus"
        )


def _check_repeats_identical(path, cols: ColumnsConfig, repeated: pa.Array) -> None:
    """Read only the rows of repeated doc ids (batch by batch) and compare their texts and titles."""
    reader = pq.ParquetFile(path)
    wanted = [c for c in (cols.doc_id, cols.text, cols.title) if c in reader.schema_arrow.names]
    seen: dict[str, tuple] = {}
    for batch in reader.iter_batches(columns=wanted):
        ids = batch.column(cols.doc_id).cast(pa.string())
        rows = pa.Table.from_batches([batch]).filter(pc.is_in(ids, value_set=repeated))
        for row in rows.to_pylist():
            doc_id = str(row[cols.doc_id])
            passage = (row.get(cols.title), row[cols.text])
            first = seen.setdefault(doc_id, passage)
            if passage != first:
                shown = [p[1] if p[0] is None else f"{p[0]}. {p[1]}" for p in (first, passage)]
                raise InputError(
                    f"corpus {path}: doc_id {doc_id!r} occurs more than once with different texts "
                    f"({shown[0][:60]!r} and {shown[1][:60]!r}); doc ids must be unique "
                    "(rows repeated with the same text are collapsed)"
                )


def index_doc_ids(index: str | Path, manifest: dict) -> list[str]:
    """Every doc id of an index folder (all shards), without loading FAISS."""
    folders = [Path(index) / s["path"] for s in manifest.get("shard_files", [{"path": "."}])]
    return [d for folder in folders for d in json.loads((folder / "doc_ids.json").read_text())]


def check_index(
    index: str | Path, manifest: dict, corpus: str | Path, corpus_check: CorpusCheck, bi_encoder: str | None
) -> None:
    """The index was built from this corpus and with this bi-encoder (see the module docstring)."""
    from rerank_engine.recall.index import BiEncoder, bundled_minilm_dir

    manifest_file = Path(index) / "manifest.json"
    built_with = manifest.get("model")
    if bi_encoder is not None and not (Path(bi_encoder) / "config.json").is_file():
        raise ConfigError(f"bi_encoder: {bi_encoder} is not a model folder (it has no config.json)")
    if built_with:
        wanted = BiEncoder.describe(bi_encoder)
        if built_with != wanted:
            folder = bi_encoder or f"{bundled_minilm_dir()} (the bundled default)"
            raise ConfigError(
                f"index {manifest_file} was built with bi-encoder {built_with}, but bi_encoder {folder} is "
                f"{wanted}: set bi_encoder to the model the index was built with, or rebuild the index"
            )

    recorded = manifest.get("corpus_hash")
    if recorded and recorded == file_hash(corpus):
        return  # the very file the index was embedded from
    count = manifest.get("count")
    ids = pa.array(index_doc_ids(index, manifest), pa.string())
    missing = ids.filter(pc.invert(pc.is_in(ids, value_set=corpus_check.doc_ids)))
    differences = []
    if count is not None and count != len(corpus_check.doc_ids):
        differences.append(f"the index holds {count} documents, the corpus {len(corpus_check.doc_ids)}")
    if len(missing):
        differences.append(
            f"{len(missing)} of the index's doc ids are not in the corpus (e.g. {missing[:3].to_pylist()})"
        )
    if not recorded and not differences:
        return  # embeddings made elsewhere: no hash to compare, and the ids agree
    built_from = manifest.get("corpus") or "another corpus"
    if recorded:
        differences.append(f"the corpus file's sha256 differs from the {recorded[:12]}… recorded at build")
        if len(differences) == 1:
            differences.append(
                "its doc ids and count are the same, so texts changed (or the file was rewritten)"
            )
    raise InputError(
        f"index {manifest_file} was built from {built_from}, not from corpus {corpus}: "
        + "; ".join(differences)
        + ". Rebuild the index from this corpus (python -m jobs.build_index) or pass the corpus it was "
        "built from"
    )
