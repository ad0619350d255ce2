"""Synthetic ground-truth experiment: SFT vs constant LS vs UAL on tasks whose answer distributions are known.

    python experiments/synthetic/run.py        # 3 seeds -> docs/synthetic.png, docs/synthetic_summary.json
    python experiments/synthetic/run.py --seeds 0 --epochs 6 --out /tmp/syn --no-docs   # what the test runs

Everything goes through the product: the data are jsonl files with an `uncertainty` column (the exact entropy),
the model is built by `ual.tiny`, and every arm is
`python -m ual.train experiments/synthetic/ual.yaml [recipes/baselines/{sft,ls}.yaml] OUT/paths.yaml`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

from tasks import DISTRIBUTIONS, NAMES, TEMPLATES, WORDS, make_split, train_and_heldout_names  # noqa: E402

ARMS = {"SFT": ["recipes/baselines/sft.yaml"], "LS": ["recipes/baselines/ls.yaml"], "UAL": []}
METRICS = [
    ("copy_exact_match", "copy exact match ↑"),
    ("copy_ece", "copy ECE ↓"),
    ("named_kl", "naming KL(true‖model) ↓"),
    ("named_coverage", "naming coverage ↑"),
    ("named_valid_rate", "naming valid rate ↑"),
    ("named_invalid_mass", "naming invalid mass ↓"),
    ("named_distribution_ece", "naming distribution ECE ↓"),
    ("named_kl_train_names", "naming KL on names seen in training ↓"),
    ("named_valid_rate_t08_k200", "naming valid rate, T 0.8 top-k 200 ↑"),
    ("named_coverage_t08_k200", "naming coverage, T 0.8 top-k 200 ↑"),
]


def prepare(out: Path, n_per_named_task: int) -> None:
    """Training rows (as many copy rows as naming rows), the tiny model, and an overlay pointing at both."""
    out.mkdir(parents=True, exist_ok=True)
    train_names, _ = train_and_heldout_names()
    named = [r for r in make_split(n_per_named_task, seed=1, names=train_names) if r["task"] != "copy"]
    copies = [r for r in make_split(len(named), seed=2, names=train_names) if r["task"] == "copy"]
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in named + copies))
    if not (out / "model" / "config.json").exists():
        from ual.tiny import build_tiny_model

        texts = [t.format(name=n) for t in TEMPLATES.values() for n in NAMES]
        texts += [" ".join(d) for d in DISTRIBUTIONS.values()] + [f"Copy: {w} {w}" for w in WORDS]
        build_tiny_model(out / "model", texts * 5, vocab_size=600, hidden_size=96, num_layers=3)
    paths = {"model_name_or_path": str(out / "model"),
             "datasets": [{"path": str(out / "train.jsonl"), "format": "prompt_completion", "source": "synthetic"}]}
    (out / "paths.yaml").write_text(yaml.safe_dump(paths))


def train_and_evaluate(out: Path, arm: str, seed: int, epochs: float, heldout_names: list[str],
                       train_names: list[str]) -> dict:
    run_dir = out / "runs" / f"{arm.lower()}-seed{seed}"
    if (run_dir / "synthetic_metrics.json").exists():
        cached = json.loads((run_dir / "synthetic_metrics.json").read_text())
        if all(key in cached for key, _ in METRICS):
            return cached
    cmd = [sys.executable, "-m", "ual.train", str(HERE / "ual.yaml"), *[str(REPO / p) for p in ARMS[arm]],
           str(out / "paths.yaml"), "--output_dir", str(run_dir), "--seed", str(seed), "--num_train_epochs", str(epochs),
           "--overwrite_output_dir", "true"]  # a run without metrics was cut short: train it again from scratch
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{arm} seed {seed} failed:\n{proc.stderr[-3000:]}")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metrics import evaluate

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    metrics = evaluate(model, tokenizer, heldout_names, seed=seed, train_names=train_names)
    state = json.loads((run_dir / "trainer_state.json").read_text())
    metrics["final_train_loss"] = [e["loss"] for e in state["log_history"] if "loss" in e][-1]
    (run_dir / "synthetic_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def summarise(results: dict[str, list[dict]]) -> dict[str, dict[str, tuple[float, float]]]:
    return {arm: {key: (statistics.mean(r[key] for r in runs),
                        statistics.stdev(r[key] for r in runs) if len(runs) > 1 else 0.0)
                  for key, _ in METRICS}
            for arm, runs in results.items()}


def table(summary, seeds) -> str:
    lines = [f"| metric (mean ± std over {len(seeds)} seed{'s' if len(seeds) > 1 else ''}) | " + " | ".join(summary) + " |",
             "|---|" + "---|" * len(summary)]
    for key, label in METRICS:
        lines.append(f"| {label} | " + " | ".join(f"{m[key][0]:.3f} ± {m[key][1]:.3f}" for m in summary.values()) + " |")
    return "\n".join(lines)


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["copy_exact_match", "copy_ece", "named_kl", "named_distribution_ece"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4))
    for ax, key in zip(axes, keys):
        for i, (arm, runs) in enumerate(results.items()):
            values = [r[key] for r in runs]
            ax.bar(i, statistics.mean(values), color=f"C{i}", alpha=0.6)
            ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
        ax.set_xticks(range(len(results)), list(results))
        ax.set_title(dict(METRICS)[key])
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Synthetic ground truth: bars = mean over seeds, dots = seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=8)
    parser.add_argument("--per-task", type=int, default=300, help="training rows per naming task")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "synthetic")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/synthetic.*")
    args = parser.parse_args()

    prepare(args.out, args.per_task)
    train_names, heldout_names = train_and_heldout_names()
    results = {arm: [] for arm in ARMS}
    for seed in args.seeds:
        for arm in ARMS:
            metrics = train_and_evaluate(args.out, arm, seed, args.epochs, heldout_names, train_names)
            results[arm].append(metrics)
            print(f"{arm:4s} seed {seed}: " + ", ".join(f"{k}={metrics[k]:.3f}" for k, _ in METRICS), flush=True)
    summary = summarise(results)
    (args.out / "summary.json").write_text(json.dumps({"seeds": args.seeds, "epochs": args.epochs,
                                                      "results": results, "summary": summary}, indent=2))
    print(table(summary, args.seeds))
    if not args.no_docs:
        plot(results, REPO / "docs" / "synthetic.png")
        (REPO / "docs" / "synthetic_summary.json").write_text((args.out / "summary.json").read_text())


if __name__ == "__main__":
    main()
