"""Every bad input, tried on the real entry point (``ual.train.cli``, what ``python -m ual.train`` runs): one
``ual train: error:`` line that names the file, the row (0-based) and the column or key, exit code 2, before
the model loads (the model folder is empty: loading it would fail differently) and with nothing written.
"""

import csv
import json
import logging
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, cpu_config, write_jsonl
from ual.data import UALDatasetConfig, load_mixture
from ual.errors import UsageError
from ual.train import cli

EMPTY_MODEL = "empty-model"


def gsm(n=12, **fields):
    return [{"question": f"What is {i} + {i}?", "answer": f"{2 * i}", "uncertainty": 10.0 + i, **fields}
            for i in range(n)]


def chat(n=12):
    return [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"yo {i}"}],
             "uncertainty": 50.0} for i in range(n)]


def recipe(tmp_path, datasets, **extra):
    (tmp_path / EMPTY_MODEL).mkdir(exist_ok=True)
    body = {"model_name_or_path": str(tmp_path / EMPTY_MODEL), "output_dir": str(tmp_path / "out"), "use_cpu": True,
            "bf16": False, "report_to": "none", "datasets": datasets, **extra}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def printed(text: str) -> list[str]:
    """What a person reads on stderr: the lines that are not progress bars."""
    return [line for line in text.splitlines() if line.strip() and "examples/s" not in line and "it/s]" not in line]


def one_error_line(capsys) -> str:
    err = printed(capsys.readouterr().err)
    assert len(err) == 1, err
    assert err[0].startswith("ual train: error: ")
    return err[0]


def fails_cleanly(tmp_path, capsys, argv) -> str:
    assert cli([str(a) for a in argv]) == 2
    assert not (tmp_path / "out").exists(), "nothing is written for a run that cannot start"
    return one_error_line(capsys)


def rows_file(tmp_path, name, rows):
    return write_jsonl(tmp_path / name, rows)


def case_gsm8k_null_answer(tmp_path):
    rows = gsm()
    rows[3]["answer"] = None
    return [{"path": str(rows_file(tmp_path, "g.jsonl", rows)), "format": "gsm8k"}], \
        ["g.jsonl", "row 3 (0-based), column 'answer': null, expected text"]


