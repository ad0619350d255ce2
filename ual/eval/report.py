"""``ual report RUN_DIR...``: the eval results found under each training run, side by side with the run's
smoothing strategy and mean epsilon (from ``ual_smoothing.json``), so SFT / LS / UAL compare in one table.

Found under a run directory (at any depth): every ``results.json`` written by ``ual eval`` and, next to
an AlpacaEval ``model_outputs.json``, any ``leaderboard.csv`` the ``alpaca_eval`` judge wrote.

Is a difference real? Accuracies of runs evaluated on the same problems are also compared pair by pair with the
first run given: the exact McNemar test on the problems one run solved and the other did not (a two-sided
binomial test of those discordant pairs), and the paired difference with a 95% interval. Per-run intervals
overlap far more often than a paired comparison of the same problems allows.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from scipy.stats import binomtest, norm

from ual.eval import outputs, plots
from ual.errors import UsageError

SMOOTHING_FILE = "ual_smoothing.json"
# Per task, the metrics the default table shows (all metrics: --all-metrics, and always in report.csv).
HEADLINE = {"gsm8k": ("accuracy",), "metamath": ("accuracy",), "alpacaeval": ("win_rate", "length_controlled_winrate", "mean_output_tokens")}
FOLDED = {"correct", "n"}  # shown inside the accuracy cell
LEADERBOARD_METRICS = {"win_rate": "standard_error", "length_controlled_winrate": "lc_standard_error"}


@dataclass
class Metric:
    value: float
    ci95: tuple[float, float] | None = None
    n: int | None = None
    percent: bool = False  # a fraction shown as a percentage

    def cell(self) -> str:
        scale = 100.0 if self.percent else 1.0
        if not math.isfinite(self.value):
            return "—"
        text = f"{self.value * scale:.1f}" if self.percent else _num(self.value)
        if self.ci95:
            lo, hi = self.ci95
            text += f" [{lo * scale:.1f}, {hi * scale:.1f}]" if self.percent else f" [{_num(lo)}, {_num(hi)}]"
        if self.n is not None:
            text += f" (n={self.n})"
        return text


@dataclass
class Run:
    path: Path
    label: str
    strategy: str | None = None
    smoothing_mean: float | None = None
    metrics: dict[str, Metric] = field(default_factory=dict)
    # per accuracy eval: ((index, question), correct) of every problem, from its samples.jsonl
    answers: dict[str, list[tuple[tuple, bool]]] = field(default_factory=dict)


@dataclass
class Paired:
    """One run against the baseline run on the same problems."""

    eval_name: str
    run: str
    n: int
    gained: int  # solved by the run, not by the baseline
    lost: int  # solved by the baseline, not by the run
    difference: float  # (gained - lost) / n
    ci95: tuple[float, float]
    p_value: float

    def cell(self) -> str:
        lo, hi = self.ci95
        return (f"{100 * self.difference:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}], p = {self.p_value:.3g} "
                f"(+{self.gained}/−{self.lost})")


def paired_comparison(base: list[tuple[tuple, bool]], other: list[tuple[tuple, bool]]) -> tuple | None:
    """(n, gained, lost, difference, ci95, p): exact McNemar (a two-sided binomial test of the discordant pairs at
    1/2) and the Wald interval of a paired difference of proportions (Agresti); None if not the same problems."""
    if [item for item, _ in base] != [item for item, _ in other] or not base:
        return None
    n = len(base)
    gained = sum(1 for (_, a), (_, b) in zip(base, other) if b and not a)
    lost = sum(1 for (_, a), (_, b) in zip(base, other) if a and not b)
    difference = (gained - lost) / n
    half = norm.ppf(0.975) * math.sqrt(max(gained + lost - (gained - lost) ** 2 / n, 0.0)) / n
    p_value = binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0
    return n, gained, lost, difference, (difference - half, difference + half), float(p_value)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.4g}" if abs(v) < 1000 else f"{v:.1f}"


def read_smoothing(run_dir: Path) -> tuple[str | None, float | None]:
    """(strategy, mean epsilon actually applied). The mean comes from the fitted statistics when present
    ('none' is 0 whatever smoothing_mean says), else from the settings."""
    path = run_dir / SMOOTHING_FILE
    if not path.exists():
        return None, None
    info = json.loads(path.read_text())
    settings = info.get("settings", {})
    strategy = settings.get("smoothing_strategy")
    if strategy == "none":
        return strategy, 0.0
    # what training applied, after tokenisation: per sample or per token, as its loss_normalization weighs them
    applied = info.get("applied") or {}
    key = "sample_mean" if settings.get("loss_normalization") == "sample" else "token_mean"
    for value in (applied.get(key), (info.get("statistics") or {}).get("mean"), settings.get("smoothing_mean")):
        if isinstance(value, (int, float)):
            return strategy, float(value)
    return strategy, None


def _metrics_of(results: dict) -> dict[str, Metric]:
    """Scalar metrics of one results.json; ``x_ci95`` pairs attach to ``x``; accuracies are percentages."""
    raw = results.get("metrics", {})
    out = {}
    for key, value in raw.items():
        if key.endswith("_ci95") or key in FOLDED or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        ci = raw.get(f"{key}_ci95")
        is_acc = key == "accuracy"
        out[key] = Metric(float(value), tuple(ci) if ci else None, raw.get("n") if is_acc else None, percent=is_acc)
    return out


def _leaderboard_metrics(path: Path, generator: str | None) -> dict[str, Metric]:
    """Win rates from an alpaca_eval leaderboard.csv (model name in the first, unnamed column); only our
    generator's row (the file also lists precomputed models)."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    first = next(iter(rows[0]))
    mine = [r for r in rows if r.get(first) == generator] or (rows if len(rows) == 1 else [])
    if not mine:
        print(f"warning: {path}: no row for generator {generator!r}; skipped", file=sys.stderr)
        return {}
    row, out = mine[0], {}
    for key, err_key in LEADERBOARD_METRICS.items():
        try:
            value = float(row[key])
        except (KeyError, TypeError, ValueError):
            continue
        err = row.get(err_key)
        ci = None
        if err not in (None, ""):
            half = 1.959963984540054 * float(err)
            ci = (value - half, value + half)
        out[key] = Metric(value, ci)
    return out


