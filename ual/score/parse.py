"""Reading a judge's reply as one 0-99 score, or refusing to.

Judges answer "63", "Score: 85", "**72**/99", ``{"score": 40}`` or "I'd rate it 63.". A reply is
accepted only when it names exactly one value (repeats of the same number are fine) that is a
whole number in [0, 99]; anything else (two different numbers, a range, 150, -3, "high", an empty
reply) raises ``ScoreParseError`` with the reason. Never guess: a refused reply is retried with a
reminder and then recorded as a failure by the caller.

Rules, in order:
1. ``<think>...</think>`` blocks (reasoning models) are dropped.
2. JSON (whole reply, a fenced block, or the first ``{...}``) with a ``score``/``rating``/
   ``uncertainty`` key, or a bare JSON number, decides alone.
3. Denominators ("/99", "/100", "out of 99") and scale mentions ("0-99", "0 to 100") are not
   scores; another denominator ("7/10") means another scale and is refused.
4. If numbers follow a label ("score: 55", "rating is 55"), those decide; otherwise all numbers do.
"""

from __future__ import annotations

import json
import math
import re

SCORE_MIN, SCORE_MAX = 0, 99
_KEYS = ("score", "rating", "uncertainty", "uncertainty_score")

_THINK = re.compile(r"<think>.*?(</think>|$)", re.S | re.I)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)
_BRACES = re.compile(r"\{[^{}]*\}", re.S)
# A number not glued to letters ("gpt4", "3rd"); a sign only counts when it is not a hyphen between words/digits.
_NUMBER = re.compile(r"(?<![A-Za-z0-9.])(?P<sign>(?<![\w)])[-−+])?(?P<num>\d+(?:\.\d+)?)(?![A-Za-z0-9]|\.\d)")
_SCALE = re.compile(r"(?<![\d.])0\s*(?:-|–|—|to)\s*(?:99|100)(?![\d.])", re.I)
_DENOMINATOR = re.compile(r"(?:/|\bout\s+of)\s*\**\s*(\d+)(?:\.\d+)?", re.I)
_LABEL = re.compile(
    r"\b(?:score|rating|rate|uncertainty)\b[\s*_:=\"'`]*(?:(?:is|of|would be|at|as|:)\s*)?[\s*_:=\"'`]*$", re.I
)
_RANGE_AFTER = re.compile(r"^\s*(?:-|–|—|to)\s*\d")


class ScoreParseError(ValueError):
    """The reply is not a single score in range; the message says why."""


def parse_score(reply: str | None) -> int:
    """The one score a judge's reply states, or ``ScoreParseError``."""
    if reply is None or not reply.strip():
        raise ScoreParseError("empty reply")
    text = _THINK.sub(" ", reply).strip()
    if not text:
        raise ScoreParseError("reply has only a <think> block")
    from_json = _from_json(text)
    if from_json is not None:
        return _check_range(from_json)
    return _from_text(text)


def _check_range(value: float) -> int:
    if not math.isfinite(value) or value != int(value):
        raise ScoreParseError(f"score {value:g} is not a whole number")
    value = int(value)
    if not SCORE_MIN <= value <= SCORE_MAX:
        raise ScoreParseError(f"score {value} is outside {SCORE_MIN}-{SCORE_MAX}")
    return value


def _json_value(obj) -> float | None:
    """The score inside a decoded JSON value, or None if it holds no score key."""
    if isinstance(obj, bool):
        return None
    if isinstance(obj, (int, float)):
        return float(obj)
    if isinstance(obj, dict):
        lowered = {str(k).lower(): v for k, v in obj.items()}
        for key in _KEYS:
            if key in lowered:
                value = lowered[key]
                if isinstance(value, bool) or value is None:
                    raise ScoreParseError(f"JSON {key!r} is {json.dumps(value)}, not a number")
                if isinstance(value, str):
                    try:
                        value = float(value.strip())
                    except ValueError:
                        raise ScoreParseError(f"JSON {key!r} is {value!r}, not a number") from None
                if not isinstance(value, (int, float)):
                    raise ScoreParseError(f"JSON {key!r} is not a number")
                return float(value)
    return None


def _from_json(text: str) -> float | None:
    """A score stated as JSON, if the reply is (or contains) JSON with a score in it."""
    candidates = [text] + [m.group(1) for m in _FENCE.finditer(text)] + [m.group(0) for m in _BRACES.finditer(text)]
    for candidate in candidates:
        try:
            obj = json.loads(candidate.strip())
        except (ValueError, RecursionError):
            continue
        value = _json_value(obj)
        if value is not None:
            return value
    return None


def _from_text(text: str) -> int:
    """A score stated in prose or markdown."""
    # Scale mentions are blanked out (same length, so positions stay valid).
    text = _SCALE.sub(lambda m: " " * len(m.group(0)), text)
    denominator_spans = []
    for m in _DENOMINATOR.finditer(text):
        if int(m.group(1)) not in (99, 100):
            raise ScoreParseError(f"reply uses another scale (/{m.group(1)})")
        denominator_spans.append(m.span(1))
    labelled, plain = [], []
    for m in _NUMBER.finditer(text):
        if any(start <= m.start("num") < end for start, end in denominator_spans):
            continue
        value = float(m.group("num")) * (-1 if m.group("sign") in ("-", "−") else 1)
        plain.append(value)
        before, after = text[: m.start()], text[m.end() :]
        if _LABEL.search(before[-40:]) and not _RANGE_AFTER.match(after):
            labelled.append(value)
    chosen = labelled or plain
    if not chosen:
        raise ScoreParseError("no number in the reply")
    distinct = sorted(set(chosen))
    if len(distinct) > 1:
        shown = ", ".join(f"{v:g}" for v in distinct[:5])
        raise ScoreParseError(f"reply names more than one number ({shown})")
    return _check_range(distinct[0])
