"""Quality: how good the scores are and where to cut them — metrics, evaluation, thresholds, calibration.

metrics (ranking metrics), evaluation (InsuranceQA, against the baselines), paired (paired differences
and sign tests), out_of_domain (classic IR collections), thresholds (sweep and choose),
fusion (reranker logit + bi-encoder cosine), calibration (threshold and fusion chosen on valid, written
beside the model), score_policy (which score is written and thresholded), report (the evaluation's
report.md), label_audit (how incomplete labels are), plots (PNG plots, matplotlib imported on use).
"""