def find_metrics(run_dir: Path, answers: dict | None = None) -> dict[str, Metric]:
    """Every metric under ``run_dir``, named ``<eval name> <metric>``; with ``answers``, also each accuracy eval's
    per-problem outcomes under its eval name."""
    found: dict[str, Metric] = {}
    for results_path in sorted(run_dir.rglob(outputs.RESULTS)):
        if any(part.startswith(".") for part in results_path.relative_to(run_dir).parts):
            continue  # hidden: e.g. a partial output directory
        try:
            results = json.loads(results_path.read_text())
        except json.JSONDecodeError:
            print(f"warning: {results_path}: not valid JSON; skipped", file=sys.stderr)
            continue
        if not isinstance(results, dict) or "task" not in results or "metrics" not in results:
            continue  # some other tool's results.json
        name = results.get("name") or results["task"]
        metrics = _metrics_of(results)
        if results["task"] == "alpacaeval":
            for lb in sorted(results_path.parent.rglob("leaderboard.csv")):
                sub = lb.parent.relative_to(results_path.parent)
                prefix = "" if str(sub) == "." else f"{sub.as_posix()} "
                for k, m in _leaderboard_metrics(lb, results.get("generator")).items():
                    metrics[f"{prefix}{k}"] = m
        rel = results_path.parent.relative_to(run_dir).as_posix()
        key_name = name if not any(k.startswith(f"{name} ") for k in found) else f"{name} ({rel})"
        for k, m in metrics.items():
            found[f"{key_name} {k}"] = m
        samples_path = results_path.parent / outputs.SAMPLES
        if answers is not None and "accuracy" in metrics and samples_path.exists():
            rows = [json.loads(line) for line in samples_path.read_text().splitlines() if line.strip()]
            answers[key_name] = [((r.get("index"), r.get("question")), bool(r.get("correct"))) for r in rows]
    return found


def collect(run_dirs: list[str | Path]) -> list[Run]:
    runs = []
    for d in run_dirs:
        path = Path(d)
        if not path.is_dir():
            raise UsageError(f"run directory {str(d)!r}: no such directory")
        strategy, mean = read_smoothing(path)
        answers: dict = {}
        runs.append(Run(path, path.resolve().name, strategy, mean, find_metrics(path, answers), answers))
    names = [r.label for r in runs]
    if len(set(names)) != len(names):  # same folder name in different places: use the given paths
        for r, d in zip(runs, run_dirs):
            r.label = str(d)
    if not any(r.metrics for r in runs):
        raise UsageError(f"no eval results (results.json from `ual eval`) under {', '.join(map(str, run_dirs))}")
    for r in runs:
        if not r.metrics:
            print(f"warning: {r.path}: no eval results found", file=sys.stderr)
    return runs


