"""Light modules import no ray / torch / onnxruntime / faiss / transformers (checked in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LIGHT = [
    "rerank_engine.config",
    "rerank_engine.errors",
    "rerank_engine.batching",
    "rerank_engine.validation",
    "rerank_engine.manifest",
    "rerank_engine.metrics",
    "rerank_engine.schema",
    "rerank_engine.hashing",
    "rerank_engine.bm25",
    "rerank_engine.evaluation",
    "rerank_engine.nightly",
    "rerank_engine.thresholds",
    "rerank_engine.label_audit",
    "rerank_engine.plots",
    "rerank_engine.data.classic_ir",
]
HEAVY = ["ray", "torch", "onnxruntime", "faiss", "transformers", "matplotlib"]


def test_light_modules_import_nothing_heavy():
    code = (
        "import importlib, json, sys\n"
        f"for name in {LIGHT!r}:\n"
        "    importlib.import_module(name)\n"
        f"heavy = {HEAVY!r}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        f"print(json.dumps({{'loaded': loaded, 'light': [n for n in {LIGHT!r} if n in sys.modules]}}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["light"] == LIGHT  # the imports really happened in the child
    assert report["loaded"] == [], f"light modules pulled in heavy modules: {report['loaded']}"
