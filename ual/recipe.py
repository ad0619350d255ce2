"""Recipe files -> one flat mapping for TRL's parser, plus the launcher's own keys.

A run is a scenario recipe optionally followed by overlays, merged left to right (later keys win):

    python -m ual.train recipes/mixed.yaml recipes/baselines/sft.yaml recipes/variants/qlora.yaml

so a baseline or a variant is written once and shared by every scenario (no copy-paste drift). A file
may also name its parent with ``base: other.yaml`` (relative to itself). ``accelerate_config`` and
``num_processes`` are read by ``ual train`` to build the ``accelerate launch`` command and are not
training arguments. ``output_dir`` defaults to ``outputs/<stem>+<stem>...`` (see ``load_recipe``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import UsageError

LAUNCHER_KEYS = ("accelerate_config", "num_processes")


def _read(path: Path, chain: tuple[Path, ...]) -> list[tuple[Path, dict]]:
    """A recipe file and its ``base:`` ancestors as (file, keys) layers, the farthest ancestor first."""
    path = path.resolve()
    if path in chain:
        raise UsageError(f"recipe {path}: `base:` chain loops back to itself ({' -> '.join(str(p) for p in chain)})")
    if not path.is_file():
        raise UsageError(f"recipe {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"recipe {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"recipe {path} must be a YAML mapping of keys to values")
    base = data.pop("base", None)
    if base is None:
        return [(path, data)]
    return [*_read(path.parent / base, (*chain, path)), (path, data)]


def _merge(into: dict, new: dict) -> dict:
    merged = dict(into)
    for key, value in new.items():
        if key == "env" and isinstance(value, dict):
            merged["env"] = {**merged.get("env", {}), **value}
        else:
            merged[key] = value
    return merged


@dataclass
class Recipe:
    """A merged recipe stack: training keys, ``ual train``'s launcher keys, and the file each key came from."""

    config: dict
    launcher: dict
    origins: dict[str, Path] = field(default_factory=dict)


def load_recipe(paths: list[str | Path]) -> Recipe:
    """Merge recipe files left to right (later keys win).

    ``output_dir``, when no file sets it, is ``outputs/<stem>+<stem>...``; when a file sets it, the stems of the
    overlays after that file are appended, so ``tiny.yaml`` (``outputs/tiny``) + ``baselines/sft.yaml`` trains
    into ``outputs/tiny+sft`` and never into the base recipe's own run.
    """
    if not paths:
        raise UsageError("no recipe given")
    config: dict = {}
    origins: dict[str, Path] = {}
    output_set_by = None  # index of the last command-line file whose stack sets output_dir
    for index, path in enumerate(paths):
        for file, data in _read(Path(path), ()):
            config = _merge(config, data)
            origins.update({key: file for key in data})
            if "output_dir" in data:
                output_set_by = index
    launcher = {key: config.pop(key) for key in LAUNCHER_KEYS if key in config}
    overlays = [Path(p).stem for p in paths[(output_set_by + 1 if output_set_by is not None else 0):]]
    if output_set_by is None:
        config["output_dir"] = "outputs/" + "+".join(overlays)
    elif overlays:
        config["output_dir"] = "+".join([str(config["output_dir"]).rstrip("/"), *overlays])
    return Recipe(config, launcher, origins)


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Leading recipe files (``*.yaml``/``*.yml``, or after ``--config``) and the remaining ``--key value`` flags."""
    recipes, rest = [], list(argv)
    while rest:
        if rest[0] == "--config" and len(rest) > 1:
            recipes.append(rest[1])
            rest = rest[2:]
        elif not rest[0].startswith("-") and rest[0].endswith((".yaml", ".yml")):
            recipes.append(rest.pop(0))
        else:
            break
    return recipes, rest
