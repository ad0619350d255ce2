"""A deterministic, documented prior for uncertainty scores, for data no judge LLM has scored.

It is NOT the paper's LLM-elicited uncertainty: it only places a sample in one of the rubric's three
bands from its source and the wording of its instruction, so that the shipped sample data and offline
demos have plausible scores. Every row it scores is marked ``uncertainty_method = "prior-v1"``.

Bands (the paper's 0-99 rubric): 0-39 precise tasks with one right answer (maths, code, closed
questions); 40-69 semi-formal tasks mixing fact and expression; 70-99 open, creative or social tasks.
"""

from __future__ import annotations

import re

PRIOR_METHOD = "prior-v1"
# One score per band, so the prior never claims more resolution than it has.
SCORE_PRECISE, SCORE_MIXED, SCORE_OPEN = 15.0, 55.0, 85.0
MATH_SOURCES = ("gsm8k", "metamath", "math")
_OPEN = re.compile(
    r"\b(write|compose|create|imagine|brainstorm|invent|generate|story|poem|song|slogan|tweet|dialogue|"
    r"describe|suggest|come up with|design|pretend|name a|give (?:me )?(?:an? )?(?:example|idea|tip))",
    re.I,
)
_PRECISE = re.compile(
    r"\b(calculate|compute|solve|convert|classify|categori[sz]e|identify|find|count|sort|arrange|extract|"
    r"translate|correct|edit|fix|spell|true or false|yes or no|which of|how many|what is the (?:sum|product|"
    r"value|capital|name|result)|code|function|python|sql|regex|equation)\b",
    re.I,
)


def prior_uncertainty(row: dict, source: str) -> float:
    """A band score for one raw row; ``source`` names its dataset (maths sources are always precise)."""
    if any(name in source.lower() for name in MATH_SOURCES):
        return SCORE_PRECISE
    text = " ".join(str(row.get(key) or "") for key in ("instruction", "question", "query", "prompt"))
    if not text.strip() and row.get("messages"):
        text = next((m["content"] for m in row["messages"] if m.get("role") == "user"), "")
    precise, open_ended = bool(_PRECISE.search(text)), bool(_OPEN.search(text))
    if precise and not open_ended:
        return SCORE_PRECISE
    if open_ended and not precise:
        return SCORE_OPEN
    return SCORE_MIXED  # both or neither: the middle band
