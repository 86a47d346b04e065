"""rerank-engine: offline cross-encoder reranking.

Folders by what they do: serving/ (export and score a cross-encoder), job/ (the Ray Data batch job and
its nightly commit), recall/ (bi-encoder + FAISS), quality/ (metrics, evaluation, thresholds, fusion, the
score policy), training/, data/. At the root: config, schema, errors, files, progress, cli.

The package root imports nothing heavy. Import the component you need:

    from rerank_engine.serving.engine import CrossEncoderEngine      # onnxruntime
    from rerank_engine.serving.batching import plan_batches           # numpy only
"""

__version__ = "0.1.0"
