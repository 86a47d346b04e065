"""The run summary table, on summaries made by the job's own code from a real scored batch."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_engine import cli
from rerank_engine.config import JobConfig
from rerank_engine.job.nightly import aggregate
from rerank_engine.job.output_scan import summarize
from rerank_engine.job.stages import RerankStage, TokenizeStage, finalize, logged_candidates
from rerank_engine.job.summary import format_summary
from rerank_engine.quality.score_policy import ScorePolicy

DOCS = {"d1": "Flood damage is excluded.", "d2": "A 90 day waiting period.", "d3": "Term life pays nothing."}


@pytest.fixture(scope="module")
def output(tiny_export, tmp_path_factory):
    """What the pipeline writes for five logged-candidate queries: two ok, one empty, one without
    candidates, one whose candidates are all unknown; four candidates in all are not in the corpus."""
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": list(DOCS), "text": list(DOCS.values())}), corpus)
    config = JobConfig.build(model=str(tiny_export), precision="fp32", k_recall=4, k_rerank=2, threshold=0.0)
    batch = {
        "query_id": ["q1", "q2", "q3", "q4", "q5"],
        "query": ["flood cover", "  ", "waiting period", "term life", "life"],
        "candidates": [["d1", "d2", "d3"], ["d1"], [], ["nope", "zzz"], ["d3", "missing", "gone"]],
    }
    tokenized = TokenizeStage(
        corpus_path=str(corpus), model_source=tiny_export, columns=config.columns, tokenizer=config.tokenizer
    )(logged_candidates(batch, columns=config.columns))
    reranked = RerankStage(config.engine(tiny_export, threads=1))(tokenized)
    out = finalize(
        reranked,
        k_rerank=2,
        policy=ScorePolicy(reranker_model="m", recall_model="logged", threshold=0.0),
        run_id="r",
    )
    return config, out, reranked


def test_finalize_writes_the_unknown_candidates_per_row(output):
    _, out, _ = output
    assert out.column("n_unknown").to_pylist() == [0, 0, 0, 2, 2]


def _job_summary(output) -> dict:
    config, out, _ = output
    summary = summarize(out, config, pipeline_s=2.0, wall_s=9.5)
    summary.update(  # as run_job completes it
        distinct_queries=4, run_id="r1", output="out/", mode="logged_candidates", threshold=0.0, fusion=None
    )
    return summary


def test_the_table_holds_every_figure_of_a_job_summary(output):
    summary = _job_summary(output)
    table = format_summary(summary).splitlines()
    assert table[0] == "run r1 · logged candidates · threshold 0.000"
    rows = dict(line.strip().split("  ", 1) for line in table[1:])
    rows = {k: v.strip() for k, v in rows.items()}
    assert rows["queries"] == "5"
    assert rows["distinct queries"] == "4 (80.0%)"
    assert rows["pairs"] == "4"  # q1's three and q5's one known candidate
    assert rows["pairs scored / cached"] == "4 / 0"
    assert rows["pairs/s"] == "2.0"  # 4 pairs in a 2 s pipeline
    assert rows["padding efficiency"] == f"{summary['padding_efficiency']:.1%}"
    assert 0 < summary["padding_efficiency"] <= 1
    assert rows["passages kept"] == "3"  # threshold 0: q1 keeps its top 2, q5 its one
    assert rows["passages under threshold"] == "0"
    assert rows["queries ok"] == "2 (40.0%)"
    assert rows["queries no_relevant"] == "0 (0.0%)"
    assert rows["rows by error status"] == "empty_query 1, no_candidates 1, unknown_candidates 1"
    assert rows["candidates not in corpus"] == "4"
    assert rows["wall time"] == "9.5 s (pipeline 2.0 s)"
    assert rows["providers"] == "CPUExecutionProvider"
    assert rows["full summary"] == "out/_run_summary.json" and rows["report"] == "out/_report.md"


def test_passages_under_the_threshold_are_those_of_a_top_k_not_kept(output):
    config, _, reranked = output
    out = finalize(
        reranked,
        k_rerank=2,
        policy=ScorePolicy(reranker_model="m", recall_model="logged", threshold=1.0),
        run_id="r",
    )
    summary = summarize(out, config, pipeline_s=1.0, wall_s=1.0)
    assert summary["kept"] == 0 and summary["no_relevant"] == 2
    assert summary["passages_below_threshold"] == 3  # q1's top 2 of its 3, q5's one


def test_a_nightly_summary_sums_its_chunks(output):
    chunk = _job_summary(output)
    success = {
        "date": "2026-11-26",
        **aggregate([chunk, chunk]),
        "chunks": 2,
        "chunks_run": 1,
        "chunks_resumed": 1,
        "run_id": "n1",
        "output": "out/dt=2026-11-26",
        "wall_s": 20.0,
        "skipped": False,
    }
    text = format_summary(success)
    assert text.splitlines()[0] == "nightly 2026-11-26 · run n1 · 2 chunk(s): 1 chunk(s) run, 1 resumed"
    assert "  queries                   10\n" in text
    assert "  distinct queries          —\n" in text  # not additive over chunks: not shown
    assert "  candidates not in corpus  8\n" in text
    assert "  pairs/s                   2.0\n" in text  # 8 pairs over 4 s of pipeline
    assert "  rows by error status      empty_query 2, no_candidates 2, unknown_candidates 2\n" in text
    assert text.endswith(
        "  full summary              out/dt=2026-11-26/_SUCCESS\n"
        "  report                    out/dt=2026-11-26/_report.md"
    )


def test_the_command_prints_the_table_or_with_json_the_summary(output, capsys):
    import json

    summary = _job_summary(output)
    cli.print_summary(summary)
    assert capsys.readouterr().out == format_summary(summary) + "\n"
    cli.print_summary(summary, as_json=True)
    assert json.loads(capsys.readouterr().out) == summary


def test_an_output_scanned_a_file_at_a_time_sums_to_the_whole(output, tmp_path):
    """The driver reads its output one file at a time (bounded memory, #24 finding 6): the tallies, the
    report's figures and the exactly-once check over the parts equal those over the whole table."""
    from rerank_engine.job.exactly_once import InputIds
    from rerank_engine.job.output_scan import SUMMARY_COLUMNS, scan_output
    from rerank_engine.job.run_report import QueryFigures

    config, out, _ = output
    files = []
    for i, (start, n) in enumerate([(0, 2), (2, 1), (3, 2)]):
        files.append(str(tmp_path / f"part-{i}.parquet"))
        pq.write_table(out.slice(start, n), files[-1])
    expected = InputIds.read(files, None, "query_id")
    counts, figures = scan_output(files, config, expected)
    whole = summarize(out, config, pipeline_s=2.0, wall_s=9.5)
    assert summarize(counts, config, pipeline_s=2.0, wall_s=9.5) == whole
    assert whole["queries"] == 5 and whole["providers"] == ["CPUExecutionProvider"]
    one = QueryFigures.of(out.select(["query_id", *SUMMARY_COLUMNS]), "query_id", False)
    assert figures.status == one.status and figures.kept == one.kept
    assert sorted(figures.top_scores) == sorted(one.top_scores)

    with pytest.raises(Exception, match=r"1 query rows missing \(e.g. \['q3'\]\), 0 extra"):
        scan_output([files[0], files[2]], config, expected)


def test_an_exploded_output_counts_and_checks_each_input_row_once_when_ids_repeat(output, tmp_path):
    """Exploded (one row per kept pair), an input row is its head row (rank 1, or its one row with none
    kept): two input rows of one id, with the same results, are two queries, and losing one is caught."""
    from rerank_engine.job.exactly_once import InputIds
    from rerank_engine.job.output_scan import scan_output
    from rerank_engine.job.stages import explode

    config, out, _ = output
    config = config.model_copy(update={"exploded": True})
    doubled = pa.concat_tables([out, out.slice(0, 1)])  # q1 (two pairs kept) twice in the input
    inp = tmp_path / "in.parquet"
    pq.write_table(doubled.select(["query_id"]), inp)
    expected = InputIds.read([str(inp)], None, "query_id")
    flat = explode(doubled, query_id="query_id", query="query")
    assert flat.num_rows == 2 * 2 + 4  # q1's two pairs, twice; one row for each of the other four
    f = tmp_path / "part-0.parquet"
    pq.write_table(flat, f)
    counts, figures = scan_output([str(f)], config, expected)
    plain = summarize(doubled, config.model_copy(update={"exploded": False}), pipeline_s=1.0, wall_s=1.0)
    assert summarize(counts, config, pipeline_s=1.0, wall_s=1.0) == plain
    assert plain["queries"] == 6 and sum(figures.status.values()) == 6

    pq.write_table(flat.slice(2), f)  # one of q1's two input rows lost, its id still present
    with pytest.raises(Exception, match=r"1 query rows missing \(e.g. \['q1'\]\), 0 extra"):
        scan_output([str(f)], config, expected)
