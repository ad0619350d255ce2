"""Reading the dataset to score and writing it back, unchanged except for the added columns.

Local files are read with the standard library / pyarrow (not ``datasets``) so every original
column comes back byte-for-byte as it went in; a local directory or a hub id goes through
``datasets.load_dataset``. Before the first request every row is checked to be writable to the
chosen output format; outputs are written to a temporary file beside the target and moved into
place (``ual.files.write_atomic``), so a crash never leaves a half-written output.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import tempfile
from pathlib import Path

from ual.errors import UsageError
from ual.files import looks_local, read_json, same_file, write_atomic

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
OUTPUT_SUFFIXES = (".jsonl", ".parquet", ".csv")


class DataError(UsageError):
    """The input cannot be read or the output cannot be written; the message says which and why."""


def default_source(spec: str) -> str:
    """The source label for rows that carry no ``source`` column: a file's stem, or the hub id."""
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        return path.name
    if spec.lower().endswith(LOCAL_SUFFIXES):
        return path.stem
    return spec


def read_rows(spec: str, split: str = "train", config: str | None = None) -> list[dict]:
    """All rows of a local .jsonl/.json/.parquet/.csv file, a local dataset directory, or a hub dataset."""
    path = Path(os.path.expanduser(spec))
    if path.is_file():
        rows = _read_file(path)
    elif path.is_dir():
        rows = _read_hub(str(path), split, config)
    elif looks_local(spec):
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
    if suffix == ".csv":
        # every cell as the text it is, so the output repeats the input byte for byte (`ual train` reads the
        # numbers in it as numbers)
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    if suffix not in (".jsonl", ".json"):
        raise DataError(f"{path}: unsupported input type {suffix!r}; use {', '.join(LOCAL_SUFFIXES)} or a hub id")
    try:
        whole = read_json(path)
    except UsageError as exc:
        raise DataError(str(exc)) from None
    return [whole] if isinstance(whole, dict) else whole


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


def check_output(path: str | Path, inputs: tuple[str | Path, ...] = ()) -> Path:
    """Fail before any judge is asked if the output cannot be written there, or would overwrite an input."""
    path = Path(os.path.expanduser(str(path)))
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(f"output {str(path)!r}: unsupported type; end the name with {', '.join(OUTPUT_SUFFIXES)}")
    if path.is_dir():
        raise DataError(f"output {str(path)!r} is a directory")
    for other in inputs:
        if same_file(path, other):
            raise DataError(f"output {str(path)!r} is the input file {str(other)!r}: writing it would replace your "
                            "data (hand labels included). Choose another --output")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise DataError(f"cannot write the output in {str(parent)!r}: {exc.strerror or exc}") from None
    return path


def json_value(value):
    """The one rule for values JSON has no type for: dates and times as ISO 8601 text (documented in
    docs/score.md); anything else is refused by ``check_rows_writable`` before a request is sent."""
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} has no JSON form")


def check_rows_writable(rows: list[dict], path: str | Path, extra: dict) -> None:
    """Every row, plus the columns scoring adds (``extra``: a typical value of each), can be written to
    ``path``'s format: checked before the first request, so no answer is paid for and then lost."""
    suffix = Path(path).suffix.lower()
    for index, row in enumerate(rows):
        for column, value in row.items():
            problem = _unwritable(value, suffix)
            if problem:
                raise DataError(f"row {index} (0-based), column {column!r}: {problem}, so it cannot be written to "
                                f"{str(path)!r}" + (" (write .jsonl or .parquet instead)" if suffix == ".csv" else ""))
    if suffix == ".parquet":
        import pyarrow as pa

        columns = list(dict.fromkeys(c for row in rows for c in row))
        for column in columns:
            try:
                pa.array([row.get(column) for row in rows])
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                raise DataError(f"column {column!r} cannot be stored as parquet ({exc}); write .jsonl instead") from None
        pa.Table.from_pylist([{**{c: row.get(c) for c in columns}, **extra} for row in rows[:1]])


def _unwritable(value, suffix: str) -> str | None:
    if suffix == ".csv" and isinstance(value, (list, dict)):
        return f"a {type(value).__name__} has no CSV form"
    if suffix == ".parquet":
        return _bad_text(value)
    try:
        json.dumps(value, ensure_ascii=False, default=json_value).encode("utf-8")
    except TypeError as exc:
        return str(exc)
    except (UnicodeEncodeError, ValueError):
        return _bad_text(value) or "not encodable as UTF-8"
    return None


def _bad_text(value) -> str | None:
    """Text that is not valid Unicode (a lone surrogate, e.g. from a JSON escape "\\ud800")."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"text with an unencodable character {value[exc.start]!r} at offset {exc.start} (a lone surrogate)"
    elif isinstance(value, dict):
        return next((p for p in map(_bad_text, value.values()) if p), None)
    elif isinstance(value, list):
        return next((p for p in map(_bad_text, value) if p), None)
    return None


def write_rows(path: str | Path, rows: list[dict]) -> None:
    """Rows as JSON lines, parquet or CSV, by the output's extension, atomically.

    Parquet and CSV have one set of columns for all rows: a column some rows lack is null (empty) there.
    """
    path = Path(path)
    columns = list(dict.fromkeys(c for row in rows for c in row))  # every row's columns, first-seen order
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise DataError(f"cannot store these rows as parquet ({exc}); write .jsonl instead") from None
        write_atomic(path, lambda tmp: pq.write_table(table, tmp))
    elif suffix == ".csv":
        def write_csv(tmp):
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=columns)
                writer.writeheader()
                writer.writerows({c: row.get(c) for c in columns} for row in rows)

        write_atomic(path, write_csv)
    else:
        write_atomic(path, lambda tmp: write_jsonl(tmp, rows))


def write_jsonl(path: str | Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=json_value) + "\n")
