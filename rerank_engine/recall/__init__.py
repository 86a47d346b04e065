"""Recall: the candidates the reranker sees, from a bi-encoder over a FAISS index or from BM25.

index (the bi-encoder and RecallIndex), build (corpus → embeddings → index), bm25 (the lexical baseline).
"""
