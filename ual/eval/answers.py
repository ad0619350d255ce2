"""Final answers of maths problems: read from a model's output and from the gold solution, compared with
math-verify (symbolic equality: 18 = 18.00 = $18, 1,234 = 1234, 1/2 = 0.5 = \\frac{1}{2}), not by substring.

Why an anchor step before math-verify: GSM8K solutions end with ``#### N`` and MetaMath ones with
``The answer is: X``; math-verify knows neither ``####`` nor bare LaTeX after the phrase (``2\\sqrt{3}``
would be read as 2), so the span after the last anchor is parsed as LaTeX first. Without an anchor,
math-verify's own extraction runs on the whole output (``\\boxed{}`` first, then "final answer is",
then the last number).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from math_verify import parse, verify

# Last occurrence wins (a model that corrects itself states its final answer last).
_ANCHORS = (
    ("####", re.compile(r"####")),
    ("answer is", re.compile(r"answer is\s*:?", re.IGNORECASE)),
)
_NUMBER_COMMAS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_WORD = re.compile(r"[A-Za-z]{2,}")  # prose, which read as LaTeX would become a product of letters


@dataclass(frozen=True)
class Answer:
    """What was read: ``text`` is the answer as written (None: nothing found); ``method`` says how."""

    parsed: tuple
    text: str | None
    method: str

    @property
    def found(self) -> bool:
        return bool(self.parsed)


def _anchor_span(text: str) -> tuple[str, str] | None:
    """(anchor name, the rest of the line after the last anchor), or None if no anchor is in ``text``."""
    best = None
    for name, pattern in _ANCHORS:
        for m in pattern.finditer(text):
            if best is None or m.end() > best[1]:
                best = (name, m.end())
    if best is None:
        return None
    rest = text[best[1]:].strip()
    line = rest.split("\n", 1)[0].strip()
    return best[0], line.rstrip(".").strip()


def _parse_span(span: str) -> list:
    """Parse a short answer span. Bare LaTeX (``2\\sqrt{3}``, ``\\frac{3}{4}``) is read as maths; plain text
    as math-verify reads prose (``18 dollars`` is 18: wrapped in ``$`` it would be a product of letters);
    what prose parsing cannot read and has no words (``(1,2)``) gets a second try as maths."""
    if not span:
        return []
    if "\\" in span and "$" not in span:
        parsed = parse(f"${_NUMBER_COMMAS.sub('', span)}$")
        if parsed:
            return parsed
    parsed = parse(span)
    if not parsed and "$" not in span and not _WORD.search(span):
        parsed = parse(f"${span}$")
    return parsed


def extract_answer(output: str) -> Answer:
    """The final answer of a model's output (see the module docstring for the order of attempts)."""
    anchored = _anchor_span(output)
    if anchored is not None:
        name, span = anchored
        parsed = _parse_span(span)
        if parsed:
            return Answer(tuple(parsed), str(parsed[-1]), f"anchor:{name}")
    parsed = parse(output)
    if parsed:
        return Answer(tuple(parsed), str(parsed[-1]), "math-verify")
    return Answer((), None, "none")


def gold_gsm8k(answer: str) -> str:
    """The gold final answer of a GSM8K solution: what follows ``####``, thousands separators removed."""
    if "####" not in answer:
        raise ValueError("no '#### <answer>' line")
    return _NUMBER_COMMAS.sub("", answer.rsplit("####", 1)[1].strip().split("\n", 1)[0].strip())


def gold_metamath(response: str) -> str:
    """The gold final answer of a MetaMathQA response: what follows the last ``The answer is:``."""
    anchored = _anchor_span(response)
    if anchored is None or anchored[0] != "answer is" or not anchored[1]:
        raise ValueError("no 'The answer is: <answer>' at the end")
    return anchored[1]


def parse_gold(gold: str) -> tuple:
    """math-verify's reading of a gold answer string (empty tuple if it cannot be read)."""
    return tuple(_parse_span(gold))


def is_correct(gold: tuple, answer: Answer) -> bool:
    """Symbolic equality of gold and extracted answer; False when either could not be read."""
    if not gold or not answer.found:
        return False
    return bool(verify(list(gold), list(answer.parsed)))


def strip_calculator(solution: str) -> str:
    """GSM8K solutions carry ``<<48/2=24>>`` calculator annotations; few-shot exemplars read better without."""
    return _CALCULATOR.sub("", solution)
