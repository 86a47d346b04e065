"""Build the recall index of a corpus: bi-encoder embeddings (Ray Data, written to Parquet), a FAISS index.

    python -m jobs.build_index --corpus <corpus.parquet> --out <dir> [--bi-encoder <dir>]
        [--index-factory "IVF4096,Flat"] [--train-size 100000] [--nprobe 32] [--ef-search 64]
        [--shards N] [--eval-queries 1000] [--embeddings <dir>] [--actors N] [--set batch_rows=512 ...]
    python -m jobs.build_index --from-embeddings <dir> --out <dir> --index-factory HNSW32

Writes index.faiss, doc_ids.json and manifest.json (model, dimension, count, metric, corpus hash, factory,
search defaults, recall@20 against exact search on held-out corpus vectors, build times); with
--shards N, shards/00000 ... instead of index.faiss and doc_ids.json. The embeddings go to
<out>/embeddings (or --embeddings) and are reused while the corpus file and the model are unchanged, so
re-indexing with another factory does not re-embed. Rebuilding with the same inputs and settings is a
no-op.
"""

from __future__ import annotations

import json

from rerank_engine import cli
from rerank_engine.config import EmbedConfig
from rerank_engine.job.index_build import build_index

EXAMPLE = "--corpus sample/corpus.parquet --out sample/index --index-factory Flat"


def main(argv=None, prog: str = "python -m jobs.build_index") -> int:
    p = cli.command_parser(
        prog,
        __doc__,
        EXAMPLE,
        with_progress=True,
        overrides="an embedding resource (config.EmbedConfig: actors, cpus, threads, batch_rows, "
        "block_rows, io_cpus), e.g. batch_rows=512 (repeatable)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", help="Parquet with doc_id, text (optionally title)")
    src.add_argument("--from-embeddings", help="embeddings folder written by an earlier build (no corpus)")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--embeddings", default=None, help="embeddings folder to write or reuse (default <out>/embeddings)"
    )
    p.add_argument("--bi-encoder", default=None, help="model folder (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--actors", type=int, default=1, help="embedding actors (EmbedConfig.actors)")
    p.add_argument(
        "--index-factory", default="Flat", help='FAISS factory string: "Flat", "IVF4096,Flat", ...'
    )
    p.add_argument("--train-size", type=int, default=100_000, help="vectors sampled to train IVF/PQ")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists searched per query (default 32)")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW efSearch (default 64)")
    p.add_argument("--shards", type=int, default=1, help="split the corpus into N shard indexes")
    p.add_argument("--eval-queries", type=int, default=1000, help="held-out vectors for recall@k vs exact")
    p.add_argument("--k-eval", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    def body() -> int:
        manifest = build_index(
            args.corpus,
            args.out,
            embeddings=args.from_embeddings or args.embeddings,
            factory=args.index_factory,
            train_size=args.train_size,
            shards=args.shards,
            nprobe=args.nprobe,
            ef_search=args.ef_search,
            eval_queries=args.eval_queries,
            k_eval=args.k_eval,
            seed=args.seed,
            bi_encoder=args.bi_encoder,
            max_length=args.max_length,
            embed=EmbedConfig.build(**{"actors": args.actors, **cli.parse_overrides(args.overrides)}),
        )
        print(json.dumps(manifest, indent=2))
        return 0

    return cli.run_main("build_index", args, body)


if __name__ == "__main__":
    raise SystemExit(main())
