"""InsuranceQA V2 (`pip install 'rerank-engine[data]'`, the pinned `insuranceqa-data==1.0`).

Question ids restart at 0 in each split, so they are keyed as "<split>-<qid>". Text has doubled spaces:
whitespace is collapsed. Protocol: train on `train`, choose on `valid`, report on `test`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from rerank_engine import progress
from rerank_engine.errors import ConfigError, require

SPLITS = ("train", "valid", "test")
DATA_VERSION = "insuranceqa-data==1.0"
_WS = re.compile(r"\s+")


def clean(text: str) -> str:
    return _WS.sub(" ", text).strip()


@dataclass(frozen=True)
class Question:
    qid: str
    text: str
    domain: str
    answers: tuple[str, ...]  # relevant answer ids
    negatives: tuple[str, ...]  # InsuranceQA's own 200 retrieval-mined negatives


@lru_cache(maxsize=1)
def load_answers() -> dict[str, str]:
    data = require("insuranceqa_data", "data")
    return {aid: clean(a["en"]) for aid, a in data.load_answers().items()}


@lru_cache(maxsize=3)
def load_split(split: str) -> tuple[Question, ...]:
    if split not in SPLITS:
        raise ConfigError(f"unknown InsuranceQA split {split!r}; expected one of {SPLITS}")
    data = require("insuranceqa_data", "data")
    raw = getattr(data, f"load_{split}")()
    return tuple(
        Question(
            qid=f"{split}-{qid}",
            text=clean(q["en"]),
            domain=q["domain"],
            answers=tuple(q["answers"]),
            negatives=tuple(q["negatives"]),
        )
        for qid, q in sorted(raw.items(), key=lambda kv: int(kv[0]))
    )


def answer_ids() -> list[str]:
    return sorted(load_answers(), key=int)


def answer_recall(cache_dir: str, encoder=None, ids: list[str] | None = None):
    """(BiEncoder, RecallIndex over all 27,413 answers or the answer ids given, {answer id: embedding});
    embeddings cached."""
    from rerank_engine.recall.index import BiEncoder, RecallIndex, embed_cached

    encoder = encoder or BiEncoder()
    answers, ids = load_answers(), (ids if ids is not None else answer_ids())
    emb = embed_cached(encoder, [answers[i] for i in ids], cache_dir, progress=progress.enabled())
    index = RecallIndex.build(emb, ids, model=encoder.model_id, corpus=DATA_VERSION)
    return encoder, index, dict(zip(ids, emb, strict=True))


def answer_subset(questions, n: int) -> list[str]:
    """The first `n` answer ids with the questions' relevant answers added: a small corpus to recall from
    when embedding all 27,413 answers (minutes on a CPU) is too slow, as for a quick benchmark."""
    wanted = set(answer_ids()[:n]) | {a for q in questions for a in q.answers}
    return sorted(wanted, key=int)
