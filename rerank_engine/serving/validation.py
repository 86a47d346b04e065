"""Per-pair text checks shared by the engine and the batch job.

Light module. A problem is a short code the job can write as a row status; the engine turns the first
one into an InputError that names the pair.
"""

from __future__ import annotations

from collections.abc import Sequence

from rerank_engine.errors import InputError

# Problem codes (also used as row statuses by the batch job).
NOT_A_STRING = "not_a_string"
EMPTY_TEXT = "empty_text"
INVALID_UNICODE = "invalid_unicode"


def text_problem(text: object) -> str | None:
    """None if `text` can be scored, else a problem code."""
    if not isinstance(text, str):
        return NOT_A_STRING
    if not text.strip():
        return EMPTY_TEXT
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates cannot reach the tokenizer
        return INVALID_UNICODE
    if not any(c.isprintable() and not c.isspace() for c in text):  # only control characters
        return EMPTY_TEXT
    return None


def check_pairs(queries: Sequence[object], passages: Sequence[object]) -> None:
    """Raise InputError naming the first pair whose query or passage cannot be scored."""
    if len(queries) != len(passages):
        raise InputError(f"got {len(queries)} queries but {len(passages)} passages; they must pair up")
    for i, (query, passage) in enumerate(zip(queries, passages, strict=True)):
        for role, text in (("query", query), ("passage", passage)):
            problem = text_problem(text)
            if problem is not None:
                shown = repr(text)[:60]
                raise InputError(
                    f"pair {i}: {role} is {problem.replace('_', ' ')} ({shown}); "
                    "expected a non-empty string of valid Unicode"
                )
