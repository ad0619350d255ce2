"""Writing results so that a directory that exists is a finished result: everything goes to a hidden
sibling temporary directory, renamed into place only when the command succeeds (a crash, Ctrl-C or bad
input leaves no half-written ``results.json`` that a report could pick up)."""

from __future__ import annotations

import datetime as _dt
import json
import math
import shutil
import tempfile
from pathlib import Path

from ual.errors import UsageError
from ual.files import apply_umask

SETTINGS = "settings.json"
RESULTS = "results.json"
SAMPLES = "samples.jsonl"


def check_output_dir(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing output directory unless ``overwrite``: checked before any model is loaded."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--output-dir {str(path)!r} exists and is not a directory")
    if path.exists() and not overwrite:
        raise UsageError(f"--output-dir {str(path)!r} already exists; pass --overwrite to replace it")
    return path


class AtomicDir:
    """``with AtomicDir(out, overwrite) as tmp:`` write into ``tmp``; on success ``tmp`` becomes ``out``."""

    def __init__(self, path: str | Path, overwrite: bool):
        self.path = check_output_dir(path, overwrite)
        self.overwrite = overwrite
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-", dir=self.path.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        check_output_dir(self.path, self.overwrite)  # someone may have created it meanwhile
        old = None
        if self.path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.old-", dir=self.path.parent))
            self.path.rename(old / "dir")
        self.tmp.rename(self.path)
        apply_umask(self.path)  # mkdtemp made it 0700: give it the mode a plain mkdir would have
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _clean(value):
    """JSON without NaN/Infinity (not JSON; other tools reject them): non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _clean(value.item())
    return value


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(_clean(data), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, rows) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(_clean(row), ensure_ascii=False) + "\n")
    return path


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict:
    """Library versions that change numbers: recorded in every settings.json."""
    import importlib.metadata as md

    out = {}
    for name in ("ual", "torch", "transformers", "peft", "trl", "math-verify", "scikit-learn", "vllm"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out
