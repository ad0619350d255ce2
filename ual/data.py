"""Training data: load a mixture, check its scores, attach eps per sample, then per token.

Checks run on the raw rows, before any model is loaded, and name the file, row and column of the first
bad value. Tokenization itself is TRL's (see ``UALTrainer._prepare_dataset``): this module only adds
the smoothing columns around it and packs them along with ``input_ids`` and ``labels``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from datasets import Dataset, Features, IterableDataset, Value, concatenate_datasets, load_dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
from trl.trainer.utils import pad

from .errors import UsageError
from .files import looks_local, read_json
from .formats import FORMATS, completion_text, convert, output_columns, resolve_format, row_problem
from .mapping import SmoothingMap, fit_smoothing, summarize

logger = logging.getLogger("ual")
SAMPLE_SMOOTHING = "ual_smoothing"  # per-sample eps, carried through TRL's tokenization
TOKEN_SMOOTHING = "smoothing"  # per-token eps, aligned with input_ids; the collated batch key
SOURCE = "source"  # which mixture entry a row came from, for per-dataset statistics
_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class UALDatasetConfig:
    """One entry of ``datasets:`` in a recipe (the arguments of ``datasets.load_dataset`` plus a format)."""

    path: str = field(metadata={"help": "Local file (.jsonl/.json/.parquet/.csv), local folder, or hub dataset id."})
    format: str = field(default="auto", metadata={"help": f"Row shape: one of {', '.join(FORMATS)}."})
    name: str | None = field(default=None, metadata={"help": "Dataset configuration name (hub datasets)."})
    data_dir: str | None = field(default=None, metadata={"help": "`data_dir` of `datasets.load_dataset`."})
    data_files: str | list[str] | None = field(default=None, metadata={"help": "`data_files` of `load_dataset`."})
    split: str = field(default="train", metadata={"help": "Split to load."})
    fraction: float | None = field(
        default=None,
        metadata={
            "help": "Share of this dataset in the mixture (TRL's semantics: normalised over the mixture, the first "
            "round(share * N) rows kept, N the largest size that oversamples none). Set on all entries or none."
        },
    )
    source: str | None = field(default=None, metadata={"help": "Name in logs and statistics (default: path)."})
    columns: list[str] | None = field(
        default=None, metadata={"help": "Keep only these columns of the dataset (TRL's `columns`); include the score."})


@dataclass
class UALMixtureConfig:
    """The ``datasets:`` list of a recipe."""

    datasets: list[UALDatasetConfig] = field(
        default_factory=list, metadata={"help": "Datasets to mix (see UALDatasetConfig for the keys of each)."}
    )

    def __post_init__(self):
        if not isinstance(self.datasets, (list, tuple)):
            raise UsageError(f"datasets: expected a list of entries, each a mapping with a 'path' (in YAML: a line "
                             f"'datasets:' then '  - path: {self.datasets}'), got {type(self.datasets).__name__} "
                             f"{self.datasets!r:.80}")
        self.datasets = list(self.datasets)
        known = {f.name for f in fields(UALDatasetConfig)}
        for i, entry in enumerate(self.datasets):
            if isinstance(entry, UALDatasetConfig):
                continue
            if not isinstance(entry, dict):
                raise UsageError(f"datasets[{i}]: expected a mapping with a 'path' key, got {entry!r:.80} (write "
                                 f"'- path: {entry}' rather than '- {entry}')")
            unknown = sorted(set(entry) - known)
            foreign = {"weight": "the alignment-handbook's `weight` keeps that share of this dataset's own rows; "
                                 "here `fraction` is its share of the whole mixture (set it on every entry)",
                       "id": "write the dataset as `path:` (a hub id or a local path)"}
            if unknown and unknown[0] in foreign:
                raise UsageError(f"datasets[{i}]: unknown key {unknown[0]!r}: {foreign[unknown[0]]}")
            if unknown:
                raise UsageError(f"datasets[{i}]: unknown key(s) {unknown}; known keys are {sorted(known)}")
            if "path" not in entry:
                raise UsageError(f"datasets[{i}]: the key 'path' is required")
            self.datasets[i] = UALDatasetConfig(**entry)


def check_data_paths(entries: list[UALDatasetConfig]) -> None:
    """Every local dataset path exists (what can be checked without reading the data)."""
    if not entries:
        raise UsageError("the recipe has no `datasets:` entries to train on")
    for i, entry in enumerate(entries):
        _check_path(entry, f"datasets[{i}] ({entry.path})")


def _check_path(entry: UALDatasetConfig, where: str) -> None:
    path = os.path.expanduser(entry.path)
    if not os.path.exists(path) and looks_local(entry.path):
        raise UsageError(f"{where}: dataset path {entry.path!r} does not exist"
                         + ("" if os.path.isabs(path) else f" (relative paths are looked up from {os.getcwd()})"))


def _load_one(entry: UALDatasetConfig, where: str, streaming: bool = False) -> tuple[Dataset | IterableDataset, list]:
    """The entry's rows and its column names (for a stream, read off its first row, the only one read here)."""
    _check_path(entry, where)
    path = os.path.expanduser(entry.path)
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext not in _LOCAL_BUILDERS:
            raise UsageError(f"{where}: cannot read {path!r}: use one of {', '.join(_LOCAL_BUILDERS)}")
        if os.path.getsize(path) == 0:
            raise UsageError(f"{where}: the file is empty (0 bytes)")
        try:
            ds = load_dataset(_LOCAL_BUILDERS[ext], data_files=path, split=entry.split, streaming=streaming,
                              **_csv_as_text(path))
            first = next(iter(ds), None) if streaming else None  # a stream parses lazily: make it parse now
        except Exception as exc:  # datasets wraps a parse error without its file or line
            if ext in (".json", ".jsonl") and not read_json(path, where):  # a bad line raises, naming it
                raise UsageError(f"{where}: the file has no rows") from None
            raise UsageError(f"{where}: cannot read it as {ext[1:]}: {exc.__cause__ or exc}") from None
    else:
        ds = load_dataset(path, name=entry.name, data_dir=entry.data_dir, data_files=entry.data_files,
                          split=entry.split, streaming=streaming)
        first = next(iter(ds), None) if streaming else None
    if (first is None) if streaming else len(ds) == 0:
        raise UsageError(f"{where}: the dataset has no rows")
    columns = list(first) if streaming else ds.column_names
    if entry.columns is not None:
        missing = [c for c in entry.columns if c not in columns]
        if missing:
            raise UsageError(f"{where}: columns: {missing[0]!r} is not a column of the dataset ({columns})")
        ds, columns = ds.select_columns(list(entry.columns)), list(entry.columns)
    return ds, columns


