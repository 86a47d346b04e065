"""The evaluation report (`jobs.evaluate`): report.md beside results.json, with its plots. Recall top-5,
rerank top-5 and rerank top-5 with the calibrated threshold side by side, the seed's figures beside ours,
and the out-of-domain collections in plain words.
"""

from __future__ import annotations

import math
from pathlib import Path

from rerank_engine.quality import evaluation
from rerank_engine.quality.fusion import Fusion
from rerank_engine.quality.score_policy import FUSION_FILE, THRESHOLD_FILE, ScorePolicy
from rerank_engine.quality.thresholds import GRID, best_f1, sweep

SEED = {"F1": (0.74, 0.81), "threshold": 0.52, "noise": (0.42, 0.11)}  # the seed's reported figures
K = 5


HANDED_ON_COLUMNS = (
    f"P@{K}",
    f"R@{K}",
    f"NDCG@{K}",
    "precision",
    "F1",
    "F1_all",
    "noise",
    "no_relevant",
    "nothing_when_missed",
    "empty_when_hit",
    "handed_on",
)


NOTES = [
    f"- P@{K}, R@{K}, NDCG@{K}: per question, averaged; R@{K} against every positive (recall misses",
    f"  included); a thresholded list shorter than {K} counts its empty places as misses in P@{K}.",
    "- precision = relevant passages handed on / passages handed on, pooled over questions;",
    "  noise = 1 − precision.",
    f"- F1: recall = relevant handed on / relevant in the system's top-{K} before any threshold (the",
    "  calibration objective, so 1.0 without a threshold). F1_all: recall against every positive.",
    "- no_relevant: share of questions handed nothing. nothing_when_missed: among the questions whose",
    "  positives recall missed, the share handed nothing (the right answer). empty_when_hit: among the",
    f"  questions with a positive in the rerank top-{K}, the share handed nothing (a lost answer).",
]


def _fmt(x) -> str:
    return "–" if isinstance(x, float) and math.isnan(x) else (f"{x:.3f}" if isinstance(x, float) else str(x))


