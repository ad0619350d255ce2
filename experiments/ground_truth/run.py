"""Ground-truth experiment: does per-sample smoothing (UAL) beat SFT and constant LS on a mixed task mixture whose
answer distributions are known exactly? Design, endpoints and verdict rule: PREREGISTRATION.md beside this file.

    python experiments/ground_truth/run.py                  # everything: data, base model, 6 arms x 5 seeds, docs
    python experiments/ground_truth/run.py --small --seeds 0 --arms sft ual --out /tmp/gt --no-docs   # the test

Every model goes through the product: the base model is built by `ual.tiny` and pretrained with `ual.train`
(no smoothing), and every arm is `python -m ual.train finetune.yaml OUT/paths.yaml <arm flags>`. A finished run
keeps its metrics.json, so an interrupted experiment resumes where it stopped. Runs go two at a time, one thread each.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import tasks  # noqa: E402

# The arms: flags added to finetune.yaml (which holds the shared settings and loss_normalization: sample).
ARMS = {
    "sft": ["--smoothing_strategy", "none"],
    "ls": ["--smoothing_strategy", "constant", "--smoothing_mean", "0.1"],
    "ual": ["--smoothing_strategy", "uncertainty", "--smoothing_mean", "0.1"],
    "ual_shuffled": ["--smoothing_strategy", "explicit", "--smoothing_column", "eps_shuffled"],
    "ls_high_only": ["--smoothing_strategy", "explicit", "--smoothing_column", "eps_high_only"],
    "ual_unigram": ["--smoothing_strategy", "uncertainty", "--smoothing_mean", "0.1", "--smoothing_prior", "unigram"],
}
FULL = dict(arith_train=3000, story_train=1500, arith_test=1000, story_test=300, story_samples=16, references=20,
            t1_samples=4, pretrain_arith=6000, pretrain_story=3000, distinct_reps=50)
SMALL = dict(arith_train=300, story_train=150, arith_test=60, story_test=20, story_samples=4, references=3,
             t1_samples=2, pretrain_arith=400, pretrain_story=200, distinct_reps=5)
MODEL = dict(vocab_size=1200, hidden_size=128, num_layers=4)
SMALL_MODEL = dict(vocab_size=600, hidden_size=48, num_layers=2)
EPS_MEAN = 0.1
TOP_K_AT_32K = 200  # the usual top-k for a 32k vocabulary, scaled to ours


def top_k(vocab: int) -> int:
    return max(2, round(TOP_K_AT_32K * vocab / 32000))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def chat_text(prompt: str, completion: str) -> str:
    """One exchange as ual.tiny's chat template renders it, up to its end token."""
    return f"<|user|>\n{prompt}<|end|>\n<|assistant|>\n{completion}<|end|>"


def prepare(out: Path, sizes: dict, model_shape: dict) -> None:
    """Training rows with exact and noisy scores, the arms' explicit eps columns, the test sets, the pretraining text,
    and the initial (random) model with its tokenizer. Deterministic: seed 0 throughout."""
    from ual.mapping import fit_smoothing

    if (out / "paths.yaml").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    train_triples, test_triples = tasks.split_stories(sizes["story_test"])
    h_max = tasks.max_entropy()
    arith = [tasks.arithmetic_problem(rng, rng.choice([2, 3])) for _ in range(sizes["arith_train"])]
    stories = []
    for _ in range(sizes["story_train"]):
        story = rng.choice(train_triples)
        stories.append({"prompt": story.prompt(rng.randrange(len(tasks.PROMPTS))), "completion": story.sample(rng),
                        "task": "story", "entropy": story.entropy()})
    for row in arith:
        row["entropy"] = 0.0
    rows = arith + stories
    for row in rows:
        row["uncertainty_exact"] = tasks.uncertainty_score(row["entropy"], h_max)
        row["uncertainty"] = tasks.noisy_score(row["uncertainty_exact"], rng)
    # the explicit arms: UAL's own eps (the same mapping ual.train fits on the noisy scores), permuted across samples;
    # and its mean over the story rows given to every story row (maths rows 0)
    import numpy as np

    scores = np.array([r["uncertainty"] for r in rows])
    eps = fit_smoothing(scores, "uncertainty", target_mean=EPS_MEAN)(scores)
    shuffled = eps[np.random.default_rng(0).permutation(len(eps))]
    story_mean = float(eps[len(arith):].mean())
    for i, row in enumerate(rows):
        row["eps_ual"], row["eps_shuffled"] = float(eps[i]), float(shuffled[i])
        row["eps_high_only"] = story_mean if row["task"] == "story" else 0.0
    write_jsonl(out / "arithmetic.jsonl", rows[: len(arith)])
    write_jsonl(out / "stories.jsonl", rows[len(arith):])

    test_rng = random.Random(1)
    tests = {
        "arith_id": [tasks.arithmetic_problem(test_rng, test_rng.choice([2, 3])) for _ in range(sizes["arith_test"])],
        "arith_hard": [tasks.arithmetic_problem(test_rng, 4) for _ in range(sizes["arith_test"])],
        "stories": [], "story_samples": sizes["story_samples"], "t1_samples": sizes["t1_samples"],
    }
    for story in test_triples:
        refs = [story.sample(test_rng) for _ in range(sizes["references"])]
        distinct = [len({story.sample(test_rng) for _ in range(sizes["story_samples"])})
                    for _ in range(sizes["distinct_reps"])]
        tests["stories"].append({"animal": story.animal, "goal": story.goal, "place": story.place,
                                 "prompt": story.prompt(0), "references": refs,
                                 "reference_logp": [story.log_prob(r) for r in refs],
                                 "true_distinct": sum(distinct) / len(distinct)})
    (out / "tests.json").write_text(json.dumps(tests))

    pre_rng = random.Random(2)
    texts = [tasks.arithmetic_problem(pre_rng, pre_rng.choice([1, 2, 3, 4])) for _ in range(sizes["pretrain_arith"])]
    pairs = [(p["prompt"], p["completion"]) for p in texts]
    for _ in range(sizes["pretrain_story"]):  # training triples only: the test prompts stay unseen
        story = pre_rng.choice(train_triples)
        pairs.append((story.prompt(pre_rng.randrange(len(tasks.PROMPTS))), story.sample(pre_rng)))
    # rendered as the fine-tuning chat template renders them (a pilot on plain "prompt\ncompletion" text gave a base
    # that wrote valid stories, and a fine-tuned model that no longer did: the format shift, not the task)
    texts = [chat_text(p, c) for p, c in pairs]
    write_jsonl(out / "pretrain.jsonl", [{"text": t} for t in texts])
    from ual.tiny import build_tiny_model

    build_tiny_model(out / "init", texts, **model_shape)
    from transformers import AutoTokenizer

    rendered = AutoTokenizer.from_pretrained(out / "init").apply_chat_template(
        [{"role": "user", "content": pairs[0][0]}, {"role": "assistant", "content": pairs[0][1]}], tokenize=False)
    assert rendered.rstrip("\n") == texts[0], (rendered, texts[0])
    import yaml

    (out / "paths.yaml").write_text(yaml.safe_dump({
        "model_name_or_path": str(out / "base"),
        "datasets": [{"path": str(out / "arithmetic.jsonl"), "format": "prompt_completion", "source": "arithmetic"},
                     {"path": str(out / "stories.jsonl"), "format": "prompt_completion", "source": "stories"}],
    }))
    (out / "pretrain_paths.yaml").write_text(yaml.safe_dump({
        "model_name_or_path": str(out / "init"),
        "datasets": [{"path": str(out / "pretrain.jsonl"), "format": "text", "source": "pretrain"}],
    }))


