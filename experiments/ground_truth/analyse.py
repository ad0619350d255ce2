"""The preregistered analysis of the ground-truth experiment (PREREGISTRATION.md): per-arm means with 95%
t-intervals over seeds, paired differences, Holm over the two primary endpoints, and the verdict.

    python experiments/ground_truth/analyse.py [OUT]      # OUT: outputs/ground_truth; rewrites docs/ground_truth.*
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

from scipy import stats

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
PRIMARY = ("stories_valid", "arith_hard_greedy")  # the two preregistered primary endpoints (higher is better)
SECONDARY = ("arith_id_greedy", "arith_id_sampled", "arith_hard_sampled", "stories_win_vs_sft", "stories_kl",
             "stories_distinct_ratio", "stories_animal_ok", "stories_place_ok", "stories_goal_ok", "stories_words",
             "stories_invalid_mass_t1", "final_train_loss")
LOWER_IS_BETTER = {"stories_kl", "stories_invalid_mass_t1", "final_train_loss"}
COMPARISONS = [("ual", "sft"), ("ual", "ls"), ("ual", "ual_shuffled"), ("ual", "ls_high_only"), ("ual_unigram", "ual"),
               ("ual_unigram", "sft"), ("ls", "sft")]
ALPHA = 0.05
MIN_EFFECT = 0.02  # the smallest difference on a primary endpoint (2 points) that would count as an improvement


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and its 95% t-interval (a single value: an interval of zero width, flagged by n = 1 in the tables)."""
    m = statistics.mean(values)
    if len(values) < 2:
        return m, m, m
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


def win_rate(items_a: dict, items_b: dict) -> float:
    """Pairwise oracle win rate of A's story samples over B's, sample j of prompt i against sample j of prompt i:
    the sample the true grammar finds more likely wins (an invalid sample has probability 0); ties count half."""
    score = 0.0
    pairs = list(zip(items_a["stories_logp"], items_b["stories_logp"]))
    for a, b in pairs:
        a, b = (-math.inf if a is None else a), (-math.inf if b is None else b)
        score += 1.0 if a > b else 0.5 if a == b else 0.0
    return score / len(pairs)


def paired(per_seed: dict, a: str, b: str, key: str) -> dict:
    """A - B over the seeds both ran: mean, 95% t-interval and the paired t-test's two-sided p."""
    seeds = sorted(set(per_seed[a]) & set(per_seed[b]))
    diffs = [per_seed[a][s][key] - per_seed[b][s][key] for s in seeds]
    m, lo, hi = t_interval(diffs)
    p = float(stats.ttest_1samp(diffs, 0.0).pvalue) if len(diffs) > 1 and statistics.stdev(diffs) > 0 else float("nan")
    return {"mean": m, "lo": lo, "hi": hi, "p": p, "n": len(diffs), "diffs": diffs}


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, monotone)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def verdict(diff_sft: dict, diff_shuffled: dict | None) -> tuple[str, str]:
    """The preregistered rule (PREREGISTRATION.md, 'Verdict')."""
    adj = holm([diff_sft[k]["p"] for k in PRIMARY])
    significant_better = [diff_sft[k]["mean"] > 0 and a < ALPHA for k, a in zip(PRIMARY, adj)]
    significant_worse = [diff_sft[k]["mean"] < 0 and a < ALPHA for k, a in zip(PRIMARY, adj)]
    beats_shuffled = diff_shuffled is not None and all(diff_shuffled[k]["mean"] > 0 for k in PRIMARY) and any(
        diff_shuffled[k]["lo"] > 0 for k in PRIMARY)
    reasons = "; ".join(f"UAL−SFT {k}: {diff_sft[k]['mean']:+.4f} [{diff_sft[k]['lo']:+.4f}, {diff_sft[k]['hi']:+.4f}], "
                        f"Holm p {a:.3g}" for k, a in zip(PRIMARY, adj))
    if all(significant_better) and beats_shuffled:
        return "reproduced", reasons
    if any(significant_worse) or all(diff_sft[k]["hi"] < MIN_EFFECT for k in PRIMARY):
        return "refuted", reasons
    return "inconclusive", reasons


