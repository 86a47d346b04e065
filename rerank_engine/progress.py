"""Whether to draw progress bars: on when stderr is a terminal, off in CI and logs, forced either way.

    progress.enabled()        # RERANK_PROGRESS=1 / 0 decides where it is set, else sys.stderr.isatty()
    progress.force(False)     # --no-progress: sets RERANK_PROGRESS for this process and its children

The setting travels in the environment so that a job's own processes (and `ray job submit`'s driver,
which inherits it) agree. Light module: the standard library only.
"""

from __future__ import annotations

import os
import sys

from rerank_engine.errors import ConfigError

ENV = "RERANK_PROGRESS"
_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off", "")


def enabled(stream=None) -> bool:
    """RERANK_PROGRESS where it is set (1/true/yes/on or 0/false/no/off), else whether `stream`
    (default: sys.stderr, where the bars are drawn) is a terminal."""
    value = os.environ.get(ENV)
    if value is not None:
        value = value.strip().lower()
        if value in _ON:
            return True
        if value in _OFF:
            return False
        raise ConfigError(f"{ENV}={os.environ[ENV]!r}: expected 1 (bars on) or 0 (bars off)")
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def force(on: bool) -> None:
    """Draw bars (True) or not (False) whatever stderr is, here and in the processes this one starts."""
    os.environ[ENV] = "1" if on else "0"
