"""The results cache: one JSON line per judge answer, appended and flushed as it arrives.

Judge calls cost money and time, so nothing a judge said is ever lost: a crash or Ctrl-C loses at
most the line being written (a torn last line is removed by ``repair_cache`` on the next run), and rerunning the same
command asks only for what has no score yet. Records are keyed by ``sample_key``: the rendered
sample, the prompt version and the judge, so a change to any of them asks again.
Failed answers are recorded too (for the record) but do not count as answered: a rerun asks again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from ual.files import is_json, write_atomic


def sample_key(rendered: str, prompt_version: str, judge: str) -> str:
    """sha256 over (rendered sample, prompt version, judge id)."""
    payload = json.dumps([rendered, prompt_version, judge], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def read_cache(path: str | Path, warn=None) -> dict[str, dict]:
    """key -> latest record with a result; failures and unreadable lines (reported) are skipped."""
    path = Path(path)
    found: dict[str, dict] = {}
    if not path.exists():
        return found
    skipped = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                skipped += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("key"), str) and _answered(record):
                found[record["key"]] = record
    if skipped:
        (warn or _stderr)(f"cache {path}: skipped {skipped} unreadable line(s) (an interrupted write); those samples will be asked again")
    return found


def repair_cache(path: str | Path) -> int:
    """Rewrite the cache without its unreadable lines (a torn last line from a kill); returns how many.

    Only while holding the output's lock: no other run appends meanwhile. Without this, every later run would
    warn about the same torn line forever."""
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = fh.read().splitlines()
    good = [line for line in lines if line.strip() and is_json(line)]
    dropped = sum(1 for line in lines if line.strip()) - len(good)
    if dropped:
        write_atomic(path, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in good), encoding="utf-8"))
    return dropped


def _answered(record: dict) -> bool:
    """A record with a result: a judge's score, or a measured NLL (model-nll), and no error."""
    return record.get("error") is None and (record.get("score") is not None or record.get("nll") is not None)


def _stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class CacheWriter:
    """Appends records, one flushed line each; starts on a fresh line if the file ends in a torn one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        needs_newline = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                needs_newline = fh.read(1) != b"\n"
        self._fh = open(self.path, "a", encoding="utf-8")
        if needs_newline:
            self._fh.write("\n")
            self._fh.flush()

    def append(self, record: dict) -> None:
        record = {**record, "time": round(time.time(), 3)}
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
