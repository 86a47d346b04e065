"""Export a Hugging Face cross-encoder to verified ONNX variants: `python -m export --help`."""

from rerank_engine.exporting import CONTRACT, default_cache_root, export_model

__all__ = ["CONTRACT", "default_cache_root", "export_model"]
