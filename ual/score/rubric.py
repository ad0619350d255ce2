"""What the judge is asked: the versioned 0-99 rubric, sample rendering and the reminder.

The version string travels into every cache key and into the ``uncertainty_prompt_version``
column, so scores from different wordings are never mixed up silently. Change the wording ->
change ``PROMPT_VERSION``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ual.formats import turns

PROMPT_VERSION = "ual-rubric-v1"
PLACEHOLDER = "{sample}"

# The paper's scale and bands (PAPER.md §1), in this project's words.
DEFAULT_TEMPLATE = """\
You are helping to prepare training data for a language model. Below is one training example: a \
dialogue (every turn of it) or a plain text.

Rate how much this example calls for diverse, flexible answers (high) versus one precise, \
deterministic answer (low), as a whole number from 0 to 99:

- 70-99: varied, dynamic social situations; everyday conversation on open topics; creative, casual \
or idiomatic language. Many quite different replies would all be good.
- 40-69: semi-formal settings where variation is possible but controlled; a mix of facts and \
personal expression.
- 0-39: technical, scientific or specialised settings; tasks that need strict accuracy, such as \
mathematics or programming; little ambiguity and few correct answers.

Rate the task as a whole, not the quality of the answer given.

<example>
{sample}
</example>

Reply with the number only."""

# Appended (as a new user turn) once when a reply could not be read as a score.
REMINDER = "Please answer with a single whole number from 0 to 99 and nothing else."


class TemplateError(ValueError):
    """A user-supplied prompt template that cannot be used."""


def load_template(path: str | Path | None) -> tuple[str, str]:
    """(template, version): the built-in rubric, or a user file versioned by its content hash."""
    if path is None:
        return DEFAULT_TEMPLATE, PROMPT_VERSION
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TemplateError(f"cannot read prompt template {str(path)!r}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TemplateError(f"prompt template {str(path)!r} is not UTF-8 text") from None
    if PLACEHOLDER not in text:
        raise TemplateError(f"prompt template {str(path)!r} has no {PLACEHOLDER} placeholder for the sample")
    return text, "custom:" + hashlib.sha256(raw).hexdigest()[:12]


def _content_text(content) -> str:
    """Message content as text; structured content (lists of parts) is shown as JSON, not dropped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return json.dumps(content, ensure_ascii=False)


def render_turns(messages: list[dict]) -> str:
    """Every turn, labelled with its role, in order: what the judge sees of the sample."""
    return "\n\n".join(f"[{m.get('role', 'unknown')}]\n{_content_text(m.get('content'))}" for m in messages)


def render_sample(row: dict, fmt: str) -> str:
    """One dataset row (any shape ``ual.formats`` knows) rendered for the judge."""
    return render_turns(turns(row, fmt))


def build_prompt(template: str, sample: str) -> str:
    """The template with the rendered sample in place (plain replace: templates may contain braces)."""
    return template.replace(PLACEHOLDER, sample)


def first_messages(prompt: str) -> list[dict]:
    """The chat request for a first attempt."""
    return [{"role": "user", "content": prompt}]


def reminder_messages(prompt: str, reply: str) -> list[dict]:
    """The chat request for the one retry after an unreadable reply: the exchange plus the reminder."""
    return [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": REMINDER},
    ]
