"""The synthetic tasks: prompts whose correct answers follow a known distribution.

Low entropy (one right answer): "Copy: w1 w2 w3" -> "w1 w2 w3" for random words; held-out prompts are new
word triples, so exact match measures whether the model stays sharp on a task with one answer.

High entropy (many right answers): "Name a colour for Alice." -> a colour drawn from a fixed distribution that
does not depend on the name. The names make every prompt unique, so a model that fits each training sample
sharply memorises noise (this name -> that colour) instead of the distribution; held-out prompts use unseen names.

Each sample's uncertainty is the exact entropy of its prompt's answer distribution, scaled to the paper's 0-99
rubric: 99 * H / ln(MAX_OPTIONS). Copy prompts have H = 0.
"""

from __future__ import annotations

import math
import random

WORDS = (
    "apple river stone cloud music green seven table window garden light number answer story paper silver "
    "market rocket candle forest winter summer bridge mirror pocket button ladder castle dragon planet"
).split()
NAMES = [f"{a}{b}" for a in ("Al", "Be", "Ca", "Do", "El", "Fa", "Gi", "Ho", "Iv", "Jo", "Ka", "Lu", "Mo", "Ni",
                             "Ol", "Pa", "Qu", "Ro", "Sa", "Ti")
         for b in ("na", "ro", "mi", "ta", "lo", "ve", "ki", "so", "du", "re")]  # 200 names
MAX_OPTIONS = 20


def zipf(options: list[str], s: float) -> dict[str, float]:
    weights = [1 / (rank + 1) ** s for rank in range(len(options))]
    total = sum(weights)
    return {o: w / total for o, w in zip(options, weights)}


# High-entropy tasks: answer distributions of different entropies (all known exactly)
DISTRIBUTIONS = {
    "colour": zipf("red blue green yellow purple orange pink brown black white grey gold silver teal navy "
                   "maroon olive coral beige violet".split(), 1.0),
    "animal": zipf("cat dog horse cow sheep goat lion tiger bear wolf fox deer rabbit mouse owl".split(), 1.2),
    "fruit": zipf("apple pear plum peach mango lemon lime grape melon kiwi".split(), 0.5),
}
TEMPLATES = {"colour": "Name a colour for {name}.", "animal": "Name an animal for {name}.",
             "fruit": "Name a fruit for {name}."}


def entropy(dist: dict[str, float]) -> float:
    return -sum(p * math.log(p) for p in dist.values() if p > 0)


def uncertainty_of(task: str) -> float:
    """The exact entropy of the task's answer distribution on the 0-99 scale."""
    if task == "copy":
        return 0.0
    return round(99 * entropy(DISTRIBUTIONS[task]) / math.log(MAX_OPTIONS), 3)


def copy_prompt(rng: random.Random) -> tuple[str, str]:
    words = " ".join(rng.sample(WORDS, 3))
    return f"Copy: {words}", words


def sample_row(task: str, rng: random.Random, names: list[str]) -> dict:
    if task == "copy":
        prompt, answer = copy_prompt(rng)
    else:
        dist = DISTRIBUTIONS[task]
        prompt = TEMPLATES[task].format(name=rng.choice(names))
        answer = rng.choices(list(dist), weights=list(dist.values()))[0]
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "completion": [{"role": "assistant", "content": answer}],
        "task": task,
        "uncertainty": uncertainty_of(task),
        "uncertainty_method": "exact-entropy",
    }


def make_split(n_per_task: int, seed: int, names: list[str]) -> list[dict]:
    rng = random.Random(seed)
    rows = [sample_row(task, rng, names) for task in ["copy", *DISTRIBUTIONS] for _ in range(n_per_task)]
    rng.shuffle(rows)
    return rows


def train_and_heldout_names(seed: int = 0) -> tuple[list[str], list[str]]:
    names = list(NAMES)
    random.Random(seed).shuffle(names)
    return names[:150], names[150:]
