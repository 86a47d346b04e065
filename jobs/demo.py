"""The main job on the sample data, end to end (what `make demo` runs).

    python -m jobs.demo [--out sample] [--queries 300]

1. builds the sample (InsuranceQA test questions + a small corpus) unless present;
2. builds the recall index (cached by corpus hash and bi-encoder);
3. runs the batch job on a local Ray (the ONNX export of the default model is cached);
4. runs it again with threshold 0 into <out>/output_top5 (every score comes from the first run's score
   cache), so the evaluation can show what the threshold trades;
5. prints the run summary as a table and an evaluation against the gold answer ids, three rows on the same
   candidates: the bi-encoder's own top-5 (the recall-only baseline), the rerank top-5, and the rerank
   top-5 ≥ threshold (what the job hands on), each with its noise and the queries handed nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from rerank_engine import cli
from rerank_engine.config import load_job_config
from rerank_engine.errors import RerankEngineError
from rerank_engine.quality.metrics import mean_metrics, noise_ratio

RECALL, RERANK, KEPT = "recall top-5 (bi-encoder)", "rerank top-5", "rerank top-5 ≥ threshold"


def recall_top5(index_dir: Path, queries: Path) -> dict:
    """{query_id: the bi-encoder's top-5 doc ids} over the sample's index."""
    from rerank_engine.recall.index import BiEncoder, RecallIndex

    src = pq.read_table(queries).to_pylist()
    _, ids = RecallIndex.load(index_dir).search(BiEncoder().encode([r["query"] for r in src]), 5)
    return {r["query_id"]: list(map(str, row)) for row, r in zip(ids, src, strict=True)}


def evaluate_output(output: Path, queries: Path, recall: dict, unfiltered: Path | None = None) -> dict:
    """Gold labels vs the bi-encoder's top-5 (`recall`), the rerank top-5 (the job's output at threshold
    0, when `unfiltered` is given) and the job's threshold-filtered top-5 (`output`)."""
    gold = {r["query_id"]: set(r["gold_doc_ids"]) for r in pq.read_table(queries).to_pylist()}

    def runs_of(path: Path) -> list:
        return [
            ([x["doc_id"] for x in r["results"]], gold[r["query_id"]])
            for r in pq.read_table(path).to_pylist()
        ]

    def block(runs):
        m = mean_metrics(runs, ks=(1, 5))
        handed = sum(len(r) for r, _ in runs)
        return {
            "P@1": round(m["P@1"], 3),
            "NDCG@5": round(m["NDCG@5"], 3),
            "MRR@5": round(m["MRR@5"], 3),
            "R@5": round(m["R@5"], 3),
            "noise": round(noise_ratio(runs), 3),
            "passages_handed_on": handed,
            "queries_with_none": sum(1 for r, _ in runs if not r),
        }

    rows = {RECALL: block([(recall[q], gold[q]) for q in gold])}
    if unfiltered is not None:
        rows[RERANK] = block(runs_of(unfiltered))
    rows[KEPT] = block(runs_of(output))
    return rows


def threshold_hint(evaluation: dict) -> str | None:
    """What to read into the thresholded figures when the threshold left queries with nothing."""
    kept = evaluation[KEPT]
    if not kept["queries_with_none"]:
        return None
    return (
        f"{kept['queries_with_none']} queries got no passage above the threshold and count as 0 in the "
        "rerank row's P@1 and NDCG@5: 'better none than bad', with the model's calibrated threshold (the "
        "default model's was chosen on the full InsuranceQA corpus, not on this sample). To compare the "
        "reranker's order with recall's on the same candidates, run "
        "the job with --set k_rerank=20 --set threshold=0 and then python -m jobs.rerank_vs_recall "
        "(README: 'Does rerank beat recall on your data?')."
    )


def evaluation_table(evaluation: dict) -> str:
    """`evaluate_output`'s rows side by side, one column per figure."""
    names = list(next(iter(evaluation.values())))
    width = max(map(len, evaluation))

    def cell(value, name):
        text = f"{value:.3f}" if isinstance(value, float) else f"{value:,}"
        return f"{text:>{max(len(name), 5)}}"

    head = f"  {'':<{width}}  " + "  ".join(f"{n:>{max(len(n), 5)}}" for n in names)
    rows = [
        f"  {label:<{width}}  " + "  ".join(cell(block[n], n) for n in names)
        for label, block in evaluation.items()
    ]
    return "\n".join([head, *rows])


def main(argv=None, prog: str = "python -m jobs.demo") -> int:
    p = cli.command_parser(prog, __doc__, "--out sample --queries 300", with_progress=True)
    p.add_argument("--out", default="sample")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--config", default="jobs/configs/local.yaml")
    args = p.parse_args(argv)
    return cli.run_main("demo", args, lambda: run(args))


def run(args) -> int:
    from jobs.make_sample import make_sample
    from rerank_engine.job.driver import run_job
    from rerank_engine.job.index_build import build_index

    root = Path(args.out)
    config = load_job_config(args.config)
    if not Path(config.model).exists():
        raise RerankEngineError(
            f"default model {config.model} is missing; train it with "
            "`python -m jobs.finetune_reranker --config jobs/configs/finetune_insuranceqa_v6.yaml --ship`"
        )
    if not (root / "queries.parquet").is_file():
        print("sample:", json.dumps(make_sample(root, args.queries)))
    index = build_index(str(root / "corpus.parquet"), str(root / "index"))
    print(
        f"index: {root / 'index'} ({index['count']:,} passages, {index['index_type']}, "
        f"{index['model']}{', cached' if index.get('cached') else ''})\n"
    )
    config = config.model_copy(update={"score_cache": str(root / "score_cache")})
    paths = {
        "input": str(root / "queries.parquet"),
        "corpus": str(root / "corpus.parquet"),
        "index": str(root / "index"),
    }
    summary = run_job(config, **paths, output=str(root / "output"), overwrite=True)
    cli.print_summary(summary)
    top5 = run_job(
        config.model_copy(update={"threshold": 0.0}),
        **paths,
        output=str(root / "output_top5"),
        overwrite=True,
    )
    print(
        f"\nsecond run at threshold 0 into {root / 'output_top5'}: {top5.get('pairs_cached', 0):,} of "
        f"{top5.get('pairs', 0):,} pairs from the first run's score cache"
    )
    queries = root / "queries.parquet"
    recall = recall_top5(root / "index", queries)
    evaluation = evaluate_output(root / "output", queries, recall, unfiltered=root / "output_top5")
    print("\nevaluation against the gold answers, the same candidates:")
    print(evaluation_table(evaluation))
    if hint := threshold_hint(evaluation):
        print("\n" + hint)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
