"""Okapi BM25 over a small in-memory corpus: the lexical baseline of the evaluation. Light module."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

_TOKEN = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class BM25:
    """Postings as numpy arrays, so a query costs one vectorised update per query term."""

    def __init__(self, docs: Sequence[str], k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b
        postings: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        lengths = []
        for i, doc in enumerate(docs):
            counts = Counter(tokenize(doc))
            lengths.append(sum(counts.values()))
            for term, tf in counts.items():
                postings[term][0].append(i)
                postings[term][1].append(tf)
        self.lengths = np.asarray(lengths, dtype=np.float64)
        avg = float(self.lengths.mean()) if len(docs) else 1.0
        self.norm = k1 * (1 - b + b * self.lengths / (avg or 1.0))
        n = len(docs)
        self.postings = {
            t: (
                np.asarray(ids, dtype=np.int64),
                np.asarray(tfs, dtype=np.float64),
                math.log(1 + (n - len(ids) + 0.5) / (len(ids) + 0.5)),
            )
            for t, (ids, tfs) in postings.items()
        }

    def scores(self, query: str) -> np.ndarray:
        out = np.zeros(len(self.lengths))
        for term in set(tokenize(query)):
            if term in self.postings:
                ids, tf, idf = self.postings[term]
                out[ids] += idf * tf * (self.k1 + 1) / (tf + self.norm[ids])
        return out

    def top_k(self, query: str, k: int) -> list[int]:
        s = self.scores(query)
        return np.lexsort((np.arange(len(s)), -s))[:k].tolist()
