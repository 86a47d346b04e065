"""(query, passage) pairs → token ids and true token lengths. CPU only; no padding here.

The query is capped at `max_query_share × max_length` tokens and the passage truncated to what is left,
so a long passage never squeezes the query out and a long query never squeezes out the passage. With
`long_passages: chunk_max` a passage longer than what is left is not truncated but cut into windows of
that length (`rerank_engine.serving.windows`), each a pair of its own: `TokenizedPairs.windows` says how many
rows each (query, passage) got.
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
from rerank_engine.serving.llm_reranker import PromptEncoder, YesNoPrompt
from rerank_engine.serving.manifest import MANIFEST_NAME, read_manifest
from rerank_engine.serving.windows import window_spans


@dataclass(frozen=True)
class TokenizedPairs:
    """Rows to score: one per (query, passage), or with `windows` one per (query, window of a passage)."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None
    lengths: np.ndarray  # true token count of each row, special tokens included
    # chunk_max: the number of consecutive rows (windows) of each (query, passage); None: one row each
    windows: np.ndarray | None = None

    def __len__(self) -> int:
        """Rows: what the batches hold."""
        return len(self.input_ids)

    @property
    def n_pairs(self) -> int:
        """(query, passage) pairs: what the scores are given for."""
        return len(self) if self.windows is None else len(self.windows)


def check_long_passages(config: TokenizerConfig, prompt: YesNoPrompt | None, model: str | Path) -> None:
    """ConfigError where `config.long_passages` cannot serve `model` (`prompt`: its LLM reranker prompt,
    None for a cross-encoder). An LLM reranker's prompt is cut at the end of its body, the passage's tail,
    and its windows would not be the tokens the cross-encoder's windows are: it is refused chunk_max; such
    models take long inputs (raise tokenizer.max_length instead)."""
    if config.long_passages == "chunk_max" and prompt is not None:
        raise ConfigError(
            f"tokenizer.long_passages 'chunk_max' is for cross-encoders; {model} is an LLM reranker's export "
            f"({prompt.name} prompt), which scores the prompted text cut to max_length: set "
            "long_passages 'truncate' and raise tokenizer.max_length to fit long passages"
        )


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
        check_long_passages(self.config, self.prompt, tokenizer_dir)
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
        chunked = self.config.long_passages == "chunk_max"
        ids_out, types_out, windows = [], [], []
        # chunk_max reads the whole passage; truncate never needs more than max_length of it
        encoded = self._encode(list(passages), None if chunked else max_length)
        for query, passage in zip(queries, encoded, strict=True):
            q = q_enc[query]
            budget = max(1, max_length - self._n_special - len(q))  # the passage's tokens at most
            spans = window_spans(len(passage), budget, self.config.stride) if chunked else [(0, budget)]
            first = passage
            if len(passage) > spans[0][1]:
                if self._memo is not None or chunked:  # the encoding stays whole (the memo, the windows)
                    first = copy.deepcopy(passage)
                first.truncate(spans[0][1])
            pair = self._pairs.post_process(q, first, add_special_tokens=True)
            ids = np.asarray(pair.ids, dtype=np.int64)
            types = np.asarray(pair.type_ids, dtype=np.int64)
            ids_out.append(ids)
            types_out.append(types)
            if len(spans) > 1:
                for window_ids, window_types in self._later_windows(pair, ids, types, passage, spans):
                    ids_out.append(window_ids)
                    types_out.append(window_types)
            windows.append(len(spans))
        lengths = np.fromiter((len(x) for x in ids_out), dtype=np.int64, count=len(ids_out))
        return TokenizedPairs(
            ids_out, types_out, lengths, np.asarray(windows, dtype=np.int64) if chunked else None
        )

    def _later_windows(self, pair, ids: np.ndarray, types: np.ndarray, passage, spans):
        """The pairs of windows 2, 3, … of a passage, from the first window's pair (`pair`, `ids`,
        `types`): the pair template keeps the passage's tokens in one run (sequence id 1) between the
        same special tokens whatever they are, so each window's tokens take that run's place, with its
        token type. This is what post-processing each window would give (tests hold it to that), without
        copying the whole passage's encoding once a window."""
        run = [i for i, s in enumerate(pair.sequence_ids) if s == 1]
        a, b = spans[0]
        if len(run) != b - a or (run and run[-1] - run[0] + 1 != len(run)):
            raise ModelFormatError(
                f"{self.tokenizer.name_or_path}: its pair template does not keep the passage's tokens in "
                "one run, so its windows cannot be scored (tokenizer.long_passages chunk_max); use truncate"
            )
        head, tail = slice(0, run[0]), slice(run[-1] + 1, len(ids))
        passage_ids = np.asarray(passage.ids, dtype=np.int64)
        for start, end in spans[1:]:
            yield (
                np.concatenate([ids[head], passage_ids[start:end], ids[tail]]),
                np.concatenate([types[head], np.full(end - start, types[run[0]]), types[tail]]),
            )

    def _encode(self, texts: list[str], limit: int | None) -> list:
        """The tokenizers `Encoding` of each text, without special tokens, cut to `limit` tokens (None:
        whole)."""
        if self._memo is None:
            return self._tokenize(texts, limit)
        new = list(dict.fromkeys(t for t in texts if (t, limit) not in self._memo))
        self._memo.update(((t, limit), e) for t, e in zip(new, self._tokenize(new, limit), strict=True))
        return [self._memo[(t, limit)] for t in texts]

    def _tokenize(self, texts: list[str], limit: int | None) -> list:
        if not texts:
            return []
        if limit is None:  # whole texts (chunk_max's passages), by the backend copy without truncation:
            # what the call below runs, without its warning that a text is longer than the model
            return self._pairs.encode_batch(texts, add_special_tokens=False)
        return self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=limit).encodings
