"""Evaluation data: the copies shipped in ``data/eval/`` (so evals run offline), any local
.jsonl/.json/.parquet/.csv file, or a hub dataset id; every row checked for the columns a task reads."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ual.errors import UsageError
from ual.files import looks_local, read_json, shipped

EVAL_DATA = shipped("data", "eval")
GSM8K_TEST = EVAL_DATA / "gsm8k_test.jsonl"
GSM8K_FEWSHOT = EVAL_DATA / "gsm8k_fewshot.jsonl"
ALPACA_EVAL = EVAL_DATA / "alpaca_eval.json"
_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def _read_local(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        data = read_json(path)
        if isinstance(data, dict):  # {"data": [...]} / {"rows": [...]}: the one list value
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise UsageError(f"{path}: expected a JSON list of rows (or an object holding one list)")
            data = lists[0]
        return list(data)
    if suffix in (".parquet", ".csv"):
        from datasets import load_dataset

        return list(load_dataset(suffix[1:], data_files=str(path), split="train"))
    raise UsageError(f"{path}: cannot read a {suffix or 'suffix-less'} file; use one of {', '.join(_LOCAL_SUFFIXES)}")


def load_rows(source: str | Path, *, config: str | None = None, split: str = "test") -> list[dict]:
    """Rows of a local file or of a hub dataset (``config``/``split`` apply to hub ids only)."""
    source = str(source)
    path = Path(source).expanduser()
    if path.is_file():
        rows = _read_local(path)
    elif path.is_dir() or looks_local(source):
        raise UsageError(f"eval data {source!r}: no such file")
    else:
        from datasets import load_dataset

        try:
            rows = list(load_dataset(source, name=config, split=split))
        except Exception as e:  # hub errors come in many types; the message is what matters
            raise UsageError(
                f"eval data {source!r}: not a local file, and loading it as a hub dataset failed: {e}"
            ) from None
    if not all(isinstance(r, dict) for r in rows):
        raise UsageError(f"eval data {source!r}: every row must be a JSON object")
    return rows


def check_columns(rows: list[dict], columns: tuple[str, ...], source: str, task: str) -> None:
    """Every row has every column ``task`` reads, as a string; else an error naming the file, row and column."""
    if not rows:
        raise UsageError(f"eval data {source!r} has no rows")
    for i, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            raise UsageError(
                f"eval data {source!r}: row {i} (0-based) has no column {missing[0]!r}, which {task} needs "
                f"(it reads {', '.join(repr(c) for c in columns)}); the row has {sorted(row)}"
            )
        bad = [c for c in columns if not isinstance(row[c], str)]
        if bad:
            raise UsageError(f"eval data {source!r}: row {i} (0-based), column {bad[0]!r} is not a string")


def describe_source(source: str | Path) -> dict:
    """Provenance for settings.json: the path and sha256 of a local file, or the hub id."""
    path = Path(str(source)).expanduser()
    if path.is_file():
        return {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {"hub_id": str(source)}