def train(recipe: list[str], output_dir: Path, extra: list[str], log: Path, threads: int = 1) -> None:
    """One `ual.train` run on ``threads`` threads, its log kept beside it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "ual.train", *recipe, "--output_dir", str(output_dir), "--overwrite_output_dir",
           "true", *extra]
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({' '.join(cmd)}); see {log}:\n" + log.read_text()[-2000:])


def pretrain(out: Path, epochs: float) -> None:
    if (out / "base" / "config.json").exists():
        return
    print("pretraining the base model ...", flush=True)
    start = time.time()
    train([str(HERE / "pretrain.yaml"), str(out / "pretrain_paths.yaml")], out / "base",
          ["--num_train_epochs", str(epochs)], out / "pretrain.log", threads=2)
    print(f"pretrained in {time.time() - start:.0f} s", flush=True)


def run_arm(out: Path, arm: str, seed: int, epochs: float, batch_size: int) -> dict:
    """Fine-tune one arm with one seed, then evaluate it; cached in runs/ARM-seedS/metrics.json."""
    run_dir = out / "runs" / f"{arm}-seed{seed}"
    if (run_dir / "metrics.json").exists():
        return json.loads((run_dir / "metrics.json").read_text())
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    train([str(HERE / "finetune.yaml"), str(out / "paths.yaml")], run_dir,
          [*ARMS[arm], "--seed", str(seed), "--num_train_epochs", str(epochs)], out / "runs" / f"{arm}-seed{seed}.log")
    trained = time.time() - start
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(HERE / "evaluate_run.py"), str(run_dir), str(out / "tests.json"), "--seed", str(seed),
           "--batch-size", str(batch_size)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"evaluation of {run_dir} failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(f"{arm:13s} seed {seed}: trained {trained:.0f} s, evaluated {time.time() - start - trained:.0f} s; "
          + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float)), flush=True)
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--epochs", type=float, default=2.0, help="fine-tuning epochs")
    parser.add_argument("--pretrain-epochs", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--small", action="store_true", help="a reduced size for the test suite (minutes)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "ground_truth")
    parser.add_argument("--stage", choices=["prepare", "pretrain", "all"], default="all")
    parser.add_argument("--no-docs", action="store_true", help="write no docs/ground_truth.*")
    args = parser.parse_args()

    start = time.time()
    prepare(args.out, SMALL if args.small else FULL, SMALL_MODEL if args.small else MODEL)
    if args.stage == "prepare":
        return
    pretrain(args.out, args.pretrain_epochs)
    if args.stage == "pretrain":
        return
    jobs = [(arm, seed) for seed in args.seeds for arm in args.arms]
    print(f"{len(jobs)} runs ({len(args.arms)} arms x {len(args.seeds)} seeds), {args.workers} at a time", flush=True)
    with ThreadPoolExecutor(args.workers) as pool:  # each run is its own processes; threads only wait on them
        results = list(pool.map(lambda job: run_arm(args.out, *job, args.epochs, 100 if args.small else 250), jobs))
    per_run = {f"{arm}-seed{seed}": m for (arm, seed), m in zip(jobs, results)}
    (args.out / "results.json").write_text(json.dumps({"seeds": args.seeds, "arms": args.arms, "runs": per_run},
                                                      indent=1))
    print(f"all runs done in {(time.time() - start) / 60:.1f} min", flush=True)
    from analyse import analyse

    analyse(args.out, None if args.no_docs else REPO / "docs")


if __name__ == "__main__":
    main()
