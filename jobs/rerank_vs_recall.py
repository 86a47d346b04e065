"""Does rerank beat recall on your data? Compare both orders in one job output, with labels or blind.

Run the job once with every candidate kept, so that its output holds the recall order and the rerank
order of each query:

    python -m jobs.rerank --config jobs/configs/local.yaml --input sample/queries.parquet \
        --corpus sample/corpus.parquet --index sample/index --output sample/output_all \
        --set k_rerank=20 --set threshold=0

With labels (a list<string> column of relevant doc ids passed through from the query log, such as the
sample's `gold_doc_ids`): P@1, NDCG@5, MRR@5, R@5 of both orders, and per query NDCG@5 wins and losses.

    python -m jobs.rerank_vs_recall --output sample/output_all --labels-column gold_doc_ids

Without labels: a blind sample of the queries whose recall top-1 and rerank top-1 differ, the two
passages shown as A and B in random order (`<blind>/blind_items.md`, the key in `blind_key.json`). Judge
each A and B relevant or not in `<blind>/judgements.json` without opening the key, then count:

    python -m jobs.rerank_vs_recall --output sample/output_all --corpus sample/corpus.parquet \
        --blind reports/blind [--sample 100]
    python -m jobs.rerank_vs_recall --output sample/output_all --corpus sample/corpus.parquet \
        --blind reports/blind --judgements reports/blind/judgements.json

Each query id is compared once (its first row). Rows with a row-error status are counted, not compared.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from rerank_engine import cli
from rerank_engine.config import ColumnsConfig
from rerank_engine.errors import InputError
from rerank_engine.job.stages import load_corpus
from rerank_engine.quality.label_audit import blind_items, items_markdown, orders_of, paired, tally
from rerank_engine.quality.metrics import mean_metrics
from rerank_engine.quality.paired import per_question_vs

RECALL, RERANK = "recall", "rerank"
COMPARED = ("ok", "no_relevant")


def load_orders(output: str | Path, labels_column: str | None = None) -> tuple[list[dict], dict]:
    """One record per distinct query id: query, recall order, rerank order (and labels); plus counts."""
    columns = ["query_id", "query", "results", "n_candidates", "status"] + (
        [labels_column] if labels_column else []
    )
    table = pq.read_table(output, partitioning=None)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(f"{output}: no column {missing} (columns: {table.column_names})")
    rows, seen, counts = [], set(), Counter()
    for i, row in enumerate(table.select(columns).to_pylist()):
        if row["query_id"] in seen:
            counts["duplicate_query_id_rows"] += 1
            continue
        seen.add(row["query_id"])
        if row["status"] not in COMPARED:
            counts[f"status_{row['status']}"] += 1
            continue
        where = f"{output}: row {i} (query_id {row['query_id']!r})"
        if len(row["results"]) != row["n_candidates"]:
            raise InputError(
                f"{where} keeps {len(row['results'])} of its {row['n_candidates']} candidates; write the "
                "output with every candidate kept: --set k_rerank=<k_recall> --set threshold=0"
            )
        recall, rerank = orders_of(row["results"], where)
        rec = {"query_id": row["query_id"], "query": row["query"], RECALL: recall, RERANK: rerank}
        if labels_column:
            rec["labels"] = set(row[labels_column] or ())
        rows.append(rec)
    counts["compared"] = len(rows)
    return rows, dict(counts)


def compare_with_labels(rows: list[dict]) -> dict:
    labelled = [r for r in rows if r["labels"]]
    out = {"queries_with_labels": len(labelled), "queries_without_labels": len(rows) - len(labelled)}
    for system in (RECALL, RERANK):
        m = mean_metrics([(r[system], r["labels"]) for r in labelled], (1, 5))
        out[system] = {k: round(m[k], 4) for k in ("P@1", "NDCG@5", "MRR@5", "R@5")}
    vs = per_question_vs(
        [(r[RERANK], r["labels"]) for r in labelled], [(r[RECALL], r["labels"]) for r in labelled]
    )
    out["ndcg5_per_query"] = {
        "rerank_better": vs["better"],
        "recall_better": vs["worse"],
        "ties": len(labelled) - vs["better"] - vs["worse"],
        "sign_test_p": vs["sign_test_p"],
    }
    return out


def blind_sample(rows: list[dict], corpus: str | Path, out: Path, sample: int, seed: int = 0):
    """Write the blind items and their key; return the picked rows (a prefix of one fixed permutation)."""
    differ = [r for r in rows if r[RECALL][0] != r[RERANK][0]]
    picked = [differ[i] for i in np.random.default_rng(seed).permutation(len(differ))[:sample]]
    need = {r[s][0] for r in picked for s in (RECALL, RERANK)}
    text = load_corpus(str(corpus), ColumnsConfig())  # as the job reads it: "title. text"
    if need - text.keys():
        raise InputError(
            f"{corpus}: doc ids of the output not in the corpus: {sorted(need - text.keys())[:5]}"
        )
    items, key = blind_items(
        [(r["query"], text[r[RECALL][0]], text[r[RERANK][0]]) for r in picked], (RECALL, RERANK)
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "blind_items.md").write_text(
        items_markdown(items, "Blind sample: is each passage relevant to the query?")
    )
    (out / "blind_key.json").write_text(
        json.dumps({"query_ids": [r["query_id"] for r in picked], "key": key}) + "\n"
    )
    template = out / "judgements.json"
    if not template.exists():
        template.write_text("[\n" + ",\n".join('{"A": null, "B": null}' for _ in items) + "\n]\n")
    return {"queries_top1_differs": len(differ), "sample": len(picked)}


def main(argv=None, prog: str = "python -m jobs.rerank_vs_recall") -> int:
    p = cli.command_parser(prog, __doc__, "--output sample/output_all --labels-column gold_doc_ids")
    p.add_argument("--output", required=True, help="the job's output folder or file (every candidate kept)")
    p.add_argument("--labels-column", default=None, help="list<string> column of relevant doc ids")
    p.add_argument("--corpus", default=None, help="corpus Parquet (for --blind)")
    p.add_argument("--blind", default=None, help="folder for the blind sample")
    p.add_argument("--sample", type=int, default=100)
    p.add_argument("--judgements", default=None, help="verdicts on <blind>/blind_items.md (JSON list)")
    args = p.parse_args(argv)
    if not args.labels_column and not args.blind:
        p.error("give --labels-column, --blind, or both")
    if args.blind and not args.corpus:
        p.error("--blind needs --corpus (the passages' text)")
    return cli.run_main("rerank_vs_recall", args, lambda: run(args))


def run(args) -> int:
    rows, counts = load_orders(args.output, args.labels_column)
    report = {"rows": counts}
    if args.labels_column:
        report["labels"] = compare_with_labels(rows)
    if args.blind:
        blind = Path(args.blind)
        if args.judgements:  # count against the key already written; never redraw under a judge's verdicts
            key = json.loads((blind / "blind_key.json").read_text())["key"]
            judged = json.loads(Path(args.judgements).read_text())
            report["blind"] = {"judged": tally(judged, key), "paired": paired(judged, key, (RECALL, RERANK))}
        else:
            report["blind"] = blind_sample(rows, args.corpus, blind, args.sample)
        (blind / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
