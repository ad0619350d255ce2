"""The README's two commands stay true: CI runs its test command verbatim, and its demo recipe exists."""

import re

from conftest import REPO


def readme_commands():
    block = re.search(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_install_run_and_test_commands():
    run, test = readme_commands()[:2]
    assert run.startswith("pip install -r requirements.txt") and "python -m ual.train recipes/tiny.yaml" in run
    assert test.startswith("pip install -r requirements.txt") and "python -m pytest" in test
    assert (REPO / "recipes" / "tiny.yaml").exists()


def test_ci_runs_the_readme_test_command_verbatim():
    test = readme_commands()[1]
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test in ci_lines


def test_the_from_python_example_runs_as_written(tmp_path, monkeypatch, tiny_model_path):
    """The README's Python block, executed verbatim in an empty folder that holds the checkout's models/ and a tiny
    random Qwen3-MoE at the path the block names: each trainer trains, the stream fits the same mapping as the
    loaded set, and the MoE run adds the router loss."""
    import shutil

    from transformers import AutoTokenizer

    from test_moe import build

    text = (REPO / "README.md").read_text()
    block = re.search(r"From Python \(.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").symlink_to(REPO / "models", target_is_directory=True)
    moe_path = tmp_path / "path/to/qwen3-moe"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    build("qwen3_moe", tokenizer).save_pretrained(moe_path)
    tokenizer.save_pretrained(moe_path)
    shutil.copy(f"{tiny_model_path}/chat_template.jinja", moe_path / "chat_template.jinja")
    scope: dict = {}
    exec(compile(block, "README.md (From Python)", "exec"), scope)
    trainer, streamed, moe = scope["trainer"], scope["streamed"], scope["moe"]
    assert trainer.state.global_step == streamed.state.global_step == moe.state.global_step == 2
    assert streamed.smoothing_report.mapping == trainer.smoothing_report.mapping
    assert moe.aux_loss_enabled and any("aux_loss" in entry for entry in moe.state.log_history)
