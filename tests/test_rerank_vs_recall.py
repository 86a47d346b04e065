"""jobs.rerank_vs_recall on job outputs written to Parquet in the job's output schema and read back."""

from __future__ import annotations

import json
import math
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import rerank_vs_recall
from rerank_engine.schema import output_schema

INPUT = pa.schema([("query_id", pa.string()), ("query", pa.string()), ("gold", pa.list_(pa.string()))])


def _results(recall: list[str], rerank: list[str]) -> list[dict]:
    return [
        {
            "doc_id": d,
            "rank": rerank.index(d) + 1,
            "score": 0.5,
            "logit": 0.0,
            "recall_score": 0.5,
            "recall_rank": recall.index(d) + 1,
        }
        for d in rerank
    ]


def _row(qid, recall, rerank, gold, status="ok", kept=None):
    results = _results(recall, rerank)[: kept or len(rerank)]
    return {
        "query_id": qid,
        "query": f"question {qid}",
        "gold": gold,
        "results": results,
        "n_candidates": len(recall),
        "n_kept": len(results),
        "status": status,
    }


def _write(path, rows):
    schema = output_schema(INPUT)
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    pq.write_table(pa.table(cols, schema=schema), path)
    return path


def test_labels_compare_both_orders(tmp_path, capsys):
    out = _write(
        tmp_path / "out.parquet",
        [
            _row("q1", ["a", "b", "c"], ["b", "a", "c"], ["b"]),  # rerank lifts the answer to 1
            _row("q2", ["d", "e", "f"], ["e", "d", "f"], ["d"]),  # rerank pushes it to 2
            _row("q3", ["g", "h", "i"], ["g", "i", "h"], ["g"]),  # same top-1: a tie
            _row("q3", ["g", "h", "i"], ["h", "g", "i"], ["h"]),  # a repeated query id: compared once
            _row("q4", ["j", "k", "l"], [], [], status="empty_query"),
            _row("q5", ["m", "n", "o"], ["n", "m", "o"], []),  # no labels: left out of the metrics
        ],
    )
    assert rerank_vs_recall.main(["--output", str(out), "--labels-column", "gold"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == {"duplicate_query_id_rows": 1, "status_empty_query": 1, "compared": 4}
    labels = report["labels"]
    assert labels["queries_with_labels"] == 3 and labels["queries_without_labels"] == 1
    # answer at 2 scores 1/log2(3) = 0.6309; recall: (0.6309 + 1 + 1) / 3, rerank: (1 + 0.6309 + 1) / 3
    assert labels["recall"]["P@1"] == pytest.approx(2 / 3, abs=1e-4)
    assert labels["rerank"]["P@1"] == pytest.approx(2 / 3, abs=1e-4)
    assert labels["recall"]["NDCG@5"] == pytest.approx((1 / math.log2(3) + 2) / 3, abs=1e-4)
    assert labels["ndcg5_per_query"] == {
        "rerank_better": 1,
        "recall_better": 1,
        "ties": 1,
        "sign_test_p": 1.0,
    }


def test_an_output_that_dropped_candidates_is_refused(tmp_path, capsys):
    out = _write(tmp_path / "out.parquet", [_row("q1", ["a", "b", "c"], ["b", "a", "c"], ["b"], kept=2)])
    assert rerank_vs_recall.main(["--output", str(out), "--labels-column", "gold"]) == 2  # an InputError
    err = capsys.readouterr().err
    assert re.search(
        r"^rerank_vs_recall failed: .*query_id 'q1'\) keeps 2 of its 3 candidates.*k_rerank=<k_recall>", err
    )
    with pytest.raises(ValueError, match="keeps 2 of its 3 candidates"):  # the library call raises it
        rerank_vs_recall.load_orders(out, "gold")


def test_blind_sample_then_judgements(tmp_path, capsys):
    out = _write(
        tmp_path / "out.parquet",
        [_row(f"q{i}", ["a", f"b{i}"], [f"b{i}", "a"], []) for i in range(6)]
        + [_row("same", ["a", "c"], ["a", "c"], [])],
    )
    corpus = tmp_path / "corpus.parquet"
    ids = ["a", "c"] + [f"b{i}" for i in range(6)]
    pq.write_table(
        pa.table({"doc_id": ids, "text": [f"text of {d}" for d in ids], "title": ["T"] + [None] * 7}), corpus
    )
    blind = tmp_path / "blind"
    args = ["--output", str(out), "--corpus", str(corpus), "--blind", str(blind), "--sample", "4"]
    assert rerank_vs_recall.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["blind"] == {"queries_top1_differs": 6, "sample": 4}  # "same" has one top-1 for both
    items = (blind / "blind_items.md").read_text()
    assert items.count("## ") == 4 and "T. text of a" in items  # the title is prepended, as the job does
    key = json.loads((blind / "blind_key.json").read_text())["key"]
    assert (
        rerank_vs_recall.main([*args, "--judgements", str(blind / "judgements.json")]) == 2
    )  # the blank template
    assert "judge each of A and B true or false" in capsys.readouterr().err
    # judge every rerank passage relevant and every recall passage not
    judged = [{letter: system == "rerank" for letter, system in k.items()} for k in key]
    (blind / "judgements.json").write_text(json.dumps(judged))
    capsys.readouterr()
    assert rerank_vs_recall.main([*args, "--judgements", str(blind / "judgements.json")]) == 0
    report = json.loads(capsys.readouterr().out)["blind"]
    assert "queries_top1_differs" not in report  # the sample is not redrawn under the verdicts
    assert report["judged"]["rerank"] == {"relevant": 4, "judged": 4, "share": 1.0}
    assert report["judged"]["recall"] == {"relevant": 0, "judged": 4, "share": 0.0}
    assert report["paired"]["only rerank"] == 4 and report["paired"]["sign_test_p"] == 0.125
