"""Long passages (`tokenizer.long_passages: chunk_max`): the windows a passage is cut into, and the rule
that scores the passage by its best window (MaxP).

A passage longer than the tokens its query leaves (the passage budget, `PairTokenizer`) is cut into
windows of that budget, one every `stride` tokens (consecutive windows overlap by window − stride), the
last one ending where the passage ends; every (query, window) is a pair of its own in the length-bucketed
batches, and the passage's logit is the largest of its windows' logits, taken before the sigmoid and any
fusion, so the threshold and the fused score apply to that logit. A passage that fits is one window, the
pair `truncate` scores.

`window_spans` is used by the tokenizer, `best_of_windows` by the engine (`score_tokenized`), which the
job's rerank stage, `CrossEncoderEngine.score` and the evaluation all go through: one rule each.

Light module: numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def window_stride(window: int, stride: int | None) -> int:
    """The stride used for windows of `window` tokens: `stride` cut to the window (no token is skipped),
    or half the window where `stride` is None; at least 1."""
    if window < 1:
        raise ValueError(f"a window holds at least 1 token, got {window}")
    if stride is not None and stride < 1:
        raise ValueError(f"the stride is at least 1 token, got {stride}")
    return max(1, min(window, stride if stride is not None else window // 2))


def window_spans(n_tokens: int, window: int, stride: int | None) -> list[tuple[int, int]]:
    """[start, end) of each window over a passage of `n_tokens` tokens: starts 0, s, 2s, … (s =
    `window_stride(window, stride)`) while a window would end before the passage does, then one window of
    full length ending at the passage's end. A passage of at most `window` tokens is one window [0, n)."""
    s = window_stride(window, stride)
    if n_tokens <= window:
        return [(0, n_tokens)]
    starts = [*range(0, n_tokens - window, s), n_tokens - window]
    return [(a, a + window) for a in starts]


def best_of_windows(window_logits: np.ndarray, windows: Sequence[int] | np.ndarray) -> np.ndarray:
    """Each passage's logit: the largest logit of its windows (MaxP). Passage i owns `windows[i]`
    consecutive rows of `window_logits` (at least one); a NaN window makes its passage NaN (the job then
    flags the row `nonfinite_score`)."""
    logits = np.asarray(window_logits, dtype=np.float32)
    windows = np.asarray(windows, dtype=np.int64)
    if windows.ndim != 1 or (len(windows) and windows.min() < 1):
        raise ValueError("every passage has at least one window")
    if int(windows.sum()) != len(logits):
        raise ValueError(f"{int(windows.sum())} windows counted for {len(logits)} window logits")
    if not len(windows):
        return np.zeros(0, dtype=np.float32)
    starts = np.concatenate([[0], np.cumsum(windows[:-1])])
    return np.maximum.reduceat(logits, starts).astype(np.float32)
