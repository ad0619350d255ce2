"""``ual score`` command line: bad input fails early and clearly, outputs, plots, templates, sources."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from judge_server import JudgeServer

from ual.score.cli import add_parser, main

KEY = "sk-test-cli-0123456789"
FAST = ["--timeout", "0.5", "--backoff-base", "0.01", "--backoff-max", "0.05", "--max-retries", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    for name in ("OPENAI_BASE_URL", "UAL_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    with JudgeServer() as s:
        yield s


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


ROWS = [
    {"question": "q010 2+2?", "answer": "4", "source": "gsm8k"},
    {"instruction": "q080 write a poem", "output": "roses", "source": "alpaca"},
    {"question": "q020 3+3?", "answer": "6", "source": "gsm8k"},
]


def run(tmp_path, server, *flags, rows=ROWS, output="out.jsonl"):
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    return main([str(src), "-o", str(tmp_path / output), "--model", "judge-1", "--base-url", server.url, *FAST, *flags])


def error_of(capsys):
    return capsys.readouterr().err


# --- bad input: clear message, exit 2, nothing asked -------------------------------------------------------


def test_missing_input_file(tmp_path, server, capsys):
    assert main([str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.jsonl"), "--model", "m",
                 "--base-url", server.url]) == 2
    assert "input file not found" in error_of(capsys) and server.requests == []


def test_unknown_columns_and_unknown_format(tmp_path, server, capsys):
    assert run(tmp_path, server, rows=[{"foo": 1}, {"foo": 2}]) == 2
    assert "cannot tell the dataset format" in error_of(capsys)
    assert run(tmp_path, server, "--format", "sharegpt") == 2
    assert "unknown format 'sharegpt'" in error_of(capsys)
    assert run(tmp_path, server, "--format", "messages") == 2
    assert "needs column(s) ['messages']" in error_of(capsys)
    assert server.requests == []


def test_row_that_does_not_match_its_format(tmp_path, server, capsys):
    rows = [{"conversations": [{"from": "human", "value": "hi"}]}, {"conversations": [{"speaker": "x"}]}]
    assert run(tmp_path, server, rows=rows) == 2
    assert "row 1 (0-based), column 'conversations', turn 0, key 'from': null" in error_of(capsys)


def test_output_that_cannot_be_written(tmp_path, server, capsys):
    (tmp_path / "blocker").write_text("a file, not a folder")
    assert run(tmp_path, server, output="blocker/out.jsonl") == 2
    assert "cannot write the output" in error_of(capsys)
    assert run(tmp_path, server, output="out.tsv") == 2
    assert "unsupported type" in error_of(capsys)
    assert server.requests == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write to read-only folders")
def test_output_in_a_read_only_folder(tmp_path, server, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert run(tmp_path, server, output="locked/out.jsonl") == 2
    finally:
        locked.chmod(0o700)
    assert "cannot write the output" in error_of(capsys) and server.requests == []


def test_missing_model_key_and_bad_flags(tmp_path, server, capsys, monkeypatch):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    assert main([str(src), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "needs a model" in error_of(capsys)
    monkeypatch.delenv("OPENAI_API_KEY")
    assert main([str(src), "-o", str(tmp_path / "o.jsonl"), "--model", "m"]) == 2
    assert "no API key" in error_of(capsys)
    assert run(tmp_path, server, "--concurrency", "0") == 2
    assert "--concurrency must be at least 1" in error_of(capsys)
    monkeypatch.setenv("UAL_JUDGE_MODEL", "env-model")  # a local server needs no key; the model comes from env
    assert main([str(src), "-o", str(tmp_path / "o.jsonl"), "--base-url", server.url, *FAST]) == 0
    assert server.requests[0].body["model"] == "env-model"
    assert server.requests[0].authorization == "Bearer EMPTY"


def test_bad_prompt_template(tmp_path, server, capsys):
    (tmp_path / "t.txt").write_text("no placeholder here")
    assert run(tmp_path, server, "--prompt-template", str(tmp_path / "t.txt")) == 2
    assert "no {sample} placeholder" in error_of(capsys)


# --- outputs -----------------------------------------------------------------------------------------------


def test_parquet_output_plot_and_per_source_histograms(tmp_path, server, capsys):
    assert run(tmp_path, server, "--plot", str(tmp_path / "h.png"), "--target-mean", "0.2",
               output="out.parquet") == 0
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("uncertainty").to_pylist() == [10.0, 80.0, 20.0]
    assert table.column("uncertainty_method").to_pylist() == ["judge:openai:judge-1"] * 3
    assert table.column("source").to_pylist() == ["gsm8k", "alpaca", "gsm8k"]
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stdout = capsys.readouterr().out
    assert "alpaca  n=1 mean=80.0" in stdout and "gsm8k   n=2 mean=15.0" in stdout and "(all)" in stdout
    assert "target mean 0.2): n=3" in stdout and "mean=0.2000" in stdout


def test_unreachable_smoothing_target_is_reported_not_fatal(tmp_path, server, capsys):
    rows = [{"text": "q000 a"}, {"text": "q001 b"}, {"text": "q000 a again"}]
    assert run(tmp_path, server, "--target-mean", "0.9", rows=rows) == 0
    assert "cannot map: target mean smoothing 0.9 is unreachable" in capsys.readouterr().out


def test_custom_template_and_its_version(tmp_path, server):
    template = tmp_path / "t.txt"
    template.write_text('Judge this: {sample}\nAnswer as JSON {"score": <0-99>}.')
    assert run(tmp_path, server, "--prompt-template", str(template)) == 0
    first = server.requests[0].messages[0]["content"]
    assert first.startswith("Judge this: [user]\n") and first.endswith('Answer as JSON {"score": <0-99>}.')
    versions = {r["uncertainty_prompt_version"] for r in read_jsonl(tmp_path / "out.jsonl")}
    assert len(versions) == 1 and versions.pop().startswith("custom:")


def test_limit_scores_only_the_first_rows(tmp_path, server):
    assert run(tmp_path, server, "--limit", "2") == 0
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 2 and len(server.requests) == 2


def test_mixed_shapes_in_one_file_are_rendered_row_by_row(tmp_path, server):
    rows = [{"text": "q001 plain"}, {"messages": [{"role": "user", "content": "q002 hi"}]}]
    assert run(tmp_path, server, rows=rows) == 0
    assert [r["uncertainty"] for r in read_jsonl(tmp_path / "out.jsonl")] == [1.0, 2.0]


def test_existing_uncertainty_columns_are_replaced(tmp_path, server, capsys):
    rows = [{"text": "q005 x", "uncertainty": 99, "uncertainty_method": "old"}]
    assert run(tmp_path, server, rows=rows) == 0
    (row,) = read_jsonl(tmp_path / "out.jsonl")
    assert row["uncertainty"] == 5.0 and row["uncertainty_method"] == "judge:openai:judge-1"
    assert "already has uncertainty, uncertainty_method" in capsys.readouterr().err


def test_dataset_folder_through_datasets(tmp_path, server, capsys):
    folder = tmp_path / "ds"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", ROWS)
    assert main([str(folder), "-o", str(tmp_path / "o.jsonl"), "--model", "m", "--dry-run"]) == 0
    assert "requests to send: 3" in capsys.readouterr().out


# --- wiring ------------------------------------------------------------------------------------------------


def test_add_parser_registers_score_on_a_parent_cli(tmp_path, server):
    parent = argparse.ArgumentParser(prog="ual")
    add_parser(parent.add_subparsers(dest="command"))
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    args = parent.parse_args(["score", str(src), "--output", str(tmp_path / "o.jsonl"), "--model", "m",
                              "--base-url", server.url, *FAST])
    assert args.command == "score" and args.func(args) == 0


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "ual.score", "--help"], capture_output=True, text=True, check=False,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0 and "--judge" in result.stdout and "--prompt-template" in result.stdout


def test_prior_judge(tmp_path, capsys):
    prior = pytest.importorskip("ual.prior")
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    assert main([str(src), "-o", str(tmp_path / "o.jsonl"), "--judge", "prior", "--no-progress"]) == 0
    result = read_jsonl(tmp_path / "o.jsonl")
    assert {r["uncertainty_method"] for r in result} == {prior.PRIOR_METHOD}
    assert [r["uncertainty"] for r in result] == [
        pytest.approx(float(prior.prior_uncertainty(row, row["source"]))) for row in ROWS
    ]
    assert not (tmp_path / "o.jsonl.cache.jsonl").exists()
