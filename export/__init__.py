"""Export a Hugging Face cross-encoder to verified ONNX variants: `python -m export --help`."""

from rerank_engine.serving.export_cache import default_cache_root
from rerank_engine.serving.export_contract import CONTRACT
from rerank_engine.serving.exporting import export_model

__all__ = ["CONTRACT", "default_cache_root", "export_model"]
