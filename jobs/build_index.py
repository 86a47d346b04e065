"""Build the recall index of a corpus: bi-encoder embeddings in Ray Data actors, an exact FAISS index.

    python -m jobs.build_index --corpus <corpus.parquet> --out <dir> [--bi-encoder <dir>]

Writes index.faiss, doc_ids.json and manifest.json (model, dimension, count, metric, corpus hash).
Rebuilding for the same corpus file and model is a no-op.
"""

from __future__ import annotations

import argparse
import json
import sys

from rerank_engine.errors import RerankEngineError
from rerank_engine.indexing import build_index


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.build_index", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True, help="Parquet with doc_id, text (optionally title)")
    p.add_argument("--out", required=True)
    p.add_argument("--bi-encoder", default=None, help="model folder (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--actors", type=int, default=1)
    args = p.parse_args(argv)
    try:
        manifest = build_index(
            args.corpus, args.out, bi_encoder=args.bi_encoder, max_length=args.max_length, actors=args.actors
        )
    except RerankEngineError as exc:
        print(f"build_index failed: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
