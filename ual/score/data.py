"""Reading the dataset to score and writing it back, unchanged except for the added columns.

Local files are read with the standard library / pyarrow (not ``datasets``) so every original
column comes back byte-for-byte as it went in; a local directory or a hub id goes through
``datasets.load_dataset``. Outputs are written to a temporary file beside the target and moved
into place with ``os.replace``, so a crash never leaves a half-written output.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
OUTPUT_SUFFIXES = (".jsonl", ".parquet")


class DataError(ValueError):
    """The input cannot be read or the output cannot be written; the message says which and why."""


def _looks_local(spec: str) -> bool:
    return spec.lower().endswith(LOCAL_SUFFIXES) or spec.startswith((".", "/", "~")) or os.sep in spec[:1]


def default_source(spec: str) -> str:
    """The source label for rows that carry no ``source`` column: a file's stem, or the hub id."""
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        return path.name
    if spec.lower().endswith(LOCAL_SUFFIXES):
        return path.stem
    return spec


def read_rows(spec: str, split: str = "train", config: str | None = None) -> list[dict]:
    """All rows of a local .jsonl/.json/.parquet file, a local dataset directory, or a hub dataset."""
    path = Path(os.path.expanduser(spec))
    if path.is_file():
        rows = _read_file(path)
    elif path.is_dir():
        rows = _read_hub(str(path), split, config)
    elif _looks_local(spec):
        raise DataError(f"input file not found: {spec}")
    else:
        rows = _read_hub(spec, split, config)
    if not rows:
        raise DataError(f"{spec}: the dataset has no rows")
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(f"{spec}: row {bad} is not a JSON object")
    return rows


def _read_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise DataError(f"{path}: cannot read as parquet: {exc}") from None
    if suffix not in (".jsonl", ".json"):
        raise DataError(f"{path}: unsupported input type {suffix!r}; use {', '.join(LOCAL_SUFFIXES)} or a hub id")
    text = path.read_text(encoding="utf-8")
    if suffix == ".json":
        try:
            whole = json.loads(text)
        except ValueError:
            whole = None  # maybe JSON lines under a .json name
        if isinstance(whole, list):
            return whole
        if isinstance(whole, dict):
            return [whole]
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return rows


def _read_hub(spec: str, split: str, config: str | None) -> list[dict]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a core dependency
        raise DataError("reading a hub dataset needs the 'datasets' package") from None
    try:
        ds = datasets.load_dataset(spec, config, split=split)
    except Exception as exc:  # network, missing split, unknown repo: all end the same way for the user
        raise DataError(f"cannot load dataset {spec!r} (split {split!r}): {type(exc).__name__}: {exc}") from None
    return ds.to_list()


def common_columns(rows: list[dict]) -> set[str]:
    """Columns every row has with a value (what format detection may rely on; null = absent)."""
    columns = {k for k, v in rows[0].items() if v is not None}
    for row in rows[1:]:
        columns &= {k for k, v in row.items() if v is not None}
    return columns


def check_output(path: str | Path) -> Path:
    """Fail before any judge is asked if the output cannot be written there."""
    path = Path(os.path.expanduser(str(path)))
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(f"output {str(path)!r}: unsupported type; end the name with {' or '.join(OUTPUT_SUFFIXES)}")
    if path.is_dir():
        raise DataError(f"output {str(path)!r} is a directory")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise DataError(f"cannot write the output in {str(parent)!r}: {exc.strerror or exc}") from None
    return path


def write_atomic(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` for a temp file beside ``path``, then move it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_rows(path: str | Path, rows: list[dict]) -> None:
    """Rows as JSON lines or parquet, by the output's extension, atomically.

    Parquet has one schema for all rows: a column some rows lack is stored as null in those rows.
    """
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = list(dict.fromkeys(c for row in rows for c in row))  # every row's columns, first-seen order
        try:
            table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise DataError(f"cannot store these rows as parquet ({exc}); write .jsonl instead") from None
        write_atomic(path, lambda tmp: pq.write_table(table, tmp))
    else:
        write_atomic(path, lambda tmp: write_jsonl(tmp, rows))


def write_jsonl(path: str | Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
