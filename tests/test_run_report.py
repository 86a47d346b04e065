"""The run report beside an output (`_report.md` + PNG plots) and the nightly trend over committed dates."""

from __future__ import annotations

import json
import struct

import numpy as np
import pyarrow as pa
import pytest

from rerank_engine.job import run_report
from rerank_engine.job.run_report import QueryFigures, write_report, write_trend


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def output_table() -> pa.Table:
    """Five query rows as the job writes them: three ranked (two kept something), two errors."""
    return pa.table(
        {
            "query_id": ["a", "b", "c", "d", "e"],
            "status": ["ok", "ok", "no_relevant", "empty_query", "no_candidates"],
            "n_kept": pa.array([3, 1, 0, 0, 0], pa.int32()),
            "top_score": pa.array([0.9, 0.6, 0.2, None, None], pa.float32()),
        }
    )


def summary(**extra) -> dict:
    return {
        "run_id": "20261202T000000Z-abc123",
        "queries": 5,
        "pairs": 60,
        "threshold": 0.5,
        "threshold_source": "models/m/threshold.json",
        "reranker_model": "m@123",
        "recall_model": "r@456",
        "wall_s": 12.5,
        "stage_s": {"input checks": 0.5, "Ray, export, model": 4.0, "pipeline": 7.0, "commit": 1.0},
        **extra,
    }


def test_the_report_names_the_run_and_every_plot_is_a_png_of_the_expected_size(tmp_path):
    figures = QueryFigures.of(output_table(), "query_id", exploded=False)
    assert figures.status == {"ok": 2, "no_relevant": 1, "empty_query": 1, "no_candidates": 1}
    assert figures.kept == {3: 1, 1: 1, 0: 3}
    assert figures.median_top_score() == pytest.approx(0.6, abs=1e-6)

    report = write_report(tmp_path, figures, summary()).read_text()
    assert report.startswith("# Run report: 20261202T000000Z-abc123")
    assert "1 queries have their top score under the threshold" in report  # 0.2 < 0.5
    assert "| no_relevant | 1 |" in report and "| 3 | 1 |" in report and "| pipeline | 7.00 |" in report
    for path in run_report.plot_files(tmp_path):
        assert f"]({path.name})" in report  # the report shows each plot
        assert path.stat().st_size > 2_000
        assert png_size(path) == (640, 400)


def test_an_exploded_output_counts_each_query_once(tmp_path):
    flat = output_table()
    exploded = flat.take(pa.array([0, 0, 0, 1, 2, 3, 4]))  # query a kept 3 rows
    exploded = exploded.append_column("rank", pa.array([1, 2, 3, 1, None, None, None], pa.int32()))
    once, plain = (
        QueryFigures.of(exploded, "query_id", exploded=True),
        QueryFigures.of(flat, "query_id", False),
    )
    assert once.status == plain.status and once.kept == plain.kept
    assert sorted(once.top_scores) == sorted(plain.top_scores)


def test_an_empty_output_still_gets_its_report(tmp_path):
    figures = QueryFigures.of(None, "query_id", exploded=False)
    assert figures.median_top_score() is None
    report = write_report(tmp_path, figures, summary(queries=0, stage_s=None)).read_text()
    assert "20261202T000000Z-abc123" in report
    assert all(png_size(p) == (640, 400) for p in run_report.plot_files(tmp_path))


def test_the_trend_lists_every_committed_date_oldest_first(tmp_path):
    days = {"dt=2026-11-30": (100, 220, 10, 0.71), "dt=2026-11-28": (80, 200, 8, 0.75)}
    for name, (queries, kept, no_relevant, median) in days.items():
        (tmp_path / name).mkdir()
        marker = {"date": name[3:], "queries": queries, "pairs": queries * 20, "kept": kept}
        marker.update(no_relevant=no_relevant, top_score_median=median, reranker_model="m@123")
        (tmp_path / name / "_SUCCESS").write_text(json.dumps(marker))
    (tmp_path / "_nightly").mkdir()  # the work folder and uncommitted dates are not listed
    (tmp_path / "dt=2026-12-01").mkdir()

    rows = run_report.trend_rows(tmp_path, "_SUCCESS")
    assert [r["date"] for r in rows] == ["2026-11-28", "2026-11-30"]
    assert rows[1]["kept_per_query"] == 2.2 and rows[1]["no_relevant_share"] == 0.1
    assert rows[0]["top_score_median"] == 0.75 and rows[0]["pairs"] == 1600

    text = write_trend(tmp_path, "_SUCCESS").read_text()
    assert "2 committed date(s)" in text and "| 2026-11-30 | 100 | 2,000 | 2.200 | 0.100 | 0.710 |" in text
    width, height = png_size(tmp_path / run_report.TREND_PLOT)
    assert (width, height) == (640, 720)


def test_median_ignores_rows_that_were_not_ranked():
    table = output_table().set_column(3, "top_score", pa.array([None] * 5, pa.float32()))
    assert QueryFigures.of(table, "query_id", False).median_top_score() is None
    assert len(QueryFigures.of(output_table(), "query_id", False).top_scores) == 3
    assert np.isfinite(QueryFigures.of(output_table(), "query_id", False).top_scores).all()
