"""(query, passage) pairs → token ids and true token lengths. CPU only; no padding here.

The query is capped at `max_query_share × max_length` tokens and the passage truncated to what is left,
so a long passage never squeezes the query out and a long query never squeezes out the passage.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rerank_engine.config import TokenizerConfig
from rerank_engine.errors import ConfigError, ModelFormatError
from rerank_engine.llm_reranker import PromptEncoder, YesNoPrompt
from rerank_engine.manifest import MANIFEST_NAME, read_manifest


@dataclass(frozen=True)
class TokenizedPairs:
    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None
    lengths: np.ndarray  # true token count of each pair, special tokens included

    def __len__(self) -> int:
        return len(self.input_ids)


def pad_token_id(tokenizer_dir: str | Path) -> int | None:
    """The pad token's id, read from a saved fast tokenizer's `special_tokens_map.json` and `tokenizer.json`
    with the `tokenizers` library alone (building a PairTokenizer imports transformers: ~4 s of a rerank
    actor's start-up on 2 cores). None where those files do not say; PairTokenizer's `pad_id` decides then."""
    folder = Path(tokenizer_dir)
    try:
        pad = json.loads((folder / "special_tokens_map.json").read_text()).get("pad_token")
    except (OSError, ValueError, AttributeError):
        return None
    content = pad.get("content") if isinstance(pad, dict) else pad
    if not isinstance(content, str) or not (folder / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json")).token_to_id(content)


def folder_prompt(folder: str | Path) -> YesNoPrompt | None:
    """The LLM reranker prompt an export folder's manifest keeps; None for plain pairs (or no manifest)."""
    if not (Path(folder) / MANIFEST_NAME).is_file():
        return None
    return read_manifest(folder).prompt


class PairTokenizer:
    """Wraps a Hugging Face fast tokenizer (through AutoTokenizer, so the files' fixed padding is ignored).

    The pair is assembled by the tokenizer's own post-processor (its `tokenizer.json` template), the step
    `AutoTokenizer(query, passage)` runs: a family whose tokenizer class has no pair rule of its own
    (ModernBERT's plain PreTrainedTokenizerFast) still gets its [CLS] q [SEP] p [SEP].

    An export of an LLM reranker keeps its prompt in the manifest: its pairs are the prompted text instead
    (`llm_reranker.PromptEncoder`, with `config.instruction`), the same for the engine and the job."""

    def __init__(
        self, tokenizer_dir: str | Path, config: TokenizerConfig | None = None, *, memoize: bool = False
    ):
        """`memoize`: keep every text's encoding, so a text seen again (training's next epoch, an
        evaluation set scored at every checkpoint) is not tokenized again."""
        from tokenizers import Tokenizer
        from transformers import AutoTokenizer

        self.config = config or TokenizerConfig()
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), use_fast=True)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ModelFormatError(
                f"{tokenizer_dir}: {type(self.tokenizer).__name__} is not a fast tokenizer; the engine needs "
                "one (a tokenizer.json); save the tokenizer with a recent transformers to convert it"
            )
        # A copy of the backend for assembling pairs: the wrapped one keeps whatever truncation the last
        # call set, which post_process would apply again.
        self._pairs = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        self._pairs.no_truncation()
        self._pairs.no_padding()
        self.pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        self._n_special = self.tokenizer.num_special_tokens_to_add(pair=True)
        if self.config.max_length <= self._n_special + 1:
            raise ConfigError(f"max_length {self.config.max_length} leaves no room for text")
        self.query_cap = max(1, int(self.config.max_length * self.config.max_query_share))
        self._memo: dict[tuple[str, int], object] | None = {} if memoize else None
        self.prompt = folder_prompt(tokenizer_dir)
        self._prompted = None
        if self.prompt is not None:
            self._prompted = PromptEncoder(
                self.tokenizer,
                self.prompt,
                max_length=self.config.max_length,
                query_cap=self.query_cap,
                instruction=self.config.instruction,
            )
        elif self.config.instruction is not None:
            raise ConfigError(
                f"tokenizer.instruction is set, but {tokenizer_dir} is not an LLM reranker's export (its "
                "manifest keeps no prompt); a cross-encoder takes no instruction: unset it"
            )

    def __call__(self, queries: Sequence[str], passages: Sequence[str]) -> TokenizedPairs:
        if self._prompted is not None:
            ids_out = self._prompted(queries, passages)
            lengths = np.fromiter((len(x) for x in ids_out), dtype=np.int64, count=len(ids_out))
            return TokenizedPairs(ids_out, [np.zeros_like(x) for x in ids_out], lengths)
        max_length = self.config.max_length
        unique = list(dict.fromkeys(queries))  # each distinct query is tokenized once
        q_enc = dict(
            zip(
                unique,
                self._encode(unique, min(self.query_cap, max_length - self._n_special - 1)),
                strict=True,
            )
        )
        ids_out, types_out = [], []
        for query, passage in zip(queries, self._encode(list(passages), max_length), strict=True):
            q = q_enc[query]
            budget = max(1, max_length - self._n_special - len(q))
            if len(passage) > budget:
                if self._memo is not None:  # the memo's encoding stays whole for the next query
                    passage = copy.deepcopy(passage)
                passage.truncate(budget)
            pair = self._pairs.post_process(q, passage, add_special_tokens=True)
            ids_out.append(np.asarray(pair.ids, dtype=np.int64))
            types_out.append(np.asarray(pair.type_ids, dtype=np.int64))
        lengths = np.fromiter((len(x) for x in ids_out), dtype=np.int64, count=len(ids_out))
        return TokenizedPairs(ids_out, types_out, lengths)

    def _encode(self, texts: list[str], limit: int) -> list:
        """The tokenizers `Encoding` of each text, without special tokens, cut to `limit` tokens."""
        if self._memo is None:
            return self._tokenize(texts, limit)
        new = list(dict.fromkeys(t for t in texts if (t, limit) not in self._memo))
        self._memo.update(((t, limit), e) for t, e in zip(new, self._tokenize(new, limit), strict=True))
        return [self._memo[(t, limit)] for t in texts]

    def _tokenize(self, texts: list[str], limit: int) -> list:
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=limit).encodings
