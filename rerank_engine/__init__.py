"""rerank-engine: offline cross-encoder reranking.

The package root imports nothing heavy. Import the component you need:

    from rerank_engine.serving.engine import CrossEncoderEngine      # onnxruntime
    from rerank_engine.serving.batching import plan_batches           # numpy only
"""

__version__ = "0.1.0"
