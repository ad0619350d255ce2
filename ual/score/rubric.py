"""What the judge is asked: the rubrics (this project's, the UAL authors' verbatim, or the user's own), how a
sample is rendered for each, and the reminder.

A rubric's version string travels into every cache key and into the ``uncertainty_prompt_version`` column, so
scores from different wordings are never mixed up silently. Change the wording -> change ``PROMPT_VERSION``.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ual.formats import turns

RUBRICS = ("ual", "paper")

PROMPT_VERSION = "ual-rubric-v1"
PLACEHOLDER = "{sample}"

# The scale and bands of the authors' prompt (docs/paper.md), paraphrased and condensed in this project's words;
# `--rubric paper` sends theirs verbatim.
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

# `--response-format json`: the reply must be {"score": <whole number 0-99>}. OpenAI's structured outputs and vLLM's
# guided decoding both take this JSON schema; the usual parser still reads the reply (it accepts that object).
SCORE_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "uncertainty_score",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 99}},
            "required": ["score"],
            "additionalProperties": False,
        },
    },
}

# Appended (as a new user turn) once when a reply could not be read as a score.
REMINDER = "Please answer with a single whole number from 0 to 99 and nothing else."


class TemplateError(ValueError):
    """A user-supplied prompt template that cannot be used."""


# The UAL authors' judge prompt is theirs (Apache-2.0): the user points at their file and it is read from there.
PAPER_SOURCE = ("github.com/ekonwang/UAL4Alignment, file benchmark/sample/gpt4_ent_score.py at commit "
                "3ed0ffcdebd9de110d041534388414dd41eb25c6")
PAPER_VARIABLE = "prompt_temp"
PAPER_PLACEHOLDER = "{example}"
PAPER_SHA256 = "3df88be8d93e92fc914d7d473c3360f6ce842621a0dbd38a3d49794e84ba5785"
PAPER_LENGTH = 1272
# The call settings of the authors' script (its argparse defaults), sent unless the user gives others.
PAPER_REQUEST = {"temperature": 0.0, "top_p": 0.9, "max_tokens": 4096}


@dataclass(frozen=True)
class Rubric:
    """One way of asking the judge: the template, its version, how a row becomes the sample text in it, and the
    request settings it implies (the user's flags override them)."""

    name: str  # ual | paper | custom
    template: str
    version: str
    placeholder: str
    render: Callable[[dict, str], str]
    request: dict = field(default_factory=dict)

    def prompt(self, rendered: str) -> str:
        """The template with the sample in place (plain replace: templates may contain other braces)."""
        return self.template.replace(self.placeholder, rendered)


def load_rubric(name: str = "ual", *, rubric_file: str | Path | None = None,
                prompt_template: str | Path | None = None) -> Rubric:
    """The rubric a run asks with. ``paper`` reads the authors' template out of their file; ``prompt_template``
    (a file with a ``{sample}`` placeholder) is the user's own wording."""
    if name not in RUBRICS:
        raise TemplateError(f"unknown rubric {name!r}; choose one of {', '.join(RUBRICS)}")
    if name == "paper":
        if prompt_template is not None:
            raise TemplateError("--prompt-template is your own wording; it cannot be combined with --rubric paper")
        if rubric_file is None:
            raise TemplateError(f"--rubric paper needs the authors' file: --rubric-file PATH, the file "
                                f"{PAPER_SOURCE} (Apache-2.0); ual reads {PAPER_VARIABLE} from it without running it")
        template = read_paper_template(rubric_file)
        return Rubric("paper", template, "paper:" + PAPER_SHA256[:12], PAPER_PLACEHOLDER, render_paper_sample,
                      dict(PAPER_REQUEST))
    if rubric_file is not None:
        raise TemplateError("--rubric-file is read by --rubric paper only; your own wording goes in --prompt-template")
    template, version = load_template(prompt_template)
    return Rubric("ual" if prompt_template is None else "custom", template, version, PLACEHOLDER, render_sample)


def read_paper_template(path: str | Path) -> str:
    """The ``prompt_temp`` string of the authors' ``gpt4_ent_score.py``, parsed (never executed) and checked
    against the template's sha256, so another file or another version is a clear error, not another rubric."""
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"cannot read --rubric-file {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TemplateError(f"--rubric-file {str(path)!r} is not UTF-8 text") from None
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise TemplateError(f"--rubric-file {str(path)!r}, line {exc.lineno}: not Python ({exc.msg}); it should be "
                            f"the authors' gpt4_ent_score.py") from None
    found = [node.value for node in tree.body if isinstance(node, ast.Assign)
             and any(isinstance(t, ast.Name) and t.id == PAPER_VARIABLE for t in node.targets)]
    if not found:
        raise TemplateError(f"--rubric-file {str(path)!r} assigns no {PAPER_VARIABLE} at its top level; it should "
                            f"be {PAPER_SOURCE}")
    value = found[-1]
    if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
        raise TemplateError(f"--rubric-file {str(path)!r}, line {value.lineno}: {PAPER_VARIABLE} is not a plain "
                            "string literal, so it cannot be read without running the file")
    template = value.value
    digest = hashlib.sha256(template.encode("utf-8")).hexdigest()
    if digest != PAPER_SHA256:
        raise TemplateError(
            f"--rubric-file {str(path)!r}, line {value.lineno}: {PAPER_VARIABLE} is not the authors' template "
            f"({len(template):,} characters, sha256 {digest[:12]}…; expected {PAPER_LENGTH:,} characters, "
            f"sha256 {PAPER_SHA256[:12]}…). Use {PAPER_SOURCE}, or --prompt-template for your own wording")
    return template


def render_paper_sample(row: dict, fmt: str) -> str:
    """The sample as the authors showed it to their judge: its turn texts joined with newlines, no role labels
    (``"\n".join(sample["conversations"])``). An Alpaca row: instruction, then input when not empty, then output."""
    if fmt == "alpaca":
        parts = [row["instruction"], *([row["input"]] if (row.get("input") or "").strip() else []), row["output"]]
        return "\n".join(_content_text(p) for p in parts)
    return "\n".join(_content_text(m.get("content")) for m in turns(row, fmt))


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
