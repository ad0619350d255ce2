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
