"""``ual score`` never overwrites the user's data, never pays twice, and never fails after paying.

Each case is tried the way a user meets it, against the real loopback judge (tests/judge_server.py):
two runs on one output, ``-o`` naming the input, rows that cannot be written to the output format or
sent at all, leftovers of a killed run (a temporary output, a torn cache line, a lock file), CSV.
"""

import csv
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from judge_server import JudgeServer

from conftest import REPO
from ual.score.cache import read_cache
from ual.score.cli import main

KEY = "sk-test-safety-0123456789"
FAST = ["--timeout", "5", "--backoff-base", "0.01", "--backoff-max", "0.05", "--max-retries", "1", "--no-progress"]
ROWS = [{"question": f"q{i:03d} what is {i} + {i}?", "answer": f"{2 * i}", "label": f"hand-{i}"} for i in range(6)]


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    for name in ("OPENAI_BASE_URL", "UAL_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def score(src, out, server, *flags):
    return main([str(src), "-o", str(out), "--model", "judge-1", "--base-url", server.url, *FAST, *flags])


def score_process(src, out, server, *flags):
    """``python -m ual.score`` in a process of its own (a second user, a terminal that can be killed)."""
    env = {**os.environ, "OPENAI_API_KEY": KEY, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ual.score", str(src), "-o", str(out), "--model", "judge-1", "--base-url", server.url,
         *FAST, *flags], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout=120.0):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.05)


# --- one run at a time -----------------------------------------------------------------------------------


