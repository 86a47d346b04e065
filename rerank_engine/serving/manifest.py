"""The export manifest written beside model.onnx, read back by the engine.

Light module: json + pydantic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from rerank_engine.errors import ModelFormatError, ModelNotFoundError
from rerank_engine.files import write_json
from rerank_engine.serving.llm_reranker import YesNoPrompt

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


class Variant(BaseModel):
    """One ONNX file of the export and how it was judged against the PyTorch reference."""

    model_config = ConfigDict(extra="allow")

    file: str
    precision: Literal["fp32", "fp16", "int8"]
    optimized: bool = False
    validation: dict = {}
    external_data: list[str] = []  # files beside `file` holding its tensors (graphs over 2 GB)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    format_version: int = MANIFEST_VERSION
    cache_key: str
    source: dict  # model id or path, revision, content hash
    opset: int
    max_length: int
    num_labels: Literal[1, 2]
    activation: Literal["sigmoid", "softmax"]
    # what a sentence-transformers CrossEncoder config declares predict() applies; None: no such config
    declared_activation: Literal["sigmoid", "softmax", "identity"] | None = None
    score_scale: Literal["probability"] = "probability"
    inputs: list[str]
    output: str = "logits"
    # an LLM reranker's prompt and yes/no token ids (rerank_engine.serving.llm_reranker); None: plain pairs
    prompt: YesNoPrompt | None = None
    variants: dict[str, Variant]
    tool_versions: dict[str, str]

    @property
    def model_id(self) -> str:
        """A short, stable name for the model's weights (used to bind thresholds and output rows)."""
        return f"{Path(str(self.source.get('model', 'model'))).name}@{self.source['content_hash'][:12]}"


def read_manifest(model_dir: str | Path) -> Manifest:
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST_NAME
    if not model_dir.is_dir():
        raise ModelNotFoundError(
            f"model folder {model_dir} does not exist (expected an exported model folder)"
        )
    if not path.is_file():
        raise ModelNotFoundError(
            f"{path} is missing: {model_dir} is not an exported model folder; "
            "create one with `python -m export --model <hub id or dir> --out <dir>`"
        )
    try:
        return Manifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ModelFormatError(f"{path} is not a valid export manifest: {exc}") from None


def write_manifest(model_dir: str | Path, manifest: Manifest) -> Path:
    return write_json(Path(model_dir) / MANIFEST_NAME, manifest.model_dump(), sort_keys=True)
