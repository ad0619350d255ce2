"""Recipe files -> one flat mapping for TRL's parser, plus the launcher's own keys.

A run is a scenario recipe optionally followed by overlays, merged left to right (later keys win):

    python -m ual.train recipes/mixed.yaml recipes/baselines/sft.yaml recipes/variants/qlora.yaml

so a baseline or a variant is written once and shared by every scenario (no copy-paste drift). A file
may also name its parent with ``base: other.yaml`` (relative to itself). ``accelerate_config`` and
``num_processes`` are read by ``ual train`` to build the ``accelerate launch`` command and are not
training arguments. ``output_dir``, when no file sets it, is ``outputs/<stem>+<stem>...``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

LAUNCHER_KEYS = ("accelerate_config", "num_processes")


def _read(path: Path, chain: tuple[Path, ...]) -> dict:
    path = path.resolve()
    if path in chain:
        raise ValueError(f"recipe {path}: `base:` chain loops back to itself ({' -> '.join(str(p) for p in chain)})")
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path} must be a YAML mapping of keys to values")
    base = data.pop("base", None)
    if base is None:
        return data
    parent = _read(path.parent / base, (*chain, path))
    return _merge(parent, data)


def _merge(into: dict, new: dict) -> dict:
    merged = dict(into)
    for key, value in new.items():
        if key == "env" and isinstance(value, dict):
            merged["env"] = {**merged.get("env", {}), **value}
        else:
            merged[key] = value
    return merged


def load_recipe(paths: list[str | Path]) -> tuple[dict, dict]:
    """Merge recipe files left to right; returns (training config, launcher keys)."""
    if not paths:
        raise ValueError("no recipe given")
    config: dict = {}
    for path in paths:
        config = _merge(config, _read(Path(path), ()))
    launcher = {key: config.pop(key) for key in LAUNCHER_KEYS if key in config}
    if "output_dir" not in config:
        config["output_dir"] = "outputs/" + "+".join(Path(p).stem for p in paths)
    return config, launcher


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
