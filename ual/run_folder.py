"""What a training ``output_dir`` holds: a run, its checkpoints, and which checkpoints are complete.

A finished run is days of GPU time, so a new run never writes over one unless told to
(``overwrite_output_dir``), and ``resume_from_checkpoint: true`` resumes from the newest checkpoint that
a kill did not cut short. Every check here only reads, so it runs before the model loads, on every rank.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

logger = logging.getLogger("ual")
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
SETTINGS_FILE = "ual_smoothing.json"
STATE_FILE = "trainer_state.json"  # transformers writes it last in a checkpoint

# A folder holding any of these holds a run (a model, its state, its checkpoints or its evals).
_RUN_FILES = re.compile(
    r"^(trainer_state\.json|ual_smoothing\.json|training_args\.bin|train_results\.json|all_results\.json"
    r"|eval_results\.json|adapter_config\.json|.*\.safetensors|.*\.safetensors\.index\.json|pytorch_model.*\.bin"
    r"|adapter_model\.bin)$"
)
_RUN_DIRS = re.compile(r"^(checkpoint-\d+|eval)$")
# ... and these are the rest of what a run writes, removed with it by overwrite_output_dir.
_RUN_EXTRAS = re.compile(
    r"^(config\.json|generation_config\.json|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json"
    r"|tokenizer\.model|vocab\.json|vocab\.txt|merges\.txt|added_tokens\.json|chat_template\.jinja|chat_template\.json"
    r"|README\.md|runs)$"
)


def run_entries(output_dir: str | os.PathLike) -> list[str]:
    """Names in ``output_dir`` that show a run lives there (empty when there is none, or no folder)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    return [entry.name + ("/" if entry.is_dir() else "") for entry in sorted(folder.iterdir()) if _shows_a_run(entry)]


def _shows_a_run(entry: Path) -> bool:
    return bool((_RUN_DIRS if entry.is_dir() else _RUN_FILES).match(entry.name))


def check_output_dir(output_dir: str, *, overwrite: bool, resume) -> None:
    """Refuse an ``output_dir`` that holds a run, unless the run is resumed or ``overwrite`` is set."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UsageError(f"output_dir {output_dir} is a file, not a folder")
    if resume and overwrite:
        checkpoint = None if resume is True else Path(resume).resolve()
        if checkpoint is None or checkpoint.is_relative_to(Path(output_dir).resolve()):
            raise UsageError(
                f"overwrite_output_dir and resume_from_checkpoint both set: overwriting {output_dir} deletes the "
                "checkpoint the resume needs. Pass one of them"
            )
    if resume or overwrite:
        return
    found = run_entries(output_dir)
    if found:
        shown = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
        raise UsageError(
            f"output_dir {output_dir} already holds a run ({shown}); this run would replace its model and delete its "
            "checkpoints. Continue it with --resume_from_checkpoint true, replace it with --overwrite_output_dir "
            "true, or choose another --output_dir"
        )


def clear_run(output_dir: str) -> None:
    """Delete what a run wrote in ``output_dir`` (so no stale eval or checkpoint survives); keep anything else."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return
    removed, kept = [], []
    for entry in sorted(folder.iterdir()):
        if _shows_a_run(entry) or _RUN_EXTRAS.match(entry.name):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry.name)
        else:
            kept.append(entry.name)
    if removed:
        logger.warning("overwrite_output_dir: removed the previous run from %s (%s)", output_dir, ", ".join(removed))
    if kept:
        logger.warning("overwrite_output_dir: kept %s in %s (not written by a training run)", ", ".join(kept), output_dir)


def checkpoint_problems(folder: str | os.PathLike) -> list[str]:
    """Why ``folder`` cannot be resumed from (empty: complete). Files are checked for presence and readability:
    JSON parses, safetensors and torch files are whole (a kill while saving truncates the file being written)."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    problems = []
    state = folder / STATE_FILE
    if not state.is_file():
        problems.append(f"no {STATE_FILE} (transformers writes it last: the save was interrupted)")
    weights = [p for p in folder.iterdir() if p.name.endswith((".safetensors", ".safetensors.index.json"))
               or re.match(r"^(pytorch_model.*\.bin|adapter_model\.bin|pytorch_model_fsdp_\d+|global_step\d+)$", p.name)]
    if not weights:
        problems.append("no model weights")
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(folder)
        if path.suffix == ".json":
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                problems.append(f"{name} is not valid JSON (cut short)")
            continue
        if path.suffix == ".safetensors" and not _whole_safetensors(path):
            problems.append(f"{name} is truncated")
        elif path.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(path):
            problems.append(f"{name} is truncated")
    for index in folder.glob("*.safetensors.index.json"):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError):
            continue  # reported above
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            problems.append(f"{index.name} names missing shard(s) {', '.join(missing)}")
    if any(folder.glob("global_step*")) and not (folder / "latest").is_file():
        problems.append("DeepSpeed's 'latest' file is missing")
    return problems


def _whole_safetensors(path: Path) -> bool:
    """The header parses and the file is exactly as long as the tensors it declares."""
    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size == 8 + length + end
    except (OSError, ValueError, struct.error, KeyError, TypeError):
        return False


def checkpoint_step(folder: str | os.PathLike) -> int:
    """The global step recorded in a complete checkpoint."""
    return int(json.loads((Path(folder) / STATE_FILE).read_text())["global_step"])


@dataclass
class Resume:
    """Where a resume starts."""

    checkpoint: str
    step: int


def _checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders, newest (highest N) first."""
    found = [p for p in output_dir.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)] if output_dir.is_dir() else []
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)), reverse=True)


def resolve_resume(value, output_dir: str) -> Resume | None:
    """``resume_from_checkpoint`` -> the checkpoint to load, or a UsageError saying what is missing.

    ``True``: the newest complete ``checkpoint-N`` in ``output_dir`` (each incomplete newer one is skipped
    with a warning naming it); a path: that checkpoint, which must be complete.
    """
    if value is None or value is False:
        return None
    if value is True:
        folder = Path(output_dir)
        if not folder.is_dir():
            raise UsageError(f"resume_from_checkpoint true: output_dir {output_dir} does not exist, so there is no "
                             "checkpoint to resume from")
        candidates = _checkpoints(folder)
        if not candidates:
            raise UsageError(f"resume_from_checkpoint true: {output_dir} holds no checkpoint-N folder to resume from")
        for candidate in candidates:
            problems = checkpoint_problems(candidate)
            if not problems:
                return Resume(str(candidate), checkpoint_step(candidate))
            logger.warning("skipping incomplete checkpoint %s: %s", candidate, "; ".join(problems))
        raise UsageError(f"resume_from_checkpoint true: every checkpoint in {output_dir} is incomplete "
                         f"({', '.join(p.name for p in candidates)}); see the warnings above")
    path = Path(os.path.expanduser(str(value)))
    if not path.exists():
        raise UsageError(f"resume_from_checkpoint {value}: no such folder")
    problems = checkpoint_problems(path)
    if problems:
        complete = next((c for c in _checkpoints(path.parent) if not checkpoint_problems(c)), None)
        hint = f"; the newest complete one beside it is {complete}" if complete else ""
        raise UsageError(f"resume_from_checkpoint {value} is an incomplete checkpoint ({'; '.join(problems)}){hint}")
    return Resume(str(path), checkpoint_step(path))
