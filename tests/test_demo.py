"""`make demo`'s reading of its own figures."""

from jobs.demo import threshold_hint


def _evaluation(queries_with_none: int) -> dict:
    block = {"P@1": 0.5, "NDCG@5": 0.5, "queries_with_none": queries_with_none}
    return {"recall top-5 (bi-encoder)": {**block, "queries_with_none": 0}, "rerank top-5 ≥ threshold": block}


def test_hint_only_when_the_threshold_left_queries_empty():
    assert threshold_hint(_evaluation(0)) is None
    hint = threshold_hint(_evaluation(181))
    assert hint.startswith("181 queries got no passage")
    assert "--set k_rerank=20 --set threshold=0" in hint and "jobs.rerank_vs_recall" in hint


def test_three_rows_on_the_same_candidates(tmp_path):
    """The rerank top-5 row comes from the threshold-0 output, the kept row from the job's own; noise
    and queries handed nothing are counted from the Parquet read back."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.demo import KEPT, RECALL, RERANK, evaluate_output, evaluation_table
    from rerank_engine.schema import RESULT_TYPE

    pq.write_table(
        pa.table({"query_id": ["a", "b"], "query": ["qa", "qb"], "gold_doc_ids": [["d1"], ["d9"]]}),
        tmp_path / "queries.parquet",
    )

    def output(name, results):
        rows = [
            [
                {"doc_id": d, "rank": i + 1, "score": s, "logit": 0.0, "recall_score": None, "recall_rank": 1}
                for i, (d, s) in enumerate(r)
            ]
            for r in results
        ]
        table = pa.table({"query_id": ["a", "b"], "results": pa.array(rows, pa.list_(RESULT_TYPE))})
        pq.write_table(table, tmp_path / name)
        return tmp_path / name

    top5 = output("top5.parquet", [[("d1", 0.9), ("d2", 0.2)], [("d8", 0.3), ("d9", 0.2)]])
    kept = output("kept.parquet", [[("d1", 0.9)], []])
    recall = {"a": ["d2", "d1"], "b": ["d7", "d8"]}
    ev = evaluate_output(kept, tmp_path / "queries.parquet", recall, unfiltered=top5)
    assert list(ev) == [RECALL, RERANK, KEPT]
    assert ev[RECALL]["P@1"] == 0.0 and ev[RERANK]["P@1"] == 0.5 and ev[KEPT]["P@1"] == 0.5
    assert ev[RERANK]["noise"] == 0.5 and ev[KEPT]["noise"] == 0.0
    assert ev[KEPT]["queries_with_none"] == 1 and ev[RERANK]["queries_with_none"] == 0
    assert ev[KEPT]["passages_handed_on"] == 1
    table = evaluation_table(ev).splitlines()
    assert table[2].lstrip().startswith(RERANK) and "noise" in table[0] and "queries_with_none" in table[0]


def test_the_evaluation_prints_as_a_table_with_aligned_figures():
    from jobs.demo import evaluation_table

    block = {"P@1": 0.32, "NDCG@5": 0.2714, "passages_handed_on": 1500}
    table = evaluation_table({"recall top-5": block, "rerank top-5 ≥ threshold": {**block, "P@1": 0.567}})
    assert table.splitlines() == [
        "                              P@1  NDCG@5  passages_handed_on",
        "  recall top-5              0.320   0.271               1,500",
        "  rerank top-5 ≥ threshold  0.567   0.271               1,500",
    ]
