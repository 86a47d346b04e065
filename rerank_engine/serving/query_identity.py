"""Which query texts are one query to a model: the key by which the job scores a repeated query once
(`job/dedupe.py`) and reuses a pair's cached logit (`job/score_cache.py`).

Two texts are one query to a tokenizer when it cannot tell them apart: its own normalizer (lowercasing,
accent stripping, Unicode forms: whatever that tokenizer does, and nothing it does not) maps them to the
same string, and, where its pre-tokenizer splits on whitespace, they differ at most in whitespace. So an
uncased model (all-MiniLM-L6-v2) reads "What is COBRA?" and "what is  cobra?" as one query, while a cased
one (bge-reranker-v2-m3) keeps "US" and "us" apart, and neither merges "straße" with "strasse" as
`str.casefold` would. A text holding one of the tokenizer's added tokens ("[SEP]") is keyed as it is:
those are matched before normalizing. A tokenizer without a fast backend keys every text as it is.

    key = QueryNormaliser.of(tokenizer)          # a Hugging Face fast tokenizer
    key("What is  COBRA?") == key("what is cobra?")

Light module: the normalizer objects come from `tokenizers` (picklable, for Ray actors); nothing heavy
is imported here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

# Pre-tokenizers that split on (Unicode) whitespace and drop it, and those that may follow them in a
# Sequence without giving whitespace a meaning again.
_SPLITS_ON_WHITESPACE = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}
_KEEPS_WHITESPACE_MEANINGLESS = _SPLITS_ON_WHITESPACE | {"Punctuation", "Digits", "UnicodeScripts"}
# Characters `str.split()` splits on that are not Unicode White_Space (what the Rust pre-tokenizers use).
_PYTHON_ONLY_SPACE = re.compile("[\x1c-\x1f]")


def _whitespace_is_meaningless(pre_tokenizer) -> bool:
    if pre_tokenizer is None:
        return False
    spec = json.loads(pre_tokenizer.__getstate__())
    parts = spec.get("pretokenizers", [spec]) if spec.get("type") == "Sequence" else [spec]
    kinds = [p.get("type") for p in parts]
    return bool(_SPLITS_ON_WHITESPACE.intersection(kinds)) and set(kinds) <= _KEEPS_WHITESPACE_MEANINGLESS


@dataclass(frozen=True)
class QueryNormaliser:
    """A text → its key under one tokenizer (see the module docstring)."""

    normalizer: object | None = None  # tokenizers.normalizers.Normalizer
    collapse_whitespace: bool = False
    added_tokens: tuple[str, ...] = ()

    @classmethod
    def of(cls, tokenizer) -> QueryNormaliser:
        """From a Hugging Face tokenizer (its fast backend); keys texts as they are without one."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return cls()
        added = tuple(t.content for t in backend.get_added_tokens_decoder().values() if t.content)
        return cls(backend.normalizer, _whitespace_is_meaningless(backend.pre_tokenizer), added)

    def __call__(self, text: str) -> str:
        if any(token in text for token in self.added_tokens):
            return text
        if self.normalizer is not None:
            text = self.normalizer.normalize_str(text)
        if self.collapse_whitespace and not _PYTHON_ONLY_SPACE.search(text):
            text = " ".join(text.split())
        return text


@dataclass(frozen=True)
class QueryKey:
    """A text → its key under every model that reads the query (the cross-encoder, and the bi-encoder
    where recall runs): one query only where none of them can tell the texts apart."""

    normalisers: Sequence[QueryNormaliser]

    def __call__(self, text: str) -> str:
        return "\x1d".join(normalise(text) for normalise in self.normalisers)
