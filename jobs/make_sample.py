"""Build the sample: a query log of InsuranceQA test questions (gold answer ids passed through) and a
small corpus Parquet (their answers plus InsuranceQA's own hard negatives).

    python -m jobs.make_sample --out sample [--queries 300] [--negatives 6]

Needs the data extra (`pip install 'rerank-engine[data]'`). Writes <out>/queries.parquet and
<out>/corpus.parquet; rerunning with the same options rewrites identical files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rerank_engine import cli
from rerank_engine.data.insuranceqa import DATA_VERSION, load_answers, load_split


def make_sample(out: str | Path, n_queries: int = 300, n_negatives: int = 6, split: str = "test") -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    questions = load_split(split)[:n_queries]
    answers = load_answers()
    docs: dict[str, None] = {}
    for q in questions:
        docs.update(dict.fromkeys(q.answers))
        docs.update(dict.fromkeys(q.negatives[:n_negatives]))
    queries = pa.table(
        {
            "query_id": [q.qid for q in questions],
            "query": [q.text for q in questions],
            "domain": [q.domain for q in questions],
            "gold_doc_ids": pa.array([list(q.answers) for q in questions], pa.list_(pa.string())),
        }
    )
    doc_ids = sorted(docs, key=int)
    corpus = pa.table({"doc_id": doc_ids, "text": [answers[d] for d in doc_ids]})
    pq.write_table(queries, out / "queries.parquet")
    pq.write_table(corpus, out / "corpus.parquet")
    info = {"queries": queries.num_rows, "corpus": corpus.num_rows, "split": split, "data": DATA_VERSION}
    (out / "sample.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv=None, prog: str = "python -m jobs.make_sample") -> int:
    p = cli.command_parser(prog, __doc__, "--out sample --queries 300 --negatives 6")
    p.add_argument("--out", required=True)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--negatives", type=int, default=6)
    args = p.parse_args(argv)

    def body() -> int:
        print(json.dumps(make_sample(args.out, args.queries, args.negatives)))
        return 0

    return cli.run_main("sample", args, body)


if __name__ == "__main__":
    raise SystemExit(main())
