"""Where an export comes from and where it is kept: a local model folder or a Hugging Face hub id
(downloaded into the HF cache), the content key of an export (weights, settings, tool versions, int8
recipe) and the cache folder a finished export is installed into. Light at import: finding a cached
export (what a rerank actor does at start-up) imports neither torch nor transformers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from rerank_engine.errors import ModelNotFoundError
from rerank_engine.serving.export_quantization import INT8_RECIPE, Int8Recipe
from rerank_engine.serving.manifest import MANIFEST_NAME, Manifest, read_manifest

# -- resolving the source ------------------------------------------------------------------------------


def resolve_source(model: str | Path, revision: str | None = None) -> tuple[Path, dict]:
    """A local folder as is, or a hub id downloaded (or found in the HF cache). Returns (dir, source)."""
    path = Path(model)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json; expected a Hugging Face model folder")
        return path, {"model": str(model), "revision": None}
    if str(model).startswith((".", "/", "~")) or str(model).count("/") > 1:
        raise ModelNotFoundError(f"model folder {model} does not exist")
    from huggingface_hub import snapshot_download

    try:
        local = Path(snapshot_download(repo_id=str(model), revision=revision))
    except Exception as exc:
        raise ModelNotFoundError(
            f"{model!r} is neither a local folder nor a reachable Hugging Face hub id: {exc}"
        ) from None
    return local, {"model": str(model), "revision": local.name}


# -- the content key -----------------------------------------------------------------------------------

# "2": exports refuse a newly initialised head and unsupported model types, and list external data; a
# cached export made before (perhaps of a checkpoint without a head) is rebuilt through those checks
EXPORT_CODE_VERSION = "2"


def _installed_version(distribution: str, module: str) -> str:
    """The installed version from the package metadata, without importing the package (importing torch,
    transformers and optimum costs a rerank actor ~5 s of start-up on 2 cores just to find a cached
    export); the module's `__version__` where there is no metadata."""
    from importlib import import_module, metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return import_module(module).__version__


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime  # its distribution may be onnxruntime or onnxruntime-gpu; the import is cheap

    return {
        "torch": _installed_version("torch", "torch"),
        "transformers": _installed_version("transformers", "transformers"),
        "optimum": _installed_version("optimum", "optimum.version"),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "export_code": EXPORT_CODE_VERSION,
    }


def cache_key(
    chash: str,
    *,
    opset: int | None,
    max_length: int | None,
    optimize: bool,
    versions: dict[str, str],
    int8: Int8Recipe | None = None,
) -> str:
    """The export's content key: weights, export settings, tool versions and the int8 recipe (a changed
    recipe must not reuse an int8 graph built by the old one)."""
    blob = json.dumps(
        {
            "content": chash,
            "opset": opset,
            "max_length": max_length,
            "optimize": optimize,
            "tools": versions,
            "int8": (int8 or INT8_RECIPE).describe(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


# -- the cache folder ----------------------------------------------------------------------------------


def default_cache_root() -> Path:
    """Where exports are cached: $RERANK_ENGINE_CACHE, else ~/.cache/rerank-engine."""
    return Path(os.environ.get("RERANK_ENGINE_CACHE", Path.home() / ".cache" / "rerank-engine"))


def cached_manifest(out: Path, key: str) -> Manifest | None:
    """The manifest of the finished export in `out` under content key `key`, with every file it names;
    None where there is none (or another key's, or one half-written)."""
    if not (out / MANIFEST_NAME).is_file():
        return None
    try:
        manifest = read_manifest(out)
    except Exception:
        return None
    if manifest.cache_key != key:
        return None
    if not all((out / f).is_file() for v in manifest.variants.values() for f in [v.file, *v.external_data]):
        return None
    return manifest


def install(work: Path, out: Path) -> None:
    """Move a finished export into place; the manifest goes last so a half-copied folder is never used."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for item in work.iterdir():
        if item.name != MANIFEST_NAME:
            target = out / item.name
            if target.is_dir():
                shutil.rmtree(target)
            shutil.move(str(item), target)
    shutil.move(str(work / MANIFEST_NAME), out / MANIFEST_NAME)
