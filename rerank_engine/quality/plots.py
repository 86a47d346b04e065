"""PNG plots for calibration and the evaluation report (matplotlib, imported only when a plot is drawn).

Each function draws one figure with the headless Agg backend, writes it to `path` and returns the path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rerank_engine.errors import require
from rerank_engine.quality.thresholds import ScoredQuery, Sweep

SIZE, DPI = (6.4, 4.0), 100


def _pyplot():
    matplotlib = require("matplotlib", package="matplotlib")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})  # no version stamp: reruns give equal files
    fig.clf()
    return path


def threshold_curves(
    sweep: Sweep, path: str | Path, *, marks: Mapping[str, float] | None = None, title: str = ""
) -> Path:
    """Precision, recall and F1 against the threshold, with vertical lines at the `marks`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=SIZE)
    precision = np.where(sweep.kept > 0, sweep.precision, np.nan)  # undefined where nothing is kept
    ax.plot(sweep.thresholds, precision, label="precision (kept relevant / kept)")
    ax.plot(sweep.thresholds, sweep.recall, label="recall (of relevant in top-k)")
    ax.plot(sweep.thresholds, sweep.f1, label="F1", linewidth=2)
    ax.plot(sweep.thresholds, sweep.empty_queries / max(sweep.queries, 1), ":", label="share no_relevant")
    for (name, value), style in zip((marks or {}).items(), ("--", "-.", ":"), strict=False):
        ax.axvline(value, color="grey", linestyle=style, label=f"{name} = {value:.3f}")
    ax.set(xlabel="threshold (probability)", ylabel="value", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    out = _save(fig, path)
    plt.close(fig)
    return out


def score_histograms(
    queries: Sequence[ScoredQuery], path: str | Path, *, threshold: float | None = None, title: str = ""
) -> Path:
    """Histograms (densities) of the scores of relevant and irrelevant pairs."""
    plt = _pyplot()
    scores = np.concatenate([q.scores for q in queries]) if queries else np.zeros(0)
    relevant = np.concatenate([q.relevant for q in queries]) if queries else np.zeros(0, dtype=bool)
    bins = np.linspace(0, 1, 41)
    fig, ax = plt.subplots(figsize=SIZE)
    ax.hist(
        scores[~relevant], bins=bins, density=True, alpha=0.55, label=f"irrelevant (n={(~relevant).sum()})"
    )
    ax.hist(scores[relevant], bins=bins, density=True, alpha=0.55, label=f"relevant (n={relevant.sum()})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="score (probability)", ylabel="density", xlim=(0, 1), title=title)
    ax.legend(fontsize=8)
    out = _save(fig, path)
    plt.close(fig)
    return out


def grouped_bars(
    table: Mapping[str, Mapping[str, float]], columns: Sequence[str], path: str | Path, *, title: str = ""
) -> Path:
    """One group of bars per column, one bar per system (row); rows whose name starts with _ are skipped."""
    plt = _pyplot()
    rows = {name: row for name, row in table.items() if not name.startswith("_")}
    x = np.arange(len(columns))
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=SIZE)
    for i, (name, row) in enumerate(rows.items()):
        ax.bar(x + i * width - 0.4 + width / 2, [row[c] for c in columns], width, label=name)
    ax.set_xticks(x, list(columns))
    ax.set(ylim=(0, 1), title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    out = _save(fig, path)
    plt.close(fig)
    return out


def bars(
    names: Sequence[str],
    values: Sequence[float],
    path: str | Path,
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    horizontal: bool = False,
) -> Path:
    """One bar per name, its value written on it."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=SIZE)
    drawn = (ax.barh if horizontal else ax.bar)(list(names), list(values))
    ax.bar_label(
        drawn, labels=[f"{v:,.1f}" if isinstance(v, float) else f"{v:,}" for v in values], fontsize=8
    )
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(axis="x" if horizontal else "y", alpha=0.3)
    if horizontal:
        ax.invert_yaxis()  # the first name on top
    out = _save(fig, path)
    plt.close(fig)
    return out


def histogram(
    values: np.ndarray,
    path: str | Path,
    *,
    bins,
    line: float | None = None,
    line_label: str | None = None,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
) -> Path:
    """Counts of `values` in `bins`, with a vertical line at `line`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=SIZE)
    ax.hist(values, bins=bins)
    if line is not None:
        ax.axvline(line, color="black", linestyle="--", label=line_label)
        ax.legend(fontsize=8)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(bins[0], bins[-1]))
    out = _save(fig, path)
    plt.close(fig)
    return out


def small_multiples(
    x: Sequence[str], series: Mapping[str, Sequence], path: str | Path, *, title: str = ""
) -> Path:
    """One panel per series over the same x (dates), missing values (None) left out."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(series), 1, figsize=(SIZE[0], 1.6 * len(series) + 0.8), sharex=True)
    for ax, (name, ys) in zip(np.atleast_1d(axes), series.items(), strict=True):
        xs = [i for i, y in enumerate(ys) if y is not None]
        ax.plot(xs, [ys[i] for i in xs], marker="o")
        ax.set_ylabel(name, fontsize=8)
        ax.grid(alpha=0.3)
    last = np.atleast_1d(axes)[-1]
    last.set_xticks(range(len(x)), list(x), rotation=45, ha="right", fontsize=8)
    fig.suptitle(title)
    out = _save(fig, path)
    plt.close(fig)
    return out
