"""Paraphrased questions, by a lexical rule (no embeddings), to keep their answers out of the negatives.

InsuranceQA labels an answer only for the question it was written for, and its questions come in
paraphrased families ("Can Car Insurance Companies Drop You?" / "Can Auto Insurance Companies Drop
You?"), so the answer written for one member is a false negative for the others. Mining takes its
candidates from the bi-encoder; this rule decides on words alone, so the bi-encoder does not judge its
own mistakes.

Two questions are paraphrases when their normalised texts are equal (case, punctuation and spacing
ignored), or when the IDF-weighted Jaccard similarity of their content words reaches `threshold`:
shared rare words ("otoplasty", "walker") count for much, shared common ones ("life insurance") for
little, so "... cost for seniors?" and "... cost for children?" are not paraphrases. IDF comes from the
questions the rule is built on. Light module: no torch.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS_TEXT = (
    "a an the is are am was were be been being do does did can could should would will shall may might "
    "must i me my we our you your he she it its they them their this that these those there here of to "
    "for in on at by with from as or and if so than then what which who whom whose when where why how "
    "about into onto over under any some get gets getting got have has had"
)
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
SYNONYMS = {"car": "auto", "cars": "auto", "automobile": "auto", "vehicle": "auto"}


def normalise(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def content_words(text: str) -> frozenset[str]:
    """Lower-cased words without stopwords, a final plural "s" dropped, car/auto folded."""
    words = set()
    for w in _WORD.findall(text.lower()):
        w = SYNONYMS.get(w, w)
        if w in STOPWORDS:
            continue
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        words.add(w)
    return frozenset(words)


class ParaphraseRule:
    """Built on a list of questions and the answer ids labelled for each (the training split only)."""

    def __init__(self, questions: Sequence[str], labels: Sequence[Sequence[str]], threshold: float = 0.6):
        if not 0 < threshold <= 1:
            raise ValueError(f"paraphrase threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.questions = list(questions)
        self._norm = [normalise(q) for q in self.questions]
        self._words = [content_words(q) for q in self.questions]
        df = Counter(w for ws in self._words for w in ws)
        n = len(self.questions)
        self._idf = {w: math.log((n + 1) / (c + 1)) + 1.0 for w, c in df.items()}
        self.labelled_for: dict[str, list[int]] = defaultdict(list)
        for row, ids in enumerate(labels):
            for doc in ids:
                self.labelled_for[str(doc)].append(row)

    def similarity(self, a: int, b: int) -> float:
        """1.0 for equal normalised texts, else the IDF-weighted Jaccard of the content words."""
        if self._norm[a] == self._norm[b]:
            return 1.0
        wa, wb = self._words[a], self._words[b]
        union = sum(self._idf[w] for w in wa | wb)
        return sum(self._idf[w] for w in wa & wb) / union if union else 0.0

    def is_paraphrase(self, a: int, b: int) -> bool:
        return a != b and self.similarity(a, b) >= self.threshold

    def paraphrase_labelling(self, row: int, doc: str) -> int | None:
        """The row of a paraphrase of question `row` that `doc` is labelled for, or None."""
        for other in self.labelled_for.get(str(doc), ()):
            if self.is_paraphrase(row, other):
                return other
        return None
