"""What the benchmarks' reports share: the default model, the machine line, paths as a report records them."""

from __future__ import annotations

import os
import platform
from pathlib import Path

DEFAULT_MODEL = "models/insurance-minilm-l6-ce"


def shown_path(path: str | Path) -> str:
    """`path` as a report may record it: under the export cache as `$RERANK_ENGINE_CACHE/…`, under the
    working directory relative to it, else as given (reports carry no machine's home or work folder)."""
    from rerank_engine.serving.export_cache import default_cache_root

    resolved = Path(path).resolve()
    for root, shown in ((default_cache_root().resolve(), "$RERANK_ENGINE_CACHE"), (Path.cwd(), ".")):
        if resolved.is_relative_to(root):
            return str(Path(shown) / resolved.relative_to(root))
    return str(path)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}"