def is_headline(column: str) -> bool:
    name, _, metric = column.rpartition(" ")
    task = re.split(r"[- (]", name, maxsplit=1)[0]
    return metric in HEADLINE.get(task, ())


def columns(runs: list[Run], all_metrics: bool) -> list[str]:
    cols = sorted({k for r in runs for k in r.metrics})
    return cols if all_metrics else [c for c in cols if is_headline(c)] or cols


def markdown_table(runs: list[Run], cols: list[str]) -> str:
    header = ["run", "smoothing", "ε mean", *cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(cols)) + "|"]
    for r in runs:
        eps = "—" if r.smoothing_mean is None else f"{r.smoothing_mean:.3g}"
        cells = [r.label, r.strategy or "—", eps] + [r.metrics[c].cell() if c in r.metrics else "—" for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_with_first(runs: list[Run]) -> list[Paired]:
    """Every later run against the first one, on each accuracy eval both ran on the same problems."""
    base, pairs = runs[0], []
    for r in runs[1:]:
        for name, outcomes in r.answers.items():
            if name not in base.answers:
                continue
            result = paired_comparison(base.answers[name], outcomes)
            if result is None:
                print(f"warning: {name}: {r.label} and {base.label} were not evaluated on the same problems; no paired "
                      "comparison", file=sys.stderr)
                continue
            pairs.append(Paired(name, r.label, *result))
    return pairs


def paired_table(base: str, pairs: list[Paired]) -> str:
    evals = sorted({p.eval_name for p in pairs})
    runs = list(dict.fromkeys(p.run for p in pairs))
    cells = {(p.run, p.eval_name): p.cell() for p in pairs}
    lines = [f"Paired with {base} on the same problems: accuracy difference in points [95% interval], exact McNemar "
             "p-value (problems gained/lost):", "",
             "| run | " + " | ".join(evals) + " |", "|---|" + "---:|" * len(evals)]
    lines += [f"| {r} | " + " | ".join(cells.get((r, e), "—") for e in evals) + " |" for r in runs]
    return "\n".join(lines) + "\n"


def write_paired_csv(path: Path, base: str, pairs: list[Paired]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["baseline", "run", "eval", "n", "gained", "lost", "difference", "ci95_low", "ci95_high", "p_value"])
        for p in pairs:
            w.writerow([base, p.run, p.eval_name, p.n, p.gained, p.lost, p.difference, *p.ci95, p.p_value])


def write_csv(path: Path, runs: list[Run]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["run", "path", "smoothing_strategy", "smoothing_mean", "metric", "value", "ci95_low", "ci95_high", "n"])
        for r in runs:
            for k in sorted(r.metrics):
                m = r.metrics[k]
                w.writerow([r.label, str(r.path), r.strategy or "", "" if r.smoothing_mean is None else r.smoothing_mean, k, m.value,
                            *(m.ci95 if m.ci95 else ("", "")), "" if m.n is None else m.n])


def run(run_dirs: list[str], *, output_dir: str | None = None, overwrite: bool = False, all_metrics: bool = False) -> str:
    """The Markdown table (returned, and printed by the CLI); with ``output_dir`` also report.md, the bar
    chart report.png and every metric in report.csv."""
    if output_dir:
        outputs.check_output_dir(output_dir, overwrite)
    runs = collect(run_dirs)
    cols = columns(runs, all_metrics)
    table = markdown_table(runs, cols)
    pairs = paired_with_first(runs)
    if pairs:
        table += "\n" + paired_table(runs[0].label, pairs)
    if output_dir:
        with outputs.AtomicDir(output_dir, overwrite) as tmp:
            (tmp / "report.md").write_text(table, encoding="utf-8")
            write_csv(tmp / "report.csv", runs)
            if pairs:
                write_paired_csv(tmp / "paired.csv", runs[0].label, pairs)
                plots.paired_differences(runs[0].label, pairs, tmp / "paired.png")
            bars = {
                c: [
                    (r.metrics[c].value * (100 if r.metrics[c].percent else 1), tuple(x * (100 if r.metrics[c].percent else 1) for x in r.metrics[c].ci95) if r.metrics[c].ci95 else None)
                    if c in r.metrics else (None, None)
                    for r in runs
                ]
                for c in cols
            }
            plots.metric_bars([r.label for r in runs], bars, tmp / "report.png")
    return table