def _csv_as_text(path: str) -> dict:
    """For a CSV file: read every cell as the text it is (pandas would turn an answer "72" into an int and "None"
    into a missing value); the score column's numbers are parsed by ``_csv_number``."""
    if not path.lower().endswith(".csv"):
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])
    return {"features": Features({name: Value("string") for name in header}), "keep_default_na": False}


def _csv_number(value):
    """A CSV cell as a score: a numeric string is its number, an empty cell missing; anything else unchanged."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            return float(text)
        except ValueError:
            return value
    return value


def check_rows(ds: Dataset, fmt: str, where: str) -> None:
    """Every row has every field its format reads, with the right type; else a UsageError naming the first bad
    row and its column. Then warn about rows whose completion is empty (they train on end-of-turn tokens only);
    most rows empty is almost surely a wrong column or format, an error."""
    bad, empty = [], []
    for index, row in enumerate(ds):
        problem = row_problem(row, fmt)
        if problem is not None:
            bad.append((index, problem))
        elif not completion_text(row, fmt).strip():
            empty.append(index)
    if bad:
        index, problem = bad[0]
        more = f" ({len(bad)} bad rows in all: {_first_rows([i for i, _ in bad])})" if len(bad) > 1 else ""
        raise UsageError(f"{where}: row {index} (0-based), {problem} (format {fmt!r}){more}")
    if empty:
        share = len(empty) / len(ds)
        message = (f"{where}: {len(empty)} of {len(ds)} rows ({share:.0%}) have an empty completion (0-based rows "
                   f"{_first_rows(empty)}); they train on the end-of-turn tokens only")
        if share > 0.5:
            raise UsageError(message + ". With most rows like that the format or column is almost surely wrong "
                             f"(format {fmt!r}); fix the data or drop those rows")
        logger.warning(message)


def _first_rows(rows: list[int], n: int = 10) -> str:
    return ", ".join(str(r) for r in rows[:n]) + (", ..." if len(rows) > n else "")


def check_scores(
    values, column: str, where: str, *, fill: float | None, value_range: tuple[float, float]
) -> np.ndarray:
    """Scores as floats, or a ValueError naming ``where``, the row and the column of the first bad one."""
    out = np.empty(len(values), dtype=np.float64)
    bad: list[tuple[int, str]] = []
    for i, v in enumerate(values):
        v, problem = _score_problem(v, fill, value_range)
        if problem is None:
            out[i] = v
        else:
            bad.append((i, problem))
    if bad:
        i, problem = bad[0]
        more = f" ({len(bad)} bad rows in all: {', '.join(str(r) for r, _ in bad[:10])}{', ...' if len(bad) > 10 else ''})"
        raise UsageError(f"{where}: row {i} (0-based), column {column!r}: {problem}{more if len(bad) > 1 else ''}")
    return out


def _score_problem(v, fill: float | None, value_range: tuple[float, float]) -> tuple[float | None, str | None]:
    """(the score, None), or (None, what is wrong with it)."""
    low, high = value_range
    if v is None and fill is not None:
        v = fill
    if v is None:
        return None, "missing value (set missing_uncertainty to a score to fill it)"
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return None, f"{v!r} is not a number"
    if not math.isfinite(v):
        return None, f"{v} is not finite"
    if v < 0:
        return None, f"{v} is negative"
    if not low <= v <= high:
        return None, f"{v} lies outside the declared range [{low:g}, {high:g}]"
    return float(v), None


def _score_column(args) -> tuple[str | None, tuple[float, float]]:
    """Which column the strategy reads and its allowed range (None: the strategy reads no column)."""
    if args.smoothing_strategy == "explicit":
        return args.smoothing_column, (0.0, args.smoothing_max)
    if args.smoothing_strategy in ("uncertainty", "linear"):
        return args.uncertainty_column, tuple(args.uncertainty_range)
    return None, (0.0, 0.0)


def read_scores(dataset: Dataset, args, where: str, numeric_strings: bool = False) -> np.ndarray | None:
    """The checked score column the strategy needs, or None for 'constant'/'none'.

    ``numeric_strings`` (CSV files, where a column with one non-numeric cell is read as text): "83.0" is 83.0."""
    column, value_range = _score_column(args)
    if column is None:
        return None
    if column not in dataset.column_names:
        raise UsageError(
            f"{where}: no column {column!r} (smoothing_strategy={args.smoothing_strategy!r}); the columns are "
            f"{dataset.column_names}. Score the data with `ual score`, or set the column name in the recipe."
        )
    fill = args.missing_fill if args.smoothing_strategy != "explicit" else None
    values = dataset[column]
    if numeric_strings:
        values = [_csv_number(v) for v in values]
    return check_scores(values, column, where, fill=fill, value_range=value_range)


def load_mixture(entries: list[UALDatasetConfig], args, streaming: bool = False) -> Dataset | IterableDataset:
    """Load, convert and check every entry, then mix: TRL-shaped rows plus the score and source columns.

    ``streaming`` (TRL's ``dataset_streaming``) gives an IterableDataset: only the first row of each entry is read
    here; the others are checked as they stream past (a bad row stops the run, naming its file and row)."""
    if not entries:
        raise UsageError("the recipe has no `datasets:` entries to train on")
    if streaming:
        return _stream_mixture(entries, args)
    column, _ = _score_column(args)
    loaded, shapes = [], {}
    for i, entry in enumerate(entries):
        where = f"datasets[{i}] ({entry.path})"
        ds, columns = _load_one(entry, where)
        fmt = resolve_format(entry.format, columns, where)
        check_rows(ds, fmt, where)
        if column is not None:
            from_csv = entry.path.lower().endswith(".csv")
            scores = read_scores(ds, args, where, numeric_strings=from_csv)
            if from_csv:  # CSV cells are read as text: keep the checked numbers instead
                ds = ds.remove_columns(column).add_column(column, scores.tolist())
        keep = output_columns(fmt)
        shapes[where] = keep
        source = entry.source or entry.path
        extra = [c for c in (column,) if c is not None]
        ds = ds.map(
            lambda row: {**convert(row, fmt), SOURCE: source},
            remove_columns=[c for c in ds.column_names if c not in extra],
            desc=f"Converting {source} ({fmt})",
        )
        loaded.append(ds)
    if len(set(shapes.values())) > 1:
        loaded = _to_messages(loaded, list(shapes), args)
    fractions = [e.fraction for e in entries]
    if any(f is not None for f in fractions):
        if any(f is None for f in fractions):
            raise UsageError("`fraction` must be set on every entry of `datasets:` or on none")
        weights = [f / sum(fractions) for f in fractions]
        total = min(len(ds) / w for ds, w in zip(loaded, weights) if w > 0)
        loaded = [ds.select(range(round(w * total))) for ds, w in zip(loaded, weights)]
    return concatenate_datasets(loaded)


def _stream_mixture(entries: list[UALDatasetConfig], args) -> IterableDataset:
    """``load_mixture`` for streamed entries: each row is checked (shape and score) and converted as it is read."""
    if any(e.fraction is not None for e in entries):
        raise UsageError("`fraction` needs each dataset's size, which a stream does not have (as in TRL): drop it, "
                         "or set dataset_streaming: false")
    column, value_range = _score_column(args)
    fill = args.missing_fill if args.smoothing_strategy != "explicit" else None
    loaded, shapes = [], {}
    for i, entry in enumerate(entries):
        where = f"datasets[{i}] ({entry.path})"
        ds, columns = _load_one(entry, where, streaming=True)
        fmt = resolve_format(entry.format, columns, where)
        if column is not None and column not in columns:
            raise UsageError(f"{where}: no column {column!r} (smoothing_strategy={args.smoothing_strategy!r}); the "
                             f"columns are {columns}. Score the data with `ual score`, or set the column name.")
        shapes[where] = output_columns(fmt)
        from_csv = entry.path.lower().endswith(".csv")

        def checked(row, index, where=where, fmt=fmt, source=entry.source or entry.path, from_csv=from_csv):
            problem = row_problem(row, fmt)
            if problem is not None:
                raise UsageError(f"{where}: row {index} (0-based), {problem} (format {fmt!r})")
            out = {**convert(row, fmt), SOURCE: source}
            if column is not None:
                value = _csv_number(row[column]) if from_csv else row[column]
                value, problem = _score_problem(value, fill, value_range)
                if problem is not None:
                    raise UsageError(f"{where}: row {index} (0-based), column {column!r}: {problem}")
                out[column] = value
            return out

        loaded.append(ds.map(checked, with_indices=True, remove_columns=columns))
    if len(set(shapes.values())) > 1:
        raise UsageError("the streamed datasets of a mixture must share one shape after conversion, got "
                         + "; ".join(f"{k}: {'/'.join(v)}" for k, v in shapes.items())
                         + " (mixing shapes needs every row up front: set dataset_streaming: false)")
    return concatenate_datasets(loaded)


def _to_messages(loaded: list[Dataset], names: list[str], args) -> list[Dataset]:
    """Mix ``messages`` with conversational prompt/completion data by turning the latter into messages.

    Only with ``assistant_only_loss``: it then trains exactly the completion tokens, as completion-only loss
    would have; without it the prompts would silently start counting in the loss.
    """
    shapes = {name: ds.column_names for name, ds in zip(names, loaded)}
    if not args.assistant_only_loss or any("text" in cols for cols in shapes.values()):
        raise UsageError(
            "the datasets of a mixture must share one shape after conversion, got "
            + "; ".join(f"{k}: {'/'.join(c for c in v if c in ('messages', 'prompt', 'completion', 'text'))}" for k, v in shapes.items())
            + ". To mix conversations with prompt/completion data set `assistant_only_loss: true` (needs a chat "
            "template with {% generation %} markers); the prompt/completion rows are then trained as messages."
        )
    out = []
    for name, ds in zip(names, loaded):
        if "messages" not in ds.column_names:
            first = ds[0]
            if isinstance(first["prompt"], str):
                raise UsageError(f"{name}: plain-text prompt/completion rows cannot be mixed with conversations")
            ds = ds.map(lambda row: {"messages": row["prompt"] + row["completion"]}, remove_columns=["prompt", "completion"])
        out.append(ds)
    return out


@dataclass
class SmoothingReport:
    """What the mapping did, logged at start and saved next to the model (``mean``: the fitted mean eps over the
    samples, a number for tools; ``overall``: the same summary in words)."""

    mapping: dict
    overall: str
    per_source: dict[str, dict]
    mean: float | None = None

    def to_dict(self) -> dict:
        return {"mapping": self.mapping, "mean": self.mean, "overall": self.overall, "per_source": self.per_source}


def _fit(scores, args) -> SmoothingMap:
    """The mapping the recipe's smoothing keys ask for, fitted on ``scores`` (None: a strategy that reads none)."""
    return fit_smoothing(scores, args.smoothing_strategy, target_mean=args.smoothing_mean,
                         smoothing_min=args.smoothing_min, smoothing_max=args.smoothing_max,
                         uncertainty_range=tuple(args.uncertainty_range))


def attach_smoothing(
    dataset: Dataset, args, where: str, fitted: SmoothingMap | None = None
) -> tuple[Dataset, SmoothingMap, SmoothingReport]:
    """Add the per-sample eps column. Fits the mapping on ``dataset`` unless ``fitted`` is given (eval data)."""
    scores = read_scores(dataset, args, where)
    if fitted is None:
        fitted = _fit(scores, args)
    eps = fitted(scores if scores is not None else np.zeros(len(dataset)))
    if SAMPLE_SMOOTHING in dataset.column_names:
        dataset = dataset.remove_columns(SAMPLE_SMOOTHING)
    dataset = dataset.add_column(SAMPLE_SMOOTHING, eps.astype(np.float32).tolist())
    per_source = {}
    if SOURCE in dataset.column_names:
        sources = np.asarray(dataset[SOURCE])
        for name in dict.fromkeys(sources.tolist()):
            sel = eps[sources == name]
            per_source[name] = {
                "rows": int(sel.size),
                "smoothing_mean": float(sel.mean()),
                "smoothing_min": float(sel.min()),
                "smoothing_max": float(sel.max()),
                **({"uncertainty_mean": float(scores[sources == name].mean())} if scores is not None else {}),
            }
    return dataset, fitted, SmoothingReport(fitted.to_dict(), summarize(eps), per_source, float(eps.mean()))


def attach_smoothing_stream(dataset: IterableDataset, args, where: str, fitted: SmoothingMap | None = None):
    """``attach_smoothing`` for a streamed (``IterableDataset``) set: (dataset, mapping, report, (rows, eps sum)).

    Only ``uncertainty`` needs a statistic of the whole set (the mean score): it is taken from one pass over the
    score column before training, and every score is checked in that pass. The other strategies, and eval sets
    (which apply the training set's mapping), read each row's score as it streams past; a bad score then stops
    the run at that row, naming it."""
    column, value_range = _score_column(args)
    fill = args.missing_fill if args.smoothing_strategy != "explicit" else None
    counted = (0, 0.0)
    scores = None
    if fitted is None:
        if args.smoothing_strategy == "uncertainty":
            if column not in (dataset.column_names or [column]):
                raise UsageError(f"{where}: no column {column!r} (smoothing_strategy='uncertainty'); the columns are "
                                 f"{dataset.column_names}")
            logger.info("%s is streamed: one pass over its %r column to fit the mapping", where, column)
            values = [row[column] for row in dataset.select_columns([column])]
            scores = check_scores(values, column, where, fill=fill, value_range=value_range)
        fitted = _fit(scores, args)  # only 'uncertainty' reads the scores
        if scores is not None:
            eps = fitted(scores)
            counted = (int(eps.size), float(eps.sum()))

    def add_eps(row, index):
        if column is None:
            return {SAMPLE_SMOOTHING: float(fitted(0.0))}
        value, problem = _score_problem(row.get(column), fill, value_range)
        if problem is not None:
            raise UsageError(f"{where}: row {index} (0-based), column {column!r}: {problem}")
        return {SAMPLE_SMOOTHING: float(fitted(value))}

    overall = summarize(fitted(scores)) if scores is not None else "streamed: eps from the mapping, row by row"
    report = SmoothingReport(fitted.to_dict(), overall, {}, float(fitted(scores).mean()) if scores is not None else None)
    return dataset.map(add_eps, with_indices=True), fitted, report, counted


def applied_smoothing(dataset: Dataset) -> dict:
    """The mean eps that training applies, both ways, over the tokenised (truncated) set: per sample, what
    ``loss_normalization: sample`` applies, and per trained token, what ``token`` applies (long answers weigh
    more, so it differs from the mapping's mean whenever eps and answer length go together)."""

    def count(batch):  # trained positions after the causal shift: the first label is never predicted
        return {"n": [sum(1 for label in labels[1:] if label != -100) for labels in batch["labels"]]}

    n = np.asarray(dataset.map(count, batched=True, remove_columns=dataset.column_names,
                               desc="Counting trained tokens")["n"], dtype=np.float64)
    eps = np.asarray(dataset[SAMPLE_SMOOTHING], dtype=np.float64)
    trained = n > 0
    return {
        "sample_mean": float(eps[trained].mean()) if trained.any() else 0.0,
        "token_mean": float((eps * n).sum() / n.sum()) if trained.any() else 0.0,
        "samples": int(trained.sum()),
        "tokens": int(n.sum()),
    }


def expand_smoothing(dataset: Dataset, num_proc: int | None = None) -> Dataset:
    """Per-sample eps -> per-token ``smoothing`` list aligned with ``input_ids`` (after truncation)."""

    def per_token(batch):
        return {
            TOKEN_SMOOTHING: [[eps] * len(ids) for eps, ids in zip(batch[SAMPLE_SMOOTHING], batch["input_ids"])]
        }

    columns = dataset.column_names
    if columns is None:  # a streamed set whose columns are not declared: read them off its first row
        columns = list(next(iter(dataset)).keys())
    keep = [c for c in ("input_ids", "labels", "seq_lengths") if c in columns]
    extra = {"num_proc": num_proc, "desc": "Expanding smoothing to tokens"} if isinstance(dataset, Dataset) else {}
    return dataset.map(per_token, batched=True, remove_columns=[c for c in columns if c not in keep], **extra)


@dataclass
class SmoothingCollator(DataCollatorForLanguageModeling):
    """TRL's language-modeling collator plus a float ``smoothing`` tensor shaped like ``input_ids``.

    Padded exactly like ``labels`` (0.0 on padding) or flattened with them under padding-free.
    """

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        try:
            eps = [torch.tensor(ex[TOKEN_SMOOTHING], dtype=torch.float32) for ex in examples]
        except KeyError:
            raise KeyError(
                f"a training example has no {TOKEN_SMOOTHING!r} column: the dataset was not prepared by UALTrainer "
                "(with `skip_prepare_dataset`, add a per-token smoothing list aligned with input_ids)"
            ) from None
        if self.padding_free:
            eps = [torch.cat(eps)]
        batch[TOKEN_SMOOTHING] = pad(
            eps, padding_value=0.0, padding_side="right", pad_to_multiple_of=self.pad_to_multiple_of
        )
        if batch[TOKEN_SMOOTHING].shape != batch["input_ids"].shape:  # a bug guard: misaligned data trains wrong
            raise RuntimeError(
                f"smoothing {tuple(batch[TOKEN_SMOOTHING].shape)} and input_ids {tuple(batch['input_ids'].shape)} "
                "are not aligned"
            )
        return batch


def trained_token_counts(dataset, collator, vocab_size: int, batch_size: int = 256) -> torch.Tensor:
    """How often each token id is a trained label (label != -100 after the causal shift) when ``collator`` batches
    the prepared ``dataset``: exactly the positions the loss head fits, whatever the masking or packing."""
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    for start in range(0, len(dataset), batch_size):
        rows = dataset.select(range(start, min(start + batch_size, len(dataset)))).to_list()
        labels = collator(rows)["labels"][:, 1:]
        trained = labels[labels != -100]
        if trained.numel() and int(trained.max()) >= vocab_size:
            raise UsageError(f"label token id {int(trained.max())} is outside the model's vocabulary of {vocab_size}")
        counts += torch.bincount(trained, minlength=vocab_size)
    return counts