def test_a_second_run_on_the_same_output_is_refused_at_once_and_names_the_first(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    with JudgeServer(delay=0.4) as server:
        first = score_process(src, out, server, "--concurrency", "1")
        wait_for(lambda: len(server.requests) >= 1)
        assert score(src, out, server) == 2
        err = capsys.readouterr().err
        assert f"pid {first.pid}" in err and "in use by another ual score run" in err and str(out) in err
        # the same cache under another output name is the same answers: refused too
        other = tmp_path / "other.jsonl"
        assert score(src, other, server, "--cache", f"{out}.cache.jsonl") == 2
        assert f"pid {first.pid}" in capsys.readouterr().err and not other.exists()
        first.communicate(timeout=120)
        assert first.returncode == 0
        assert sorted(server.keys_asked().values()) == [1] * len(ROWS), "every sample asked exactly once"
    assert not Path(f"{out}.lock").exists(), "the lock is released when the run ends"


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    with JudgeServer(delay=0.4) as server:
        killed = score_process(src, out, server, "--concurrency", "1")
        wait_for(lambda: len(server.requests) >= 2)
        killed.send_signal(signal.SIGKILL)
        killed.communicate()
        assert Path(f"{out}.lock").exists(), "kill -9 leaves the lock file (the kernel drops the lock itself)"
        answered = len(read_cache(f"{out}.cache.jsonl"))
        asked_before = len(server.requests)
        assert score(src, out, server) == 0
        err = capsys.readouterr().err
        assert "took over" in err and f"pid {killed.pid}" in err
        assert len(server.requests) - asked_before == len(ROWS) - answered, "nothing already answered is asked again"
    assert all(r["uncertainty"] is not None for r in read_jsonl(out))
    assert not Path(f"{out}.lock").exists()


# --- the user's files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink"])
def test_output_equal_to_the_input_is_refused_before_any_request(tmp_path, capsys, monkeypatch, spelling):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    before = src.read_bytes()
    monkeypatch.chdir(tmp_path)
    out = {"same": src, "dotted": Path("./sub/../in.jsonl"), "symlink": tmp_path / "link.jsonl"}[spelling]
    (tmp_path / "sub").mkdir()
    if spelling == "symlink":
        out.symlink_to(src)
    with JudgeServer() as server:
        assert score(src, out, server) == 2
        assert server.requests == []
    assert "is the input file" in capsys.readouterr().err
    assert src.read_bytes() == before, "the input (hand labels included) is untouched"


def test_timestamps_are_written_as_iso_text_and_an_unwritable_column_is_refused_before_paying(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    stamp = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone.utc)
    table = pa.Table.from_pylist([{**row, "collected": stamp} for row in ROWS[:3]])
    src = tmp_path / "in.parquet"
    pq.write_table(table, src)
    with JudgeServer() as server:
        assert score(src, tmp_path / "out.jsonl", server) == 0
        written = read_jsonl(tmp_path / "out.jsonl")
        assert [r["collected"] for r in written] == [stamp.isoformat()] * 3  # the documented rule
        assert all(r["uncertainty"] is not None for r in written)

        blob = tmp_path / "blob.parquet"
        pq.write_table(pa.Table.from_pylist([{**row, "raw": b"\x00\x01"} for row in ROWS[:3]]), blob)
        asked = len(server.requests)
        assert score(blob, tmp_path / "blob.jsonl", server) == 2
        assert len(server.requests) == asked, "refused before any request"
    err = capsys.readouterr().err
    assert "row 0 (0-based), column 'raw'" in err and "bytes has no JSON form" in err


def test_a_lone_surrogate_is_named_by_row_and_column_before_any_request(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    lines = [json.dumps(r) for r in ROWS]
    lines[2] = lines[2].replace('"answer": "4"', '"answer": "4 \\ud800"')
    src.write_text("\n".join(lines) + "\n")
    with JudgeServer() as server:
        assert score(src, tmp_path / "out.jsonl", server) == 2
        assert server.requests == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "row 2 (0-based), column 'answer'" in err[0] and "lone surrogate" in err[0]
    assert not (tmp_path / "out.jsonl").exists()


def test_leftovers_of_a_killed_run_are_cleaned_and_outputs_follow_the_umask(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    # what kill -9 during the output write leaves: a hidden temporary file beside the output
    stale = tmp_path / ".out.jsonl.k2j3h4.tmp"
    stale.write_text('{"half": ')
    unrelated = tmp_path / ".other.jsonl.k2j3h4.tmp"
    unrelated.write_text("not ours")
    # ... and a cache whose last line was torn by kill -9 mid-append
    cache = Path(f"{out}.cache.jsonl")
    cache.write_text('{"key": "abc", "score": 10, "error": null}\n{"key": "torn", "sco')
    previous = os.umask(0o027)
    try:
        with JudgeServer() as server:
            assert score(src, out, server) == 0
            err = capsys.readouterr().err
            assert f"removed {stale}" in err and "removed 1 unreadable line(s)" in err
            assert score(src, out, server) == 0  # the repaired cache reads cleanly: no note, no warning
            assert "unreadable" not in capsys.readouterr().err
            assert len(server.requests) == len(ROWS)
    finally:
        os.umask(previous)
    assert not stale.exists() and unrelated.exists()
    assert all(json.loads(line) for line in cache.read_text().splitlines())
    assert oct(out.stat().st_mode & 0o777) == oct(0o640), "a new output gets the user's umask, not 0600"


# --- CSV, in both commands ------------------------------------------------------------------------------


def test_csv_is_read_and_written_and_the_scores_train(tmp_path):
    from conftest import cpu_config
    from ual.data import UALDatasetConfig, load_mixture

    src = tmp_path / "in.csv"
    with open(src, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["question", "answer", "label"])
        writer.writeheader()
        writer.writerows(ROWS)
    out = tmp_path / "out.csv"
    with JudgeServer() as server:
        assert score(src, out, server) == 0
    with open(out, newline="") as fh:
        written = list(csv.DictReader(fh))
    assert [r["label"] for r in written] == [r["label"] for r in ROWS], "input columns come back as they were"
    assert all(float(r["uncertainty"]) >= 0 for r in written)
    mixed = load_mixture([UALDatasetConfig(path=str(out), format="gsm8k")], cpu_config(tmp_path))
    assert len(mixed) == len(ROWS) and all(isinstance(u, float) for u in mixed["uncertainty"])


def test_nested_values_cannot_go_to_csv_and_are_refused_before_paying(tmp_path, capsys):
    rows = [{"messages": [{"role": "user", "content": "q001 hi"}, {"role": "assistant", "content": "yo"}]}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    with JudgeServer() as server:
        assert score(src, tmp_path / "out.csv", server) == 2
        assert server.requests == []
    assert "column 'messages': a list has no CSV form" in capsys.readouterr().err
