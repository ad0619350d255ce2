"""The two tasks of the ground-truth experiment, each with its exact judge.

Low entropy (a GSM8K analogue): templated arithmetic word problems with one worked solution ending
"The answer is: N"; the judge reads the final number.

High entropy (an AlpacaEval analogue): "Tell a story about a {animal} who wants to {goal} in the {place}.", answered
by a known stochastic grammar. Every answer it can produce has an exact probability, the grammar parses any text
(so validity and constraint satisfaction are exact), and each prompt's answer entropy is computed in closed form.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

# --- low entropy: arithmetic word problems -----------------------------------------------------------------------

NAMES = {"Tom": "He", "Ann": "She", "Sam": "He", "Mia": "She", "Ben": "He", "Lily": "She", "Max": "He", "Zoe": "She",
         "Leo": "He", "Eva": "She", "Jack": "He", "Rosa": "She"}
ITEMS = ["apples", "pens", "books", "coins", "cards", "eggs", "shells", "stickers", "marbles", "stamps"]
FRIENDS = ["a friend", "his sister", "her brother", "a neighbour", "the teacher"]
STEPS = [("buys {b} more", "+"), ("finds {b} more", "+"), ("gets {b} from a friend", "+"),
         ("gives {b} to {friend}", "-"), ("loses {b}", "-"), ("eats {b}", "-")]


def arithmetic_problem(rng: random.Random, n_steps: int) -> dict:
    """One problem with ``n_steps`` operations on single-digit amounts, and its worked solution."""
    name = rng.choice(list(NAMES))
    pronoun, item = NAMES[name], rng.choice(ITEMS)
    value = rng.randint(2, 20)
    question = [f"{name} has {value} {item}."]
    solution = []  # the equations alone: "starts with N items." before them made tiny models merge the two
    for _ in range(n_steps):
        b = rng.randint(1, 9)
        text, op = rng.choice([s for s in STEPS if s[1] == "+" or value >= b])
        new = value + b if op == "+" else value - b
        question.append(f"{pronoun} {text.format(b=b, friend=rng.choice(FRIENDS))}.")
        solution.append(f"{value} {op} {b} = {new}.")
        value = new
    question.append(f"How many {item} does {name} have now?")
    solution.append(f"The answer is: {value}")
    return {"prompt": " ".join(question), "completion": " ".join(solution), "answer": value, "task": "arithmetic"}


_ANSWER = re.compile(r"The answer is:\s*(-?\d+)")


def read_answer(text: str) -> int | None:
    """The number after the first "The answer is:", as the paper's protocol reads GSM8K answers; None if absent."""
    m = _ANSWER.search(text)
    return int(m.group(1)) if m else None


# --- high entropy: stories from a known stochastic grammar -----------------------------------------------------

ANIMALS = ["fox", "owl", "rabbit", "bear", "cat", "frog", "duck", "mouse", "wolf", "deer", "goat", "crow", "horse",
           "snail", "lion", "seal"]
GOALS = {"find a lost key": "found the lost key", "build a warm house": "built a warm house",
         "learn to sing": "learned to sing", "make a new friend": "made a new friend",
         "catch a big fish": "caught a big fish", "win a race": "won the race", "climb a tall hill": "climbed the tall hill",
         "bake a sweet cake": "baked a sweet cake", "paint a picture": "painted a picture",
         "plant a tree": "planted a tree"}
# Each place has its own things; their number differs, so the answer entropy differs from prompt to prompt.
PLACES = {"forest": ["trees", "mushrooms", "ferns", "logs", "berries", "moss", "acorns", "pine cones", "roots"],
          "river": ["stones", "reeds", "bridge"],
          "village": ["houses", "market", "well", "bakery", "school", "church", "square"],
          "mountain": ["rocks", "snow", "cave", "cliff", "path"],
          "garden": ["flowers", "roses", "bench", "pond", "fence", "tulips", "hedge", "vegetables", "shed", "swing",
                     "bees"],
          "meadow": ["grass", "daisies"],
          "desert": ["dunes", "cactus", "sand", "oasis"],
          "lake": ["boats", "waves", "pier", "ducks", "island", "shore"]}
ADJECTIVES = ["little", "brave", "clever", "happy", "young", "quiet", "curious", "kind", "tiny", "old", "proud", "shy"]
FEELINGS = ["smiled", "felt happy", "was tired", "laughed", "felt proud", "was scared", "sang a song"]
PROMPTS = ["Tell a story about a {animal} who wants to {goal} in the {place}.",
           "Write a short story about a {animal} who wants to {goal} in the {place}.",
           "Please tell me a tale of a {animal} who wants to {goal} in the {place}."]
N_MIDDLE = {1: 0.3, 2: 0.4, 3: 0.3}  # how many middle sentences


def zipf(n: int, s: float = 1.0) -> list[float]:
    """Zipf probabilities of ranks 1..n."""
    w = [1 / (r**s) for r in range(1, n + 1)]
    total = sum(w)
    return [x / total for x in w]


