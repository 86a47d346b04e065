"""Recall-index scaling on random unit vectors: build time, memory, queries/s and recall@20 vs exact search,
per FAISS index type and corpus size, with queries/s at several query-batch sizes.

    nice -n 10 python -m benchmarks.index_scaling [--sizes 100000 1000000] [--dim 384] [--threads 2]
        [--json out.json]
    python -m benchmarks.index_scaling --quick      # small sizes, seconds (what the test runs)

Random unit vectors have no cluster structure, the hard case for IVF and HNSW: recall at a given
nprobe / efSearch is lower than on real embeddings, which cluster. Queries are fresh random vectors (not
corpus rows). IVF lists: a power of two near 4·sqrt(n); nprobe 32; HNSW32 efSearch 64. Index types whose
build would take too long on a small machine are skipped above `--hnsw-max` vectors.
Prints a markdown table and writes (or prints) the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """n random unit vectors, generated in chunks to keep the float64 temporaries small."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        x = rng.standard_normal((min(100_000, n - start), dim), dtype=np.float32)
        out[start : start + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return int(next(line for line in fh if line.startswith("VmRSS")).split()[1]) / 1024


def nlist_for(n: int) -> int:
    return int(2 ** round(np.log2(4 * np.sqrt(n))))


def factories_for(n: int, dim: int, hnsw_max: int, pq_bits: int = 8) -> list[tuple[str, int]]:
    """(factory, shards) pairs measured at corpus size n."""
    nlist = nlist_for(n)
    pq = f"PQ{48 if dim % 48 == 0 else 8}" + ("" if pq_bits == 8 else f"x{pq_bits}")
    rows = [("Flat", 1), ("Flat", 4), (f"IVF{nlist},Flat", 1), (f"IVF{nlist},{pq}", 1)]
    if n <= hnsw_max:
        rows.append(("HNSW32", 1))
    return rows


def time_search(index, queries: np.ndarray, k: int, batch: int) -> float:
    """Queries/s for `queries` searched in batches of `batch` (at least 0.2 s of work, all batches)."""
    started, done = time.perf_counter(), 0
    while True:
        for start in range(0, len(queries), batch):
            index.search(queries[start : start + batch], k)
            done += len(queries[start : start + batch])
        if time.perf_counter() - started > 0.2:
            return done / (time.perf_counter() - started)


def measure(
    n: int, dim: int, n_queries: int, batches: list[int], hnsw_max: int, k: int, seed: int, pq_bits: int
) -> list[dict]:
    import faiss

    from rerank_engine.recall.index import RecallIndex, exact_recall_at_k

    emb = unit_vectors(n, dim, seed)
    queries = unit_vectors(n_queries, dim, seed + 1)
    ids = [f"d{i:08d}" for i in range(n)]
    t0 = time.perf_counter()
    exact_kth = faiss.knn(queries, emb, k, metric=faiss.METRIC_INNER_PRODUCT)[0][:, -1]
    exact_s = time.perf_counter() - t0
    rows = []
    for factory, shards in factories_for(n, dim, hnsw_max, pq_bits):
        nlist = nlist_for(n)
        before = rss_mb()
        t0 = time.perf_counter()
        index = RecallIndex.build(
            emb, ids, factory=factory, shards=shards, train_size=max(100_000, 40 * nlist), seed=seed
        )
        build_s = time.perf_counter() - t0
        index_bytes = sum(len(faiss.serialize_index(p)) for p in index.parts)
        row = {
            "n": n,
            "dim": dim,
            "factory": factory,
            "shards": shards,
            "search_params": dict(index.search_params),
            "build_s": round(build_s, 2),
            "train_s": index.manifest["build_seconds"]["train_s"],
            "index_mb": round(index_bytes / 2**20, 1),
            "bytes_per_vector": round(index_bytes / n, 1),
            "rss_growth_mb": round(rss_mb() - before, 1),
            "recall_at_20": round(exact_recall_at_k(index, emb, queries, k, exact_kth=exact_kth), 4),
            "qps_by_batch": {str(b): round(time_search(index, queries, k, b), 1) for b in batches},
        }
        row["qps"] = row["qps_by_batch"][str(batches[-1])]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        del index
    rows.append({"n": n, "factory": "exact ground truth (faiss.knn)", "seconds": round(exact_s, 2)})
    return rows


def markdown(rows: list[dict], batches: list[int]) -> str:
    head = "| n | index | shards | params | build s | index MB | B/vector | RSS growth MB | recall@20 | "
    head += " | ".join(f"q/s (batch {b})" for b in batches) + " |"
    lines = [head, "|" + "---|" * (9 + len(batches))]
    for r in rows:
        if "qps" not in r:
            continue
        params = ", ".join(f"{k}={v}" for k, v in r["search_params"].items()) or "-"
        qps = " | ".join(f"{r['qps_by_batch'][str(b)]:,.0f}" for b in batches)
        lines.append(
            f"| {r['n']:,} | {r['factory']} | {r['shards']} | {params} | {r['build_s']:.1f} "
            f"| {r['index_mb']:,.0f} | {r['bytes_per_vector']:.0f} | {r['rss_growth_mb']:,.0f} "
            f"| {r['recall_at_20']:.3f} | {qps} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.index_scaling", description=__doc__.splitlines()[0]
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--batches", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--threads", type=int, default=2, help="FAISS OpenMP threads")
    p.add_argument("--hnsw-max", type=int, default=200_000, help="skip HNSW32 above this corpus size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick", action="store_true", help="sizes 2,000 and 5,000, dim 64, 200 queries, PQ 4-bit"
    )
    p.add_argument("--json", default=None, help="write the JSON here (default: print it)")
    args = p.parse_args(argv)
    pq_bits = 8
    if args.quick:
        args.sizes, args.dim, args.queries, args.batches, pq_bits = [2000, 5000], 64, 200, [10, 200], 4
    import faiss

    faiss.omp_set_num_threads(args.threads)
    rows = []
    for n in args.sizes:
        rows.extend(measure(n, args.dim, args.queries, args.batches, args.hnsw_max, 20, args.seed, pq_bits))
    result = {"threads": args.threads, "queries": args.queries, "dim": args.dim, "rows": rows}
    print(markdown(rows, args.batches))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
