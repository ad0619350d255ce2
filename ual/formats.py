"""Dataset shapes users have, converted to the shapes TRL's SFTTrainer tokenizes.

TRL shapes pass through unchanged: conversational ``messages``, ``prompt``/``completion`` (plain or
conversational) and ``text``; ShareGPT ``conversations`` (from/value) become ``messages``. Two
converters cover the paper's data families: Alpaca (``instruction``/``input``/``output``) and GSM8K
/ MetaMathQA-style (``question``/``answer``, or ``query``/``response``), both to conversational
prompt/completion so TRL's completion-only loss applies.
"""

from __future__ import annotations

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
        raise ValueError(f"{where}: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "auto":
        found = detect_format(columns)
        if found is None:
            raise ValueError(
                f"{where}: cannot tell the dataset format from its columns {sorted(columns)}; expected one of "
                + "; ".join(f"{k}: {', '.join(v)}" for k, v in REQUIRED_COLUMNS.items())
            )
        return found
    missing = [c for c in REQUIRED_COLUMNS[fmt] if c not in set(columns)]
    if missing:
        raise ValueError(f"{where}: format {fmt!r} needs column(s) {missing}; the dataset has {sorted(columns)}")
    return fmt


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
    raise ValueError(f"unknown format {fmt!r}")


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