def entropy(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


@dataclass(frozen=True)
class Story:
    """One prompt's grammar: the choices and their probabilities, all fixed by (animal, goal, place)."""

    animal: str
    goal: str
    place: str

    @property
    def others(self) -> list[str]:
        return [a for a in ANIMALS if a != self.animal]

    @property
    def things(self) -> list[str]:
        return PLACES[self.place]

    def templates(self) -> list[tuple[str, list[list[str]]]]:
        """Middle-sentence templates (in Zipf order) and the filler lists of their slots, in order."""
        a = self.animal
        return [
            (f"Every day the {a} looked at the {{}}.", [self.things]),
            (f"One morning the {a} met a {{}} {{}}.", [ADJECTIVES, self.others]),
            (f"The {a} walked past the {{}} and {{}}.", [self.things, FEELINGS]),
            ("It asked a {} for help with the {}.", [self.others, self.things]),
            (f"The {a} {{}} but did not stop.", [FEELINGS]),
        ]

    def endings(self) -> list[str]:
        past = GOALS[self.goal]
        return [f"In the end, the {self.animal} {past}.", f"At last the {self.animal} {past} and went home.",
                f"After a long day, the {self.animal} {past}."]

    def opening(self, adjective: str) -> str:
        return f"Once there was a {adjective} {self.animal} in the {self.place}."

    def prompt(self, phrasing: int = 0) -> str:
        return PROMPTS[phrasing].format(animal=self.animal, goal=self.goal, place=self.place)

    # -- sampling and exact probabilities --------------------------------------------------------------------

    def sample(self, rng: random.Random) -> str:
        def pick(options):
            return rng.choices(options, weights=zipf(len(options)))[0]

        sentences = [self.opening(pick(ADJECTIVES))]
        k = rng.choices(list(N_MIDDLE), weights=list(N_MIDDLE.values()))[0]
        templates = self.templates()
        for _ in range(k):
            template, slots = rng.choices(templates, weights=zipf(len(templates)))[0]
            sentences.append(template.format(*(pick(options) for options in slots)))
        sentences.append(pick(self.endings()))
        return " ".join(sentences)

    def entropy(self) -> float:
        """The exact entropy (nats) of this prompt's answer distribution (every answer parses one way only)."""
        templates = self.templates()
        per_middle = entropy(zipf(len(templates))) + sum(
            p * sum(entropy(zipf(len(options))) for options in slots)
            for p, (_, slots) in zip(zipf(len(templates)), templates)
        )
        mean_k = sum(k * p for k, p in N_MIDDLE.items())
        return (entropy(zipf(len(ADJECTIVES))) + entropy(list(N_MIDDLE.values())) + mean_k * per_middle
                + entropy(zipf(len(self.endings()))))

    def log_prob(self, text: str) -> float | None:
        """The exact log-probability of ``text`` under this prompt's grammar; None if the grammar cannot produce it
        (wrong form, wrong animal, a thing from another place, the wrong goal...)."""
        sentences = re.split(r"(?<=\.) ", text.strip())
        if not 3 <= len(sentences) <= 5 or any(not x.endswith(".") or "." in x[:-1] for x in sentences):
            return None
        logp = math.log(N_MIDDLE[len(sentences) - 2])
        adjective = _match_one(sentences[0], self.opening("{}"), [ADJECTIVES])
        if adjective is None:
            return None
        logp += adjective
        endings = self.endings()
        if sentences[-1] not in endings:
            return None
        logp += math.log(zipf(len(endings))[endings.index(sentences[-1])])
        templates = self.templates()
        template_p = zipf(len(templates))
        for sentence in sentences[1:-1]:
            for p, (template, slots) in zip(template_p, templates):
                filled = _match_one(sentence, template, slots)
                if filled is not None:
                    logp += math.log(p) + filled
                    break
            else:
                return None
        return logp


def _match_one(sentence: str, template: str, slots: list[list[str]]) -> float | None:
    """Log-probability of the slot fillers if ``sentence`` is ``template`` filled from ``slots`` (Zipf over each)."""
    pattern = "^" + re.escape(template).replace(r"\{\}", "(.+?)") + "$"
    m = re.match(pattern, sentence)
    if not m:
        return None
    logp = 0.0
    for value, options in zip(m.groups(), slots):
        if value not in options:
            return None
        logp += math.log(zipf(len(options))[options.index(value)])
    return logp


def all_stories() -> list[Story]:
    return [Story(a, g, p) for a in ANIMALS for g in GOALS for p in PLACES]


def split_stories(n_test: int, seed: int = 0) -> tuple[list[Story], list[Story]]:
    """Held-out (animal, goal, place) triples for the test set; the rest for training."""
    stories = all_stories()
    random.Random(seed).shuffle(stories)
    return stories[n_test:], stories[:n_test]


def max_entropy() -> float:
    return max(s.entropy() for s in all_stories())


def uncertainty_score(h: float, h_max: float) -> float:
    """The exact normalised entropy on the paper's 0-99 scale."""
    return 99.0 * h / h_max


def noisy_score(score: float, rng: random.Random, sd: float = 10.0) -> float:
    """A judge-like score: the exact one plus N(0, sd^2), rounded and clipped to 0-99."""
    return float(min(99, max(0, round(score + rng.gauss(0, sd)))))
