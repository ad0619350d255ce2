"""The `ual` console command dispatches to its subcommands."""

import pytest

from ual.cli import main


def test_help_and_unknown_command(capsys):
    assert main(["--help"]) == 0 and "ual train" not in capsys.readouterr().err
    assert main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err


def test_train_help_lists_smoothing_keys(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "--smoothing_strategy" in out and "--model_name_or_path" in out and "--overwrite_output_dir" in out


def test_train_without_recipe_says_how_to_call_it():
    with pytest.raises(SystemExit, match="RECIPE.yaml"):
        main(["train"])