def collect(out: Path) -> dict:
    """results.json, or (for an experiment still running) every seed for which all six arms have finished."""
    if (out / "results.json").exists():
        return json.loads((out / "results.json").read_text())
    from run import ARMS

    runs = {p.parent.name: json.loads(p.read_text()) for p in (out / "runs").glob("*/metrics.json")}
    seeds = sorted({int(name.rsplit("seed", 1)[1]) for name in runs})
    complete = [s for s in seeds if s in range(5) and all(f"{arm}-seed{s}" in runs for arm in ARMS)]
    print(f"results.json not written yet: analysing the {len(complete)} complete seed(s) {complete}")
    return {"seeds": complete, "arms": list(ARMS), "runs": {k: v for k, v in runs.items()
                                                             if int(k.rsplit("seed", 1)[1]) in complete}}


def analyse(out: Path, docs: Path | None) -> dict:
    results = collect(out)
    arms, seeds = results["arms"], results["seeds"]
    per_seed = {arm: {} for arm in arms}
    items = {}
    for arm in arms:
        for seed in seeds:
            run = out / "runs" / f"{arm}-seed{seed}"
            per_seed[arm][seed] = dict(results["runs"][f"{arm}-seed{seed}"])
            items[arm, seed] = json.loads((run / "items.json").read_text())
    if "sft" in arms:
        for arm in arms:
            for seed in seeds:
                per_seed[arm][seed]["stories_win_vs_sft"] = win_rate(items[arm, seed], items["sft", seed])
    keys = [k for k in (*PRIMARY, *SECONDARY) if all(k in per_seed[a][s] for a in arms for s in seeds)]
    summary = {arm: {k: t_interval([per_seed[arm][s][k] for s in seeds]) for k in keys} for arm in arms}
    diffs = {f"{a}-{b}": {k: paired(per_seed, a, b, k) for k in keys}
             for a, b in COMPARISONS if a in arms and b in arms}
    report = {"seeds": seeds, "arms": arms, "per_seed": per_seed, "summary": summary, "paired": diffs}
    if "ual-sft" in diffs:
        report["verdict"], report["verdict_numbers"] = verdict(diffs["ual-sft"], diffs.get("ual-ual_shuffled"))
    (out / "analysis.json").write_text(json.dumps(report, indent=1))
    print(table(report, keys))
    if "verdict" in report:
        print(f"\nverdict: {report['verdict']} ({report['verdict_numbers']})")
    if docs is not None:
        (docs / "ground_truth.json").write_text(json.dumps(report, indent=1))
        (docs / "ground_truth_table.md").write_text(table(report, keys) + "\n")
        plot(report, docs / "ground_truth.png")
    return report


def table(report: dict, keys: list[str]) -> str:
    n = len(report["seeds"])
    lines = [f"Mean [95% t-interval] over {n} seed{'s' if n > 1 else ''}; ↓ = lower is better.", "",
             "| metric | " + " | ".join(report["arms"]) + " |", "|---|" + "---|" * len(report["arms"])]
    for k in keys:
        cells = [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in (report["summary"][a][k] for a in report["arms"])]
        lines.append(f"| {k}{' ↓' if k in LOWER_IS_BETTER else ''}{' (primary)' if k in PRIMARY else ''} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Paired differences (A − B, same seeds), mean [95% t-interval], two-sided paired-t p:", "",
              "| metric | " + " | ".join(report["paired"]) + " |", "|---|" + "---|" * len(report["paired"])]
    for k in keys:
        cells = [f"{d[k]['mean']:+.3f} [{d[k]['lo']:+.3f}, {d[k]['hi']:+.3f}] p={d[k]['p']:.2g}"
                 for d in report["paired"].values()]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [*PRIMARY, "stories_win_vs_sft", "stories_kl", "arith_id_greedy", "stories_invalid_mass_t1"]
    keys = [k for k in keys if k in report["summary"][report["arms"][0]]]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 3.6))
    for ax, key in zip(axes, keys):
        for i, arm in enumerate(report["arms"]):
            m, lo, hi = report["summary"][arm][key]
            ax.errorbar(i, m, yerr=[[m - lo], [hi - m]], fmt="o", color=f"C{i}", capsize=3)
            values = [report["per_seed"][arm][s][key] for s in report["seeds"]]
            ax.scatter([i + 0.15] * len(values), values, color="black", s=6, zorder=3)
        ax.set_xticks(range(len(report["arms"])), report["arms"], rotation=60, fontsize=7)
        ax.set_title(key + (" ↓" if key in LOWER_IS_BETTER else "") + (" (primary)" if key in PRIMARY else ""),
                     fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Ground-truth experiment: mean and 95% t-interval over {len(report['seeds'])} seeds (dots: seeds)"
                 + (f" — verdict: {report['verdict']}" if "verdict" in report else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    analyse(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "outputs" / "ground_truth", REPO / "docs")
