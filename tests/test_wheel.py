"""ual outside its checkout: shipped recipes by name, their relative paths naming shipped files, DeepSpeed JSON read
relative to its accelerate config, and a real wheel, built and installed into a throwaway folder, that trains the
tiny recipe from an empty folder."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from ual.errors import UsageError
from ual.files import shipped
from ual.launch import build_command, deepspeed_json
from ual.recipe import find_recipe, load_recipe


def test_shipped_recipes_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipes = (REPO / "recipes").resolve()
    assert find_recipe("tiny").resolve() == recipes / "tiny.yaml"
    assert find_recipe("baselines/sft").resolve() == recipes / "baselines" / "sft.yaml"
    assert find_recipe("recipes/mixed.yaml").resolve() == recipes / "mixed.yaml"  # the README's spelling
    (tmp_path / "tiny.yaml").write_text("max_steps: 1\n")
    assert find_recipe("tiny.yaml") == Path("tiny.yaml")  # a file here wins over the shipped one
    with pytest.raises(UsageError, match=r"recipe tinny does not exist here .*shipped: .*baselines/sft.*tiny"):
        find_recipe("tinny")
    with pytest.raises(UsageError, match="no recipe of that name"):
        find_recipe("../pyproject")  # a name cannot reach outside the shipped recipes


def test_a_shipped_recipe_names_shipped_files_and_a_users_overlay_keeps_its_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overlay = tmp_path / "mine.yaml"
    overlay.write_text(yaml.safe_dump({"eval_datasets": [{"path": "held_out.jsonl"}]}))
    config = load_recipe(["tiny", str(overlay)]).config
    assert Path(config["model_name_or_path"]) == (REPO / "models" / "tiny-llama").resolve()
    assert [Path(d["path"]).name for d in config["datasets"]] == ["gsm8k_train_200.jsonl", "alpaca_200.jsonl"]
    assert all(Path(d["path"]).is_absolute() and Path(d["path"]).is_file() for d in config["datasets"])
    assert config["eval_datasets"] == [{"path": "held_out.jsonl"}]  # the user's file, relative to here
    assert config["output_dir"] == "outputs/tiny+mine"  # runs are written here, never into the shipped tree
    monkeypatch.chdir(REPO)  # in the checkout the same recipe reads exactly as written (TRL's rule)
    assert load_recipe(["recipes/tiny.yaml"]).config["model_name_or_path"] == "models/tiny-llama"


def test_deepspeed_json_is_read_relative_to_its_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cmd, config, _ = build_command(["tiny", "--accelerate_config", "deepspeed_zero3"])
    json_file = Path(cmd[cmd.index("--deepspeed_config_file") + 1])
    assert json_file == (REPO / "accelerate_configs" / "deepspeed" / "zero3.json").resolve() and json_file.is_file()
    # a copy of a config with its JSON beside it works from anywhere; a JSON found nowhere is one clear line
    mine = tmp_path / "cluster"
    (mine / "ds").mkdir(parents=True)
    (mine / "ds" / "z.json").write_text("{}")
    assert deepspeed_json({"deepspeed_config": {"deepspeed_config_file": "ds/z.json"}}, mine / "c.yaml") == (
        mine / "ds" / "z.json")
    with pytest.raises(UsageError, match=r"c\.yaml: deepspeed_config_file nope\.json exists neither next to"):
        deepspeed_json({"deepspeed_config": {"deepspeed_config_file": "nope.json"}}, mine / "c.yaml")
    assert deepspeed_json({"distributed_type": "MULTI_GPU"}, mine / "c.yaml") is None


def _copy_source(dest: Path) -> Path:
    """What a wheel is built from, copied, so building writes nothing into the checkout."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, dest / name)
    for name in ("ual", "recipes", "accelerate_configs", "models", "data"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@pytest.mark.slow
def test_the_wheel_trains_the_tiny_recipe_from_an_empty_folder(tmp_path):
    source = _copy_source(tmp_path / "src")
    wheels, site, empty = tmp_path / "wheels", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)], check=True,
                   cwd=tmp_path)
    wheel = next(wheels.glob("ual-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for shipped_file in ("ual/packaged/recipes/tiny.yaml", "ual/packaged/recipes/variants/qlora.yaml",
                         "ual/packaged/accelerate_configs/deepspeed/zero3.json",
                         "ual/packaged/models/tiny-llama/model.safetensors",
                         "ual/packaged/data/sample/alpaca_200.jsonl", "ual/packaged/data/eval/gsm8k_test.jsonl"):
        assert shipped_file in names, shipped_file
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}

    def run(*args):
        proc = subprocess.run(args, cwd=empty, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    where = run(sys.executable, "-c", "import ual, ual.files as f, ual.eval.data as d; "
                "print(ual.__file__); print(f.shipped('recipes')); print(d.GSM8K_TEST)")
    lines = where.strip().splitlines()[-3:]
    assert all(line.startswith(str(site)) for line in lines), lines  # the installed copy, not the checkout
    ual = str(site / "bin" / "ual")
    printed = run(ual, "train", "tiny", "--accelerate_config", "deepspeed_zero3", "--dry-run")
    assert f"--deepspeed_config_file {site}/ual/packaged/accelerate_configs/deepspeed/zero3.json" in printed
    run(ual, "train", "tiny", "--max_steps", "2", "--save_strategy", "no", "--report_to", "none")
    assert (empty / "outputs" / "tiny" / "model.safetensors").is_file()
    assert (empty / "outputs" / "tiny" / "ual_smoothing.json").is_file()
    assert sorted(p.name for p in empty.iterdir()) == ["outputs"]  # nothing else written outside the run
