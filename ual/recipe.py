"""Recipe files -> one flat mapping for TRL's parser, plus the launcher's own keys.

A run is a scenario recipe optionally followed by overlays, merged left to right (later keys win):

    python -m ual.train recipes/mixed.yaml recipes/baselines/sft.yaml recipes/variants/qlora.yaml

so a baseline or a variant is written once and shared by every scenario (no copy-paste drift). A file
may also name its parent with ``base: other.yaml`` (relative to itself). ``accelerate_config`` and
``num_processes`` are read by ``ual train`` to build the ``accelerate launch`` command and are not
training arguments. ``output_dir`` defaults to ``outputs/<stem>+<stem>...`` (see ``load_recipe``).

A recipe is a path or the name of a shipped recipe (``tiny``, ``mixed``, ``baselines/sft``: ``ual.files.shipped``),
so an installed wheel runs ``ual train tiny`` from any folder. Relative paths in a recipe are relative to the current
folder, as in TRL; in a shipped recipe, one that does not exist there names the shipped file (the tiny model, the
sample data, the chat templates) when ual ships it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import UsageError
from .files import shipped

LAUNCHER_KEYS = ("accelerate_config", "num_processes")
PATH_KEYS = ("model_name_or_path", "chat_template_path", "accelerate_config", "dataset_name")


def find_recipe(spec: str | Path) -> Path:
    """A recipe file, or the shipped recipe of that name (``tiny``, ``baselines/sft``, ``recipes/tiny.yaml``)."""
    path = Path(spec).expanduser()
    if path.is_file() or path.is_absolute():
        return path
    name = str(spec) if str(spec).endswith((".yaml", ".yml")) else f"{spec}.yaml"
    recipes = shipped("recipes")
    for candidate in (recipes / name, recipes.parent / name):
        if candidate.is_file() and candidate.resolve().is_relative_to(recipes.resolve()):
            return candidate
    known = sorted(str(p.relative_to(recipes).with_suffix("")) for p in recipes.rglob("*.yaml")
                   if not p.name.startswith("_"))
    raise UsageError(f"recipe {spec} does not exist here ({Path.cwd()}), and ual ships no recipe of that name; "
                     f"shipped: {', '.join(known)}")


def _shipped_path(value):
    """A relative path of a shipped recipe: as given when it exists here, else the shipped file if ual ships it."""
    if not isinstance(value, str) or Path(value).is_absolute() or Path(value).expanduser().exists():
        return value
    candidate = shipped(value)
    return str(candidate) if candidate.exists() else value


def _resolve_shipped_paths(data: dict) -> dict:
    out = {key: _shipped_path(value) if key in PATH_KEYS else value for key, value in data.items()}
    for key in ("datasets", "eval_datasets"):
        if isinstance(out.get(key), list):
            out[key] = [{**entry, "path": _shipped_path(entry.get("path"))} if isinstance(entry, dict) else entry
                        for entry in out[key]]
    return out


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
    recipes = shipped("recipes").resolve()
    for index, path in enumerate(paths):
        for file, data in _read(find_recipe(path), ()):
            if file.is_relative_to(recipes):
                data = _resolve_shipped_paths(data)
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
    """Leading recipes (files or shipped names, or after ``--config``) and the remaining ``--key value`` flags."""
    recipes, rest = [], list(argv)
    while rest:
        if rest[0] == "--config" and len(rest) > 1:
            recipes.append(rest[1])
            rest = rest[2:]
        elif not rest[0].startswith("-"):  # a recipe file or a shipped recipe's name
            recipes.append(rest.pop(0))
        else:
            break
    return recipes, rest
