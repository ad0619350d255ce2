"""What the user reads at the end: counts, score histograms per source, the smoothing they imply.

The smoothing line uses ``ual.mapping`` exactly as training will (strategy ``uncertainty``, the
given target mean), so a score distribution that cannot reach the target is visible before training.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

BINS = np.arange(0, 101, 10)  # deciles of the 0-99 scale; the last bin is 90-99
_BLOCKS = " ▁▂▃▄▅▆▇█"


@dataclass
class RunStats:
    """Counts over one run. ``scored``/``cached``/``failed`` count distinct samples."""

    rows: int = 0
    unique: int = 0
    scored: int = 0
    cached: int = 0
    failed: int = 0
    failed_rows: int = 0
    requests: int = 0
    reminders: int = 0
    retries: int = 0
    usage: dict = field(default_factory=dict)
    rubric: str | None = None  # ual | paper | custom; None for model-nll and the prior
    request: dict = field(default_factory=dict)  # temperature, top_p, max_tokens as sent


def histogram_counts(scores) -> list[int]:
    counts, _ = np.histogram(np.asarray(scores, dtype=np.float64), bins=BINS)
    return [int(c) for c in counts]


def histogram_line(scores) -> str:
    """n, mean and decile counts with a bar: 'n=5 mean=41.2 |▁ █ ...| 0-9:1 10-19:0 ...'."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return "n=0"
    counts = histogram_counts(scores)
    peak = max(counts)
    bar = "".join(_BLOCKS[0 if c == 0 else max(1, round(8 * c / peak))] for c in counts)
    cells = " ".join(f"{lo}-{lo + 9}:{c}" for lo, c in zip(BINS[:-1], counts))
    return f"n={scores.size} mean={scores.mean():.1f} |{bar}| {cells}"


def by_source(scores, sources) -> dict[str, list[float]]:
    """Scores grouped by source label (failed rows, score None, left out)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for score, source in zip(scores, sources):
        if score is not None:
            groups[source].append(float(score))
    return dict(sorted(groups.items()))


def smoothing_line(scores, target_mean: float) -> str:
    """The per-sample smoothing these scores give at ``target_mean`` (or why they cannot)."""
    from ual.mapping import SmoothingMappingError, fit_smoothing, summarize

    values = [float(s) for s in scores if s is not None]
    try:
        fitted = fit_smoothing(values, "uncertainty", target_mean=target_mean)
    except SmoothingMappingError as exc:
        return f"smoothing (uncertainty, target mean {target_mean:g}): cannot map: {exc}"
    return f"smoothing (uncertainty, target mean {target_mean:g}): {summarize(fitted(values))}"


def _settings(request: dict) -> str:
    return ", ".join(f"{name} {value:g}" if isinstance(value, (int, float)) else f"{name} {value}"
                     for name, value in request.items())


def format_summary(stats: RunStats, scores, sources, target_mean: float, failures=(), failures_path=None) -> str:
    """The end-of-run report (plain text)."""
    lines = [
        f"rows: {stats.rows}  distinct samples: {stats.unique} ({stats.rows - stats.unique} duplicate rows)",
        f"scored now: {stats.scored}  from cache: {stats.cached}  failed: {stats.failed}"
        + (f" ({stats.failed_rows} rows)" if stats.failed else ""),
    ]
    if stats.rubric:
        lines.append(f"rubric: {stats.rubric}" + (f"  sent with {_settings(stats.request)}" if stats.request else ""))
    if stats.requests or stats.retries or stats.reminders:
        lines.append(f"requests: {stats.requests}  reminders: {stats.reminders}  transient retries: {stats.retries}")
    if stats.usage:
        order = ("prompt_tokens", "completion_tokens", "total_tokens")
        names = [k for k in order if k in stats.usage] + sorted(set(stats.usage) - set(order))
        lines.append("tokens this run: " + "  ".join(f"{k.replace('_tokens', '')}={stats.usage[k]}" for k in names))
    lines.append("uncertainty by source:")
    groups = by_source(scores, sources)
    width = max((len(s) for s in groups), default=0)
    for source, values in groups.items():
        lines.append(f"  {source:<{width}}  {histogram_line(values)}")
    if len(groups) > 1:
        everything = [v for values in groups.values() for v in values]
        lines.append(f"  {'(all)':<{width}}  {histogram_line(everything)}")
    if not groups:
        lines.append("  (no scores)")
    lines.append(smoothing_line(scores, target_mean))
    if failures:
        where = f" (all listed in {failures_path})" if failures_path else ""
        lines.append(f"failed samples{where}:")
        for failure in failures[:10]:
            rows = ",".join(str(r) for r in failure["rows"][:5]) + ("..." if len(failure["rows"]) > 5 else "")
            lines.append(f"  row {rows}: {failure['error']}")
        if len(failures) > 10:
            lines.append(f"  ... and {len(failures) - 10} more")
    return "\n".join(lines)


def plot_histograms(path, scores, sources) -> None:
    """A PNG with one score histogram per source (matplotlib, Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = by_source(scores, sources)
    fig, ax = plt.subplots(figsize=(7, 4))
    if groups:
        ax.hist(list(groups.values()), bins=BINS, label=list(groups), stacked=True)
        ax.legend(title="source")
    ax.set_xlabel("uncertainty score (0-99)")
    ax.set_ylabel("rows")
    ax.set_xlim(0, 100)
    ax.set_title("Judge uncertainty scores")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
