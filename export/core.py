"""Compatibility alias: the export code lives in `rerank_engine.exporting` so Ray workers can import it."""

from rerank_engine.exporting import *  # noqa: F403
from rerank_engine.exporting import (  # noqa: F401
    CONTRACT,
    ProbeSet,
    content_hash,
    default_cache_root,
    export_model,
    resolve_source,
    validate_fp32,
)
