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


def test_the_evaluation_prints_as_a_table_with_aligned_figures():
    from jobs.demo import evaluation_table

    block = {"P@1": 0.32, "NDCG@5": 0.2714, "passages_handed_on": 1500}
    table = evaluation_table({"recall top-5": block, "rerank top-5 ≥ threshold": {**block, "P@1": 0.567}})
    assert table.splitlines() == [
        "                              P@1  NDCG@5  passages_handed_on",
        "  recall top-5              0.320   0.271               1,500",
        "  rerank top-5 ≥ threshold  0.567   0.271               1,500",
    ]
