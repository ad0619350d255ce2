"""``ual train RECIPE.yaml [OVERLAY.yaml ...] [--key value ...] [--dry-run]``: build and run ``accelerate launch``.

Like ``trl sft``, the recipe may name its launch setup: ``accelerate_config`` (a file name from
accelerate_configs/, one of TRL's short names such as ``zero3`` or ``fsdp2``, or a path) and ``num_processes``.
The same keys given as flags (``--num_processes 2``), and accelerate's multi-node flags (``--num_machines``,
``--machine_rank``, ``--main_process_ip``, ``--main_process_port``), go to ``accelerate launch``, never to the ranks.
The exact command is printed, then run; ``--dry-run`` only prints it. Before launching, the recipe, the data and the output folder are checked
here once; stopping ``ual train`` (Ctrl-C, SIGTERM) stops every rank it launched (``ual.processes``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

import yaml

from .errors import UsageError, debug_requested, report
from .files import shipped
from .processes import run_launcher
from .recipe import load_recipe, split_argv

# The shipped accelerate_configs/ (wheel or checkout), then one in the current folder; a path works from anywhere.
CONFIG_DIRS = (shipped("accelerate_configs"), Path.cwd() / "accelerate_configs")
# Flags of `ual train` that belong to `accelerate launch` (recipe keys first, then accelerate's multi-node flags).
LAUNCH_FLAGS = ("accelerate_config", "num_processes", "num_machines", "machine_rank", "main_process_ip",
                "main_process_port")


def trl_configs() -> dict[str, Path]:
    """TRL's own accelerate configs by their short names (``zero1`` ... ``fsdp2``), as ``trl sft`` resolves them."""
    import importlib.util

    spec = importlib.util.find_spec("trl")
    folder = Path(spec.origin).parent / "accelerate_configs" if spec and spec.origin else None
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder and folder.is_dir() else {}


def split_launch_flags(flags: list[str]) -> tuple[dict, list[str]]:
    """(``accelerate launch`` settings given as flags, the flags left for the ranks). ``--key value`` and
    ``--key=value`` both work; a launch flag without a value is one clear error."""
    launch, rest, i = {}, [], 0
    while i < len(flags):
        name, _, inline = flags[i].partition("=")
        key = name[2:] if name.startswith("--") else None
        if key not in LAUNCH_FLAGS:
            rest.append(flags[i])
            i += 1
            continue
        if inline:
            launch[key], i = inline, i + 1
        elif i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            launch[key], i = flags[i + 1], i + 2
        else:
            raise UsageError(f"{name} needs a value")
    return launch, rest


def known_configs() -> list[str]:
    names = set()
    for folder in CONFIG_DIRS:
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)


def resolve_config(name: str) -> Path:
    """A config name (``deepspeed_zero3``) or a path to an accelerate config file."""
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml") or "/" in name:
        if not path.is_file():
            raise UsageError(f"accelerate_config: {name} does not exist")
        return path
    for folder in CONFIG_DIRS:
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    trl = trl_configs()
    if name in trl:  # TRL's short names, as `trl sft --accelerate_config zero3` resolves them
        return trl[name]
    raise UsageError(f"accelerate_config: unknown name {name!r}; this repository's: {', '.join(known_configs())}; "
                     f"TRL's: {', '.join(trl) or 'none found'}; or a path to a config file")


def _shown(path: Path) -> str:
    """A path as the printed command gives it: relative when it lies under the current folder."""
    return os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd()) else str(path)


def deepspeed_json(config: dict, config_path: Path) -> Path | None:
    """The DeepSpeed JSON an accelerate config names (``deepspeed_config.deepspeed_config_file``), relative to the
    config file, so a shipped or copied config works from any folder; else relative to the current folder (what
    accelerate itself does). None when the config names none."""
    name = (config.get("deepspeed_config") or {}).get("deepspeed_config_file")
    if not name:
        return None
    for candidate in (config_path.parent / Path(name).expanduser(), Path(name).expanduser()):
        if candidate.is_file():
            return candidate.resolve()
    raise UsageError(f"{config_path}: deepspeed_config_file {name} exists neither next to the config "
                     f"({config_path.parent}) nor in the current folder ({Path.cwd()})")


