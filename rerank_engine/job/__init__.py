"""The batch job on Ray Data: inputs checked, every distinct query recalled and reranked once, each input
row in the output exactly once, then the summary and report. Importing this package starts nothing.

driver (the job), pipeline (the Ray Data wiring), stages and recall_stages, output_scan (what the
driver reads back), dedupe (each distinct query once), exactly_once (the output check), nightly (one date
partition, committed), score_cache (scores kept across runs), index_build (corpus → embeddings → index),
ray_session (connecting to Ray) and orphans (agents a killed driver's Ray left), watch (what a late job
waits on), ray_metrics, summary, run_report. The record and file helpers (`files`) and the progress switch
(`progress`) sit at the package root, as every layer uses them.
"""
