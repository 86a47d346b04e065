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