def check_devices(config: dict, num_processes: int) -> None:
    """A single-machine GPU config cannot start more processes than there are GPUs."""
    if config.get("use_cpu") or config.get("num_machines", 1) != 1:
        return
    import torch

    available = torch.cuda.device_count()
    if num_processes > available:
        raise UsageError(
            f"num_processes={num_processes} but this machine has {available} GPU(s); lower num_processes, "
            "or use accelerate_configs/cpu_ddp.yaml to try the distributed path on a CPU"
        )


def build_command(argv: list[str]) -> tuple[list[str], dict | None, int | None]:
    """The ``accelerate launch`` command for a ``ual train`` command line; also the config and process count."""
    recipes, flags = split_argv(argv)
    if not recipes:
        raise SystemExit("usage: ual train RECIPE.yaml [OVERLAY.yaml ...] [--key value ...] [--dry-run]")
    given, flags = split_launch_flags(flags)
    launcher = {**load_recipe(recipes).launcher, **given}  # a flag wins over the recipe, like any other key
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    cmd = [accelerate, "launch"] if accelerate else [sys.executable, "-m", "accelerate.commands.launch"]
    config = None
    if "accelerate_config" in launcher:
        path = resolve_config(str(launcher["accelerate_config"]))
        config = yaml.safe_load(path.read_text()) or {}
        cmd += ["--config_file", _shown(path)]
        json_file = deepspeed_json(config, path)
        if json_file is not None:  # accelerate would read the config's own entry relative to the current folder
            cmd += ["--deepspeed_config_file", _shown(json_file)]
    num_processes = launcher.get("num_processes")
    if num_processes is not None:
        try:
            num_processes = int(num_processes)
        except ValueError:
            raise UsageError(f"num_processes: {num_processes!r} is not a whole number") from None
        cmd += ["--num_processes", str(num_processes)]
    elif config is not None:
        num_processes = config.get("num_processes")
    for key in LAUNCH_FLAGS[2:]:
        if key in launcher:
            cmd += [f"--{key}", str(launcher[key])]
            if config is not None and key == "num_machines":
                config = {**config, "num_machines": int(launcher[key])}
    return [*cmd, "-m", "ual.train", *recipes, *flags], config, num_processes


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    dry_run = "--dry-run" in argv
    argv = [a for a in argv if a != "--dry-run"]
    try:
        cmd, config, num_processes = build_command(argv)
        if not dry_run:
            if config is not None and num_processes is not None:
                check_devices(config, int(num_processes))
            check_before_launch(cmd[cmd.index("ual.train") + 1:])
    except UsageError as err:
        if debug_requested():
            raise
        return report("ual train", err)
    printable = shlex.join(["accelerate", "launch", *cmd[2:]] if cmd[1] == "launch" else cmd)
    print(printable, flush=True)
    if dry_run:
        return dry_run_checks(cmd[cmd.index("ual.train") + 1:])
    return run_launcher(cmd)


def dry_run_checks(argv: list[str]) -> int:
    """What ``--dry-run`` checks besides building the command, reading only: the recipe's keys and values, the
    model (local folder, cache or hub), the output folder and every local data path. No data or model is loaded."""
    from .data import check_data_paths
    from .train import preflight

    import torch

    if not torch.cuda.is_available():  # a login node: check the recipe as if on a CPU (bf16 would refuse to parse)
        print("dry run: no GPU here, so the recipe is checked with --use_cpu true", flush=True)
        argv = [*argv, "--use_cpu", "true"]
    try:
        run = preflight(argv)
        check_data_paths(run.data_args.datasets)
    except UsageError as err:
        if debug_requested():
            raise
        return report("ual train", err)
    print("dry run: recipe keys, model, output folder and data paths checked; nothing was launched", flush=True)
    return 0


def check_before_launch(argv: list[str]) -> None:
    """The checks every rank would run before its model loads, once, here: a mistake in the recipe, the data
    or the output folder is one line before any process starts, not one per rank inside accelerate's report."""
    import datasets

    from .data import attach_smoothing
    from .train import load_data, preflight

    datasets.disable_progress_bars()  # the ranks show them; here they would come before the command line
    run = preflight(argv)
    dataset, _ = load_data(run)
    attach_smoothing(dataset, run.training_args, "train_dataset")  # an unreachable smoothing_mean fails here


if __name__ == "__main__":
    sys.exit(main())