def case_completion_missing(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": f"c{i}", "uncertainty": 5.0} for i in range(5)]
    del rows[1]["completion"]
    return [{"path": str(rows_file(tmp_path, "pc.jsonl", rows)), "format": "prompt_completion"}], \
        ["pc.jsonl", "row 1 (0-based), column 'completion': null, expected text"]  # JSON lines: absent reads as null


def case_messages_null(tmp_path):
    rows = chat()
    rows[2]["messages"] = None
    return [{"path": str(rows_file(tmp_path, "m.jsonl", rows)), "format": "messages"}], \
        ["m.jsonl", "row 2 (0-based), column 'messages': null, expected a non-empty list of turns"]


def case_turn_content_is_a_number(tmp_path):
    rows = chat()
    rows[5]["messages"][1]["content"] = 7
    return [{"path": str(rows_file(tmp_path, "m.jsonl", rows)), "format": "auto"}], \
        ["m.jsonl", "row 5 (0-based), column 'messages', turn 1, key 'content': int 7, expected text"]


def case_alpaca_input_not_text(tmp_path):
    rows = [{"instruction": f"do {i}", "input": "", "output": f"done {i}", "uncertainty": 60.0} for i in range(4)]
    rows[2]["input"] = ["a", "list"]
    return [{"path": str(rows_file(tmp_path, "a.jsonl", rows)), "format": "alpaca"}], \
        ["a.jsonl", "row 2 (0-based), column 'input': list"]


def case_csv_word_in_the_score_column(tmp_path):
    path = tmp_path / "scores.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["question", "answer", "uncertainty"])
        for i in range(24):
            writer.writerow([f"q{i}", f"{i}", "high" if i == 9 else f"{60 + i}.0"])
    return [{"path": str(path), "format": "gsm8k"}], \
        ["scores.csv", "row 9 (0-based), column 'uncertainty': 'high' is not a number"]


def case_empty_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    return [{"path": str(tmp_path / "empty.jsonl")}], ["empty.jsonl", "the file is empty (0 bytes)"]


def case_blank_lines_only(tmp_path):
    (tmp_path / "blank.jsonl").write_text("\n  \n\n")
    return [{"path": str(tmp_path / "blank.jsonl")}], ["blank.jsonl", "the file has no rows"]


def case_malformed_json_line_10(tmp_path):
    lines = [json.dumps(r) for r in gsm()]
    lines[9] = lines[9][:-5]
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    return [{"path": str(tmp_path / "bad.jsonl"), "format": "gsm8k"}], ["bad.jsonl", "line 10: not valid JSON"]


def case_datasets_is_one_path(tmp_path):
    path = rows_file(tmp_path, "g.jsonl", gsm())
    return str(path), ["datasets: expected a list of entries", "g.jsonl"]


def case_datasets_is_a_list_of_paths(tmp_path):
    path = rows_file(tmp_path, "g.jsonl", gsm())
    return [str(path)], ["datasets[0]: expected a mapping with a 'path' key", "- path: "]


def case_most_completions_empty(tmp_path):
    rows = gsm(answer="  ")
    rows[0]["answer"] = "0"
    return [{"path": str(rows_file(tmp_path, "g.jsonl", rows)), "format": "gsm8k"}], \
        ["g.jsonl", "11 of 12 rows (92%) have an empty completion", "0-based rows 1, 2, 3"]


CASES = [case_gsm8k_null_answer, case_completion_missing, case_messages_null, case_turn_content_is_a_number,
         case_alpaca_input_not_text, case_csv_word_in_the_score_column, case_empty_file, case_blank_lines_only,
         case_malformed_json_line_10, case_datasets_is_one_path, case_datasets_is_a_list_of_paths,
         case_most_completions_empty]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_bad_data_is_one_line_naming_file_row_and_column_before_the_model_loads(tmp_path, capsys, case):
    datasets, expected = case(tmp_path)
    line = fails_cleanly(tmp_path, capsys, [recipe(tmp_path, datasets)])
    for part in expected:
        assert part in line, line
    assert "bad rows in all: 0, 1, 2" not in line, "a bad cell must not make every row of its column bad"


def test_a_few_empty_completions_are_a_warning_with_count_and_rows(tmp_path, caplog):
    rows = gsm()
    rows[4]["answer"] = rows[7]["answer"] = ""
    path = rows_file(tmp_path, "g.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="ual"):
        mixed = load_mixture([UALDatasetConfig(path=str(path), format="gsm8k")], cpu_config(tmp_path))
    assert len(mixed) == 12
    assert "2 of 12 rows (17%) have an empty completion (0-based rows 4, 7)" in caplog.text


def test_misspelt_recipe_key_names_its_file_and_the_nearest_key(tmp_path, capsys):
    data = rows_file(tmp_path, "g.jsonl", gsm())
    base = recipe(tmp_path, [{"path": str(data), "format": "gsm8k"}])
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("smoothing_men: 0.2\n")
    line = fails_cleanly(tmp_path, capsys, [base, overlay])
    assert f"{overlay}: unknown key 'smoothing_men'; did you mean 'smoothing_mean'" in line
    assert "fail_with_unknown_args" not in line


def test_relative_model_path_says_where_it_was_looked_up(tmp_path, capsys, monkeypatch):
    data = rows_file(tmp_path, "g.jsonl", gsm())
    path = recipe(tmp_path, [{"path": str(data), "format": "gsm8k"}], model_name_or_path="models/tiny-lama")
    monkeypatch.chdir(tmp_path)
    line = fails_cleanly(tmp_path, capsys, [path])
    assert "'models/tiny-lama': no such folder (a relative path is looked up from the current folder" in line
    assert str(tmp_path) in line


def test_the_real_command_prints_one_line_and_the_traceback_only_on_request(tmp_path, monkeypatch):
    rows = gsm()
    rows[3]["answer"] = None
    path = recipe(tmp_path, [{"path": str(rows_file(tmp_path, "g.jsonl", rows)), "format": "gsm8k"}])
    proc = subprocess.run([sys.executable, "-m", "ual.train", str(path)], cwd=REPO, capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 2 and printed(proc.stderr) == [
        f"ual train: error: datasets[0] ({tmp_path / 'g.jsonl'}): row 3 (0-based), column 'answer': null, expected "
        "text (format 'gsm8k')"], proc.stderr
    monkeypatch.setenv("UAL_DEBUG", "1")  # the traceback, for a bug report
    with pytest.raises(UsageError, match="row 3"):
        cli([str(path)])
