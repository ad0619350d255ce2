"""The `ual` console command dispatches to its subcommands."""

import pytest

from ual.cli import main


def test_help_and_unknown_command(capsys):
    assert main(["--help"]) == 0 and "ual train" not in capsys.readouterr().err
    assert main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err


def test_train_help_is_short_and_help_all_lists_every_key(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and len(out.splitlines()) < 60
    for part in ("RECIPE.yaml", "OVERLAY.yaml", "--dry-run", "--num_processes", "zero3", "--smoothing_strategy",
                 "--loss_normalization", "--overwrite_output_dir", "--help-all"):
        assert part in out, part
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help-all"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and len(out.splitlines()) > 300
    assert "--smoothing_strategy" in out and "--model_name_or_path" in out and "--learning_rate" in out


def test_train_without_recipe_says_how_to_call_it():
    with pytest.raises(SystemExit, match="RECIPE.yaml"):
        main(["train"])
