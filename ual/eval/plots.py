"""PNG figures, drawn with matplotlib's object API on the Agg canvas: no pyplot global state, no display,
so they work on headless machines and inside tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def silhouette_boxplot(distributions: dict[str, list[float]], path: Path, *, num_tokens: int) -> Path:
    """One box per model of its pairwise silhouette scores, the mean marked (the paper compares means)."""
    labels = list(distributions)
    fig = Figure(figsize=(max(4.0, 1.4 * len(labels) + 2), 4.5))
    ax = fig.add_subplot()
    data = [np.asarray(distributions[k], dtype=float) for k in labels]
    ax.boxplot(data, showmeans=True, meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black"})
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=20, ha="right")
    for i, d in enumerate(data, start=1):
        ax.annotate(f"{np.mean(d):.3f}", (i, np.mean(d)), textcoords="offset points", xytext=(12, 0), fontsize=8, va="center")
    ax.set_ylabel("silhouette score (PCA 2-D)")
    ax.set_title(f"Token clustering: every pair of the {num_tokens} most frequent next tokens")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def pair_scatter(panels: list[dict], path: Path, *, token_a: str, token_b: str) -> Path:
    """The same token pair in every model, each projected to 2-D by its own PCA; panels hold
    ``label``, ``points`` (n, 2), ``is_b`` (n,) bools and ``silhouette``."""
    fig = Figure(figsize=(4.2 * len(panels), 4.2))
    for i, panel in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        pts, is_b = np.asarray(panel["points"]), np.asarray(panel["is_b"], dtype=bool)
        ax.scatter(pts[~is_b, 0], pts[~is_b, 1], s=8, alpha=0.6, label=repr(token_a))
        ax.scatter(pts[is_b, 0], pts[is_b, 1], s=8, alpha=0.6, label=repr(token_b))
        ax.set_title(f"{panel['label']}  (silhouette {panel['silhouette']:.3f})", fontsize=10)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.legend(fontsize=8, markerscale=2)
    fig.suptitle(f"Final hidden states labelled by next token: {token_a!r} vs {token_b!r}")
    return _save(fig, path)


def metric_bars(runs: list[str], metrics: dict[str, list[tuple[float | None, tuple[float, float] | None]]], path: Path) -> Path:
    """One panel per metric, one bar per run, 95% intervals as error bars where known."""
    names = list(metrics)
    fig = Figure(figsize=(max(4.0, 0.9 * len(runs) + 1.5) * max(1, len(names)), 4.2))
    x = np.arange(len(runs))
    for i, name in enumerate(names, start=1):
        ax = fig.add_subplot(1, max(1, len(names)), i)
        values = [v if v is not None else np.nan for v, _ in metrics[name]]
        err = np.array(
            [[v - ci[0], ci[1] - v] if v is not None and ci else [np.nan, np.nan] for v, ci in metrics[name]]
        ).T
        has_err = bool(np.isfinite(err).any())
        ax.bar(x, values, yerr=err if has_err else None, capsize=4 if has_err else 0, color=[f"C{j}" for j in range(len(runs))])
        ax.set_xticks(x, runs, rotation=20, ha="right")
        ax.set_title(name, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def paired_differences(base: str, pairs, path: Path) -> Path:
    """One panel per eval: each run's accuracy minus the baseline's on the same problems, 95% interval as error
    bar, exact McNemar p-value above it."""
    evals = sorted({p.eval_name for p in pairs})
    fig = Figure(figsize=(4.5 * len(evals), 4.2))
    for i, name in enumerate(evals, start=1):
        ax = fig.add_subplot(1, len(evals), i)
        mine = [p for p in pairs if p.eval_name == name]
        x = np.arange(len(mine))
        diff = np.array([100 * p.difference for p in mine])
        err = np.array([[100 * (p.difference - p.ci95[0]), 100 * (p.ci95[1] - p.difference)] for p in mine]).T
        ax.bar(x, diff, yerr=err, capsize=4, color=[f"C{j + 1}" for j in range(len(mine))])
        ax.axhline(0, color="black", linewidth=0.8)
        for xi, p in zip(x, mine):
            ax.annotate(f"p = {p.p_value:.2g}", (xi, 100 * p.ci95[1]), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, [p.run for p in mine], rotation=20, ha="right")
        ax.set_ylabel(f"accuracy − {base} (points)")
        ax.set_title(name, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
