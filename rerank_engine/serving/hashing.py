"""Content hashes that name models by their bytes. Light module."""

from __future__ import annotations

import hashlib
from pathlib import Path

THRESHOLD_FILE = "threshold.json"  # the reranker's calibrated threshold, in its folder (`Threshold.save`)
FUSION_FILE = "fusion.json"  # the score fusion and its threshold, in the reranker's folder (`Fusion.save`)
# Files beside the weights that do not change what the model computes.
NOT_MODEL_FILES = {"README.md", THRESHOLD_FILE, FUSION_FILE, "metrics.json", "calibration.json"}
MODEL_SUFFIXES = {".json", ".safetensors", ".bin", ".txt", ".model", ".onnx", ".data"}


def file_hash(path: str | Path, digest=None, filesystem=None) -> str:
    """sha256 of a file's bytes (fed into `digest` where given); on a pyarrow `filesystem` where given."""
    digest = digest or hashlib.sha256()
    with filesystem.open_input_stream(str(path)) if filesystem else open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash(model_dir: str | Path) -> str:
    """sha256 over every weight, config and tokenizer file of a model folder (sharded weights included),
    names and bytes, in name order. Model cards and calibration files are left out."""
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in Path(model_dir).iterdir()
        if p.is_file()
        and p.suffix in MODEL_SUFFIXES
        and p.name not in NOT_MODEL_FILES
        and not p.name.startswith(".")
    )
    for file in files:
        digest.update(file.name.encode() + b"\0")
        file_hash(file, digest)
        digest.update(b"\0")
    return digest.hexdigest()