def _table(rows: dict[str, dict], columns) -> str:
    lines = ["| system | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        if not name.startswith("_"):
            lines.append(f"| {name} | " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_report(
    out: Path, results: dict, sc, plain: ScorePolicy | None, command: str, fusion: Fusion | None = None
) -> Path:
    """report.md and its plots in `out`: `plain` is the reranker's calibrated score (threshold.json's),
    `fusion` the fused one (fusion.json's); `command` the command line that made `results`."""
    from rerank_engine.quality import plots

    scored = sc.scored_queries(K)
    meta = results["_meta"]
    lines = [
        f"# Evaluation report: {sc.model_id} on InsuranceQA {meta['split']}",
        "",
        f"`{command}` ({meta['seconds']:.0f} s; {meta['data']}).",
        "",
        "## Cascade",
        "",
        f"{results['cascade']['_info']}",
        "",
        evaluation.markdown_table(results["cascade"]),
    ]
    if "pool" in results:
        lines += [
            "",
            f"Pool setting: {results['pool']['_info']}",
            "",
            evaluation.markdown_table(results["pool"]),
        ]

    lines += ["", f"## Better none than bad: the calibrated threshold (top-{K} handed on)", ""]
    grid = sweep(scored, GRID)
    marks = {}
    if plain is None:
        lines += [f"No `{THRESHOLD_FILE}` beside the model: run `python -m jobs.calibrate` first.", ""]
    else:
        cmp = results["threshold"]
        info, settings = cmp["_info"], plain.settings
        lines += [
            f"Threshold **{plain.threshold:.4f}** ({plain.scale}, `{plain.reranker_model}`), chosen on "
            f"**{settings.get('split', '?')}** ({settings.get('questions', '?')} questions, best pooled F1 "
            f"{plain.calibration.get('at_threshold', {}).get('f1', float('nan')):.3f} there), never on "
            f"test. {info['questions']} {meta['split']} questions, recall top-{info['k_recall']}; "
            f"{info['positive_not_in_recall']} have no positive among the recall candidates.",
            "",
            _table(cmp, HANDED_ON_COLUMNS),
            "",
            *NOTES,
            "",
        ]
        marks["calibrated (valid)"] = plain.threshold
        rows = [name for name in cmp if not name.startswith("_")]
        pairs = [("reranker alone", plain.threshold, cmp[rows[1]], cmp[rows[2]])]
        if len(rows) == 5:  # the fused score's top-5 and its threshold (the job's default)
            pairs.append(("fused with recall (job default)", fusion.threshold, cmp[rows[3]], cmp[rows[4]]))
            lines += [
                f"Fused score: sigmoid({fusion.scale:.4f} · (logit + {fusion.recall_weight:g} · cosine) "
                f"{fusion.bias:+.4f}), fitted on the same valid questions (`{FUSION_FILE}`); its threshold "
                f"**{fusion.threshold:.4f}** is a calibrated probability of relevance.",
                "",
            ]
        lines += [
            "| | seed | " + " | ".join(f"ours, {name}" for name, *_ in pairs) + " |",
            "|---" * (2 + len(pairs)) + "|",
            f"| threshold | {SEED['threshold']:.2f} | "
            + " | ".join(f"{t:.3f}" for _, t, _, _ in pairs)
            + " |",
            f"| F1, top-5 → with threshold | {SEED['F1'][0]:.2f} → {SEED['F1'][1]:.2f} | "
            + " | ".join(f"{b['F1']:.3f} → {a['F1']:.3f}" for _, _, b, a in pairs)
            + " |",
            f"| noise, top-5 → with threshold | {SEED['noise'][0]:.0%} → {SEED['noise'][1]:.0%} | "
            + " | ".join(f"{b['noise']:.0%} → {a['noise']:.0%}" for _, _, b, a in pairs)
            + " |",
            "",
        ]
    oracle = best_f1(scored, model_id=sc.model_id) if any(q.relevant.any() for q in scored) else None
    if oracle is not None:
        lines += [
            f"For reference only (chosen on {meta['split']}, so not used): the best-F1 threshold on these "
            f"questions would be {oracle.value:.4f} (F1 {oracle.calibration['f1']:.3f}).",
            "",
        ]
        marks[f"best on {meta['split']} (reference)"] = oracle.value
    title = f"{sc.model_id}, {meta['split']} ({len(scored)} q), rerank top-{K}"
    plots.threshold_curves(grid, out / "threshold_curves.png", marks=marks, title=title)
    plots.score_histograms(
        scored, out / "score_histograms.png", threshold=plain.threshold if plain else None, title=title
    )
    lines += ["![P/R/F1 against the threshold](threshold_curves.png)", ""]
    lines += ["![scores of relevant and irrelevant pairs](score_histograms.png)", ""]
    if plain is not None:
        plots.grouped_bars(
            results["threshold"],
            (f"P@{K}", f"NDCG@{K}", "precision", "F1", "noise", "no_relevant"),
            out / "handed_on.png",
            title=f"what is handed on ({meta['split']})",
        )
        lines += ["![recall vs rerank vs thresholded](handed_on.png)", ""]

    lines += _out_of_domain_section(out, results.get("out_of_domain"), plots)
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _out_of_domain_section(out: Path, ood: dict | None, plots) -> list[str]:
    lines = ["## Out of domain: classic IR collections (NDCG@10)", ""]
    if not ood:
        lines += [
            "Not run: no classic IR collection found (they are read from ../shared/data/classic_ir).",
            "",
        ]
        return lines
    series: dict[str, dict[str, float]] = {"bi-encoder recall": {}}
    verdicts = []
    for name, rows in ood.items():
        info = rows["_info"]
        base_name = next(k for k in rows if k.startswith("bi-encoder"))
        lines += [
            f"**{name}**: {info['docs']} documents, {info['queries']} judged queries, "
            f"{info['relevant_in_recall']:.0%} of relevant documents in the recall top-{info['k_recall']}.",
            "",
            _table(rows, ("NDCG@10", "P@10", "ΔNDCG@10", "wins", "losses")),
            "",
        ]
        series["bi-encoder recall"][name] = rows[base_name]["NDCG@10"]
        for row_name, row in rows.items():
            if row_name.startswith("_") or row_name == base_name:
                continue
            label = "rerank + recall fusion" if "+ recall fusion" in row_name else "rerank"
            series.setdefault(label, {})[name] = row["NDCG@10"]
            d = row["ΔNDCG@10"]
            verdict = "helps" if d > 0.01 else ("does not help (about even)" if d > -0.01 else "hurts")
            verdicts.append(
                f"- {name}, {label}: **{verdict}**: NDCG@10 {rows[base_name]['NDCG@10']:.3f} → "
                f"{row['NDCG@10']:.3f} ({d:+.3f}; better on {row['wins']} queries, worse on {row['losses']})."
            )
    plots.grouped_bars(
        series, list(series["bi-encoder recall"]), out / "out_of_domain.png", title="NDCG@10 out of domain"
    )
    lines += ["In plain words:", "", *verdicts, "", "![NDCG@10 out of domain](out_of_domain.png)", ""]
    return lines
