"""The batch job on Ray Data: inputs checked, every distinct query recalled and reranked once, each input
row in the output exactly once, then the summary and report. Importing this package starts nothing.

driver (the job), pipeline (the Ray Data wiring), stages, dedupe (each distinct query once), exactly_once
(the output check), nightly (one date partition, committed), score_cache (scores kept across runs), files,
inputs (cross-input checks), watch (what a late job waits on), ray_metrics, summary, run_report, progress.
"""
