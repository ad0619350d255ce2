"""Held-out metrics against the known truth: exact match and calibration on copy prompts; KL from the true answer
distribution, coverage of valid answers when sampling, and distribution calibration on the naming prompts.

Two checks of how far the conclusions reach: the same KL on names seen in training (a model that memorised
"this name -> that answer" fits training names worse than the name-independent truth), and sampling under the UAL
authors' decoding (temperature 0.8, top-k 200) beside temperature 1 over the full vocabulary."""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from tasks import DISTRIBUTIONS, TEMPLATES, copy_prompt


def _prompt_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"]


@torch.no_grad()
def completion_logprobs(model, tokenizer, prompt: str, completions: list[str]) -> np.ndarray:
    """log p(completion + EOS | prompt) for each completion, teacher-forced in one batch."""
    prefix = _prompt_ids(tokenizer, prompt)
    seqs = [tokenizer(c + tokenizer.eos_token, add_special_tokens=False)["input_ids"] for c in completions]
    width = len(prefix) + max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(prefix) + len(s)] = torch.tensor(prefix + s)
        mask[i, : len(prefix) + len(s)] = 1
    logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
    out = []
    for i, s in enumerate(seqs):
        positions = torch.arange(len(prefix) - 1, len(prefix) - 1 + len(s))
        out.append(float(logp[i, positions, torch.tensor(s)].sum()))
    return np.array(out)


@torch.no_grad()
def greedy(model, tokenizer, prompt: str, max_new_tokens: int = 12) -> tuple[str, float]:
    """Greedy answer and its sequence probability (the model's confidence)."""
    ids = torch.tensor([_prompt_ids(tokenizer, prompt)])
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, output_scores=True,
                         return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    new = out.sequences[0, ids.shape[1]:]
    logp = sum(float(torch.log_softmax(score[0].float(), -1)[tok]) for score, tok in zip(out.scores, new))
    return tokenizer.decode(new, skip_special_tokens=True).strip(), math.exp(logp)


def ece(confidence: np.ndarray, outcome: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: sum over confidence bins of |mean confidence - mean outcome| * share."""
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    return float(sum(abs(confidence[index == b].mean() - outcome[index == b].mean()) * (index == b).mean()
                     for b in range(bins) if (index == b).any()))


@torch.no_grad()
def sample_answers(model, tokenizer, prompt: str, n: int, seed: int, temperature: float = 1.0,
                   top_k: int = 0) -> list[str]:
    torch.manual_seed(seed)
    ids = torch.tensor([_prompt_ids(tokenizer, prompt)] * n)
    out = model.generate(ids, max_new_tokens=6, do_sample=True, temperature=temperature, top_k=top_k, top_p=1.0,
                         pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True).strip() for row in out]


def naming_kl(model, tokenizer, names: list[str], rng: random.Random, n_names: int) -> list[float]:
    """KL(true || model over the valid answers) for ``n_names`` names drawn from ``names``, every naming task."""
    kls = []
    for task, dist in DISTRIBUTIONS.items():
        options, truth = list(dist), np.array(list(dist.values()))
        for name in rng.sample(names, n_names):
            mass = np.exp(completion_logprobs(model, tokenizer, TEMPLATES[task].format(name=name), options))
            q = mass / mass.sum()
            kls.append(float((truth * (np.log(truth) - np.log(q))).sum()))
    return kls


def sampled_validity(model, tokenizer, name: str, n_samples: int, seed: int, **decoding) -> tuple[float, float]:
    """(valid rate, coverage) of ``n_samples`` sampled answers per naming task, averaged over the tasks."""
    rates, coverage = [], []
    for task, dist in DISTRIBUTIONS.items():
        answers = sample_answers(model, tokenizer, TEMPLATES[task].format(name=name), n_samples, seed, **decoding)
        valid = [a for a in answers if a in dist]
        rates.append(len(valid) / len(answers))
        expected = sum(1 - (1 - p) ** n_samples for p in dist.values())
        coverage.append(len(set(valid)) / expected)
    return float(np.mean(rates)), float(np.mean(coverage))


def evaluate(model, tokenizer, heldout_names: list[str], n_copy: int = 60, n_names: int = 20,
             n_samples: int = 64, seed: int = 0, train_names: list[str] | None = None) -> dict:
    model.eval()
    rng = random.Random(seed)
    # low entropy: copy prompts never seen in training
    conf, correct = [], []
    for _ in range(n_copy):
        prompt, answer = copy_prompt(rng)
        output, p = greedy(model, tokenizer, prompt)
        conf.append(p)
        correct.append(float(output == answer))
    metrics = {"copy_exact_match": float(np.mean(correct)), "copy_ece": ece(np.array(conf), np.array(correct))}
    # high entropy: unseen names, the model's distribution over the valid answers against the truth
    kls, invalid, coverage, valid_rate, q_all, p_all = [], [], [], [], [], []
    for task, dist in DISTRIBUTIONS.items():
        options, truth = list(dist), np.array(list(dist.values()))
        for name in rng.sample(heldout_names, n_names):
            prompt = TEMPLATES[task].format(name=name)
            logq = completion_logprobs(model, tokenizer, prompt, options)
            mass = np.exp(logq)
            invalid.append(1 - mass.sum())
            q = mass / mass.sum()
            kls.append(float((truth * (np.log(truth) - np.log(q))).sum()))
            q_all.extend(q)
            p_all.extend(truth)
        answers = sample_answers(model, tokenizer, TEMPLATES[task].format(name=heldout_names[0]), n_samples, seed)
        valid = [a for a in answers if a in dist]
        valid_rate.append(len(valid) / len(answers))
        # coverage: valid answers seen, relative to what the same number of draws from the truth would show
        expected = sum(1 - (1 - p) ** n_samples for p in truth)
        coverage.append(len(set(valid)) / expected)
    metrics.update(
        named_kl=float(np.mean(kls)),
        named_invalid_mass=float(np.mean(invalid)),
        named_coverage=float(np.mean(coverage)),
        named_valid_rate=float(np.mean(valid_rate)),
        named_distribution_ece=ece(np.array(q_all), np.array(p_all)),
    )
    if train_names:
        metrics["named_kl_train_names"] = float(np.mean(naming_kl(model, tokenizer, train_names,
                                                                  random.Random(seed + 1), n_names)))
    rate, cover = sampled_validity(model, tokenizer, heldout_names[0], n_samples, seed, temperature=0.8, top_k=200)
    metrics.update(named_valid_rate_t08_k200=rate, named_coverage_t08_k200=cover)
    return metrics
