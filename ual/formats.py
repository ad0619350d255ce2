"""Dataset shapes users have, converted to the shapes TRL's SFTTrainer tokenizes.

TRL shapes pass through unchanged: conversational ``messages``, ``prompt``/``completion`` (plain or
conversational) and ``text``; ShareGPT ``conversations`` (from/value) become ``messages``. Two
converters cover the paper's data families: Alpaca (``instruction``/``input``/``output``) and GSM8K
/ MetaMathQA-style (``question``/``answer``, or ``query``/``response``), both to conversational
prompt/completion so TRL's completion-only loss applies.
"""

from __future__ import annotations

from .errors import UsageError

FORMATS = ("auto", "messages", "conversations", "prompt_completion", "text", "alpaca", "gsm8k", "metamath")

# Columns each format reads, in detection order (first match wins for format "auto").
REQUIRED_COLUMNS = {
    "messages": ("messages",),
    "conversations": ("conversations",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "gsm8k": ("question", "answer"),
    "metamath": ("query", "response"),
    "text": ("text",),
}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def detect_format(columns) -> str | None:
    """The first format whose columns are all present, or None."""
    columns = set(columns)
    for fmt, required in REQUIRED_COLUMNS.items():
        if set(required) <= columns:
            return fmt
    return None


def resolve_format(fmt: str, columns, where: str) -> str:
    """Check ``fmt`` against the dataset's columns; ``where`` names the dataset in errors."""
    if fmt not in FORMATS:
        raise UsageError(f"{where}: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "auto":
        found = detect_format(columns)
        if found is None:
            raise UsageError(
                f"{where}: cannot tell the dataset format from its columns {sorted(columns)}; expected one of "
                + "; ".join(f"{k}: {', '.join(v)}" for k, v in REQUIRED_COLUMNS.items())
            )
        return found
    missing = [c for c in REQUIRED_COLUMNS[fmt] if c not in set(columns)]
    if missing:
        raise UsageError(f"{where}: format {fmt!r} needs column(s) {missing}; the dataset has {sorted(columns)}")
    return fmt


def row_problem(row: dict, fmt: str) -> str | None:
    """Why ``row`` cannot be read as ``fmt`` (naming the column or key), or None: presence and type of every field
    the format reads, so a null or a wrong shape is named here rather than inside the chat template later."""
    if fmt in ("messages", "conversations"):
        return _turns_problem(row.get(fmt), fmt, ("role", "content") if fmt == "messages" else ("from", "value"))
    if fmt == "prompt_completion":
        prompt, completion = row.get("prompt"), row.get("completion")
        if isinstance(prompt, list) or isinstance(completion, list):
            return _turns_problem(prompt, "prompt", ("role", "content")) or _turns_problem(
                completion, "completion", ("role", "content"))
        return _text_problem(row, "prompt") or _text_problem(row, "completion")
    required = {"text": ("text",), "alpaca": ("instruction", "output"), "gsm8k": ("question", "answer"),
                "metamath": ("query", "response")}[fmt]
    problem = next((p for p in (_text_problem(row, c) for c in required) if p), None)
    if problem is None and fmt == "alpaca" and row.get("input") is not None and not isinstance(row["input"], str):
        problem = f"column 'input': {_kind(row['input'])}, expected text or null"
    return problem


def completion_text(row: dict, fmt: str) -> str:
    """The text a row trains on by default (its answer), for spotting empty completions; rows must be valid."""
    if fmt in ("messages", "conversations"):
        role, content = ("role", "content") if fmt == "messages" else ("from", "value")
        answers = [t.get(content) for t in row[fmt] if _SHAREGPT_ROLES.get(t.get(role), t.get(role)) == "assistant"]
        return "".join(a for a in answers if isinstance(a, str))
    if fmt == "prompt_completion":
        completion = row["completion"]
        return completion if isinstance(completion, str) else "".join(
            t.get("content") or "" for t in completion if isinstance(t.get("content"), str))
    return row[{"text": "text", "alpaca": "output", "gsm8k": "answer", "metamath": "response"}[fmt]]


def _kind(value) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r:.40}"


def _text_problem(row: dict, column: str) -> str | None:
    if column not in row:
        return f"column {column!r} is missing"
    if not isinstance(row[column], str):
        return f"column {column!r}: {_kind(row[column])}, expected text"
    return None


def _turns_problem(turns_, column: str, keys: tuple[str, str]) -> str | None:
    role, content = keys
    if not isinstance(turns_, list) or not turns_:
        return f"column {column!r}: {_kind(turns_)}, expected a non-empty list of turns"
    for i, turn in enumerate(turns_):
        if not isinstance(turn, dict):
            return f"column {column!r}, turn {i}: {_kind(turn)}, expected a mapping with {role!r} and {content!r}"
        if not isinstance(turn.get(role), str):
            return f"column {column!r}, turn {i}, key {role!r}: {_kind(turn.get(role))}, expected text"
        value = turn.get(content)
        if value is None and turn.get("tool_calls"):
            continue  # an assistant turn that only calls tools
        if not isinstance(value, (str, list)):
            return f"column {column!r}, turn {i}, key {content!r}: {_kind(value)}, expected text"
    return None


def output_columns(fmt: str) -> tuple[str, ...]:
    """Columns a converted row carries: the TRL shape the trainer tokenizes."""
    if fmt in ("messages", "conversations"):
        return ("messages",)
    if fmt == "text":
        return ("text",)
    return ("prompt", "completion")


def convert(row: dict, fmt: str) -> dict:
    """One raw row -> one TRL-shaped row (only the output columns)."""
    if fmt == "messages":
        return {"messages": row["messages"]}
    if fmt == "conversations":
        return {
            "messages": [
                {"role": _SHAREGPT_ROLES.get(turn["from"], turn["from"]), "content": turn["value"]}
                for turn in row["conversations"]
            ]
        }
    if fmt == "prompt_completion":
        return {"prompt": row["prompt"], "completion": row["completion"]}
    if fmt == "text":
        return {"text": row["text"]}
    if fmt == "alpaca":
        extra = (row.get("input") or "").strip()
        prompt = row["instruction"] if not extra else f"{row['instruction']}\n\n{extra}"
        return _user_assistant(prompt, row["output"])
    if fmt == "gsm8k":
        return _user_assistant(row["question"], row["answer"])
    if fmt == "metamath":
        return _user_assistant(row["query"], row["response"])
    raise UsageError(f"unknown format {fmt!r}")


def turns(row: dict, fmt: str) -> list[dict]:
    """Every turn of a converted-or-raw row as role/content messages (for rendering to a judge)."""
    out = convert(row, detect_format(row.keys()) if fmt == "auto" else fmt)
    if "messages" in out:
        return list(out["messages"])
    if "text" in out:
        return [{"role": "text", "content": out["text"]}]
    prompt, completion = out["prompt"], out["completion"]
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    return list(prompt) + list(completion)


def _user_assistant(prompt: str, completion: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "completion": [{"role": "assistant", "content": completion}],
    }
