"""Serving: a cross-encoder exported to verified ONNX and scored by onnxruntime, pair by pair.

engine (the scoring engine), batching (length buckets), tokenization (pairs → ids), windows (long
passages, MaxP), validation (per-pair text checks), llm_reranker (yes/no LLM rerankers), manifest (the
export's manifest), hashing (content hashes), agreement (one scorer's order against another's);
exporting (the export's entry) with export_cache (source and cache key), export_contract,
export_conversion (fp32/fp16), export_quantization (int8), export_validation.
"""
