"""Evaluate one fine-tuned model of the ground-truth experiment with the exact judges of tasks.py.

    python experiments/ground_truth/evaluate_run.py RUN_DIR TESTS_JSON --seed S

Writes RUN_DIR/metrics.json (numbers) and RUN_DIR/items.json (per-item outcomes, for paired comparisons).
Decoding: greedy, and sampling at T 0.8 with top-k scaled to the vocabulary (200 per 32k tokens); stories also at
T 1 over the whole vocabulary for the invalid mass (a secondary metric: it is what label smoothing moves most).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import tasks  # noqa: E402
from run import top_k  # noqa: E402
from ual.eval.generate import GenerationSettings, generate_transformers, render_prompts  # noqa: E402

MAX_ARITH_TOKENS, MAX_STORY_TOKENS = 80, 140


def generate(model, tokenizer, prompts: list[str], *, temperature: float, k: int | None, max_new: int, seed: int,
             batch_size: int) -> list[str]:
    rendered = render_prompts(tokenizer, [[{"role": "user", "content": p}] for p in prompts])
    settings = GenerationSettings(max_new_tokens=max_new, temperature=temperature, top_k=k, batch_size=batch_size,
                                  seed=seed)
    return [g.text for g in generate_transformers(model, tokenizer, rendered, settings, progress=False)]


def story_outcome(story: tasks.Story, text: str) -> dict:
    """The exact judge: log-probability under the prompt's grammar (None: invalid) and each constraint."""
    sentences = re.split(r"(?<=\.) ", text.strip())
    return {
        "logp": story.log_prob(text),
        "animal": all(story.animal in s for s in sentences[:1] + sentences[-1:]),
        "place": sentences[0].endswith(f"in the {story.place}."),
        "goal": sentences[-1] in story.endings(),
        "words": len(text.split()),
    }


@torch.inference_mode()
def reference_logq(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int) -> list[float]:
    """log q(completion | prompt) under the model, summed over the completion's tokens (its end token included)."""
    out = []
    for s in range(0, len(prompts), batch_size):
        ids, masks = [], []
        for p, c in zip(prompts[s:s + batch_size], completions[s:s + batch_size]):
            prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                       tokenize=True, return_dict=True)["input_ids"]
            full = tokenizer.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": c}],
                                                 tokenize=True, return_dict=True)["input_ids"]
            assert full[:len(prompt_ids)] == prompt_ids
            end = full.index(tokenizer.eos_token_id, len(prompt_ids)) + 1  # the completion and its end token
            ids.append(full[:end])
            masks.append([0] * len(prompt_ids) + [1] * (end - len(prompt_ids)))
        width = max(map(len, ids))
        x = torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i in ids])
        m = torch.tensor([mk + [0] * (width - len(mk)) for mk in masks], dtype=torch.bool)
        attention = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
        logp = model(input_ids=x, attention_mask=attention).logits[:, :-1].double().log_softmax(-1)
        token_logp = logp.gather(-1, x[:, 1:, None]).squeeze(-1) * m[:, 1:]
        out += token_logp.sum(-1).tolist()
    return out


def evaluate(run_dir: Path, tests: dict, seed: int, batch_size: int) -> tuple[dict, dict]:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(run_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    k = top_k(model.config.vocab_size)
    metrics, items = {}, {}
    for split in ("arith_id", "arith_hard"):
        problems = tests[split]
        prompts = [p["prompt"] for p in problems]
        for mode, temperature in (("greedy", 0.0), ("sampled", 0.8)):
            texts = generate(model, tokenizer, prompts, temperature=temperature, k=k, max_new=MAX_ARITH_TOKENS,
                             seed=seed, batch_size=batch_size)
            correct = [tasks.read_answer(t) == p["answer"] for t, p in zip(texts, problems)]
            metrics[f"{split}_{mode}"] = sum(correct) / len(correct)
            items[f"{split}_{mode}"] = correct

    stories = [tasks.Story(s["animal"], s["goal"], s["place"]) for s in tests["stories"]]
    for mode, temperature, kk, per_prompt in (("sampled", 0.8, k, tests["story_samples"]),
                                              ("t1", 1.0, None, tests["t1_samples"])):
        prompts = [s["prompt"] for s in tests["stories"] for _ in range(per_prompt)]
        texts = generate(model, tokenizer, prompts, temperature=temperature, k=kk, max_new=MAX_STORY_TOKENS,
                         seed=seed, batch_size=batch_size)
        outcomes = [story_outcome(stories[i // per_prompt], t) for i, t in enumerate(texts)]
        valid = [o["logp"] is not None for o in outcomes]
        if mode == "t1":
            metrics["stories_invalid_mass_t1"] = 1 - sum(valid) / len(valid)
            continue
        metrics["stories_valid"] = sum(valid) / len(valid)
        for c in ("animal", "place", "goal"):
            metrics[f"stories_{c}_ok"] = sum(o[c] for o in outcomes) / len(outcomes)
        metrics["stories_words"] = sum(o["words"] for o in outcomes) / len(outcomes)
        distinct = []
        for i, s in enumerate(tests["stories"]):
            block = slice(i * per_prompt, (i + 1) * per_prompt)
            mine = {t for t, ok in zip(texts[block], valid[block]) if ok}
            distinct.append(len(mine) / s["true_distinct"])
        metrics["stories_distinct_ratio"] = sum(distinct) / len(distinct)
        items["stories_logp"] = [o["logp"] for o in outcomes]
    # KL(true || model) per story, estimated without bias from the true references: E_p[log p - log q]
    prompts = [s["prompt"] for s in tests["stories"] for _ in s["references"]]
    refs = [r for s in tests["stories"] for r in s["references"]]
    logq = reference_logq(model, tokenizer, prompts, refs, batch_size)
    logp = [lp for s in tests["stories"] for lp in s["reference_logp"]]
    metrics["stories_kl"] = sum(p - q for p, q in zip(logp, logq)) / len(refs)
    metrics["stories_true_nll"] = -sum(logp) / len(refs)  # the floor the model's cross-entropy could reach
    assert all(math.isfinite(x) for x in logq)
    return metrics, items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("tests", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250)
    args = parser.parse_args()
    torch.set_num_threads(1)
    metrics, items = evaluate(args.run_dir, json.loads(args.tests.read_text()), args.seed, args.batch_size)
    state = json.loads((args.run_dir / "trainer_state.json").read_text())
    logged = [e["loss"] for e in state["log_history"] if "loss" in e]  # the last logged step's loss, or for a run
    metrics["final_train_loss"] = logged[-1] if logged else state["log_history"][-1]["train_loss"]  # shorter than
    # one logging interval (the reduced test run), the mean over its steps
    (args.run_dir / "items.json").write_text(json.dumps(items))
    tmp = args.run_dir / "metrics.json.tmp"  # metrics.json last: its presence marks a finished run
    tmp.write_text(json.dumps(metrics, indent=1))
    tmp.replace(args.run_dir / "metrics.json")


if __name__ == "__main__":
    main()
