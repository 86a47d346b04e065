"""Recall: the candidates the reranker sees, from a bi-encoder over a FAISS index or from BM25.

index (the bi-encoder and RecallIndex), build (embeddings → index; the Ray job that embeds a corpus is
`job.index_build`), checks (what a corpus and its index declare), bm25 (the lexical baseline).
"""
