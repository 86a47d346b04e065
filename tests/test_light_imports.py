"""Light modules import no ray / torch / onnxruntime / faiss / transformers (checked in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LIGHT = [
    "rerank_engine.job",  # the subpackages themselves: docstrings only
    "rerank_engine.serving",
    "rerank_engine.recall",
    "rerank_engine.quality",
    "rerank_engine.config",
    "rerank_engine.cli",
    "rerank_engine.progress",
    "rerank_engine.job.orphans",
    "rerank_engine.job.summary",
    "rerank_engine.job.output_scan",
    "rerank_engine.job.ray_metrics",
    "rerank_engine.errors",
    "rerank_engine.serving.batching",
    "rerank_engine.serving.windows",
    "rerank_engine.serving.validation",
    "rerank_engine.serving.manifest",
    "rerank_engine.serving.export_contract",
    "rerank_engine.serving.export_cache",
    "rerank_engine.quality.metrics",
    "rerank_engine.serving.agreement",
    "rerank_engine.job.ray_session",
    "rerank_engine.recall.build",
    "rerank_engine.job.index_build",
    "rerank_engine.schema",
    "rerank_engine.serving.hashing",
    "rerank_engine.job.exactly_once",
    "rerank_engine.files",
    "rerank_engine.recall.checks",
    "rerank_engine.recall.bm25",
    "rerank_engine.quality.evaluation",
    "rerank_engine.quality.out_of_domain",
    "rerank_engine.quality.paired",
    "rerank_engine.job.nightly",
    "rerank_engine.quality.thresholds",
    "rerank_engine.quality.fusion",
    "rerank_engine.quality.score_policy",
    "rerank_engine.quality.label_audit",
    "rerank_engine.quality.plots",
    "rerank_engine.job.run_report",
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


def test_a_rerank_actor_finds_its_cached_export_and_scores_without_torch_or_transformers(
    tiny_model_dir, tmp_path, monkeypatch
):
    """What a rerank actor does at start-up (`stages.RerankStage`): find the model's export in the cache
    and open the engine; then it scores pairs tokenized elsewhere. Importing torch or transformers for that
    (the cache key's tool versions, the pad token id) cost each actor ~10 s of start-up on 2 cores."""
    import os
    import pickle

    from rerank_engine.config import EngineConfig
    from rerank_engine.serving.engine import CrossEncoderEngine
    from rerank_engine.serving.exporting import export_model

    monkeypatch.setenv("RERANK_ENGINE_CACHE", str(tmp_path / "cache"))
    export = export_model(tiny_model_dir, precisions=["fp32"])
    engine = CrossEncoderEngine(EngineConfig.build(model_dir=export))
    pairs = engine.tokenize(["q a"] * 3, ["x", "y z", "w"])
    code = (
        "import json, pickle, sys\n"
        "from rerank_engine.config import EngineConfig\n"
        "from rerank_engine.serving.engine import CrossEncoderEngine\n"
        "from rerank_engine.serving.exporting import resolve_export\n"
        f"export = resolve_export({str(tiny_model_dir)!r}, ['fp32'])\n"
        "engine = CrossEncoderEngine(EngineConfig.build(model_dir=export))\n"
        "scores = engine.score_tokenized(pickle.load(sys.stdin.buffer)).scores.tolist()\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers'})\n"
        "report = {'export': str(export), 'loaded': loaded, 'pad_id': engine.pad_id, 'scores': scores}\n"
        "print(json.dumps(report))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        env=os.environ.copy(),
        input=pickle.dumps(pairs),
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert report["export"] == str(export)  # the cached export, found by its key
    assert report["loaded"] == []
    assert report["pad_id"] == engine.tokenizer.pad_id  # read without transformers: the same id
    assert report["scores"] == engine.score_tokenized(pairs).scores.tolist()
