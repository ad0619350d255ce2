"""``ual score --batch`` against a real Batch API on 127.0.0.1 (tests/judge_server.py serves files and batches):
the official ``openai`` client uploads, creates, polls and downloads over HTTP, and the answers are read by the
parser live scoring uses. Expired, partly failed and failed batches, unreadable replies, and a run stopped while
its batch is in flight are played out; nothing paid for is asked twice."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from judge_server import expected_score, reply, status
from test_score_openai import FAST, REPO, cached_keys, qrows, read_jsonl, score, server, write_jsonl  # noqa: F401

from ual.score.cli import main

BATCH = ["--batch", "--batch-poll", "0.02"]


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-batch")
    for name in ("OPENAI_BASE_URL", "UAL_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)


def batch_lines(server, file_id):
    return [json.loads(line) for line in server.files[file_id].decode().splitlines()]


def test_one_batch_scores_every_sample_with_the_live_request_body(tmp_path, server):
    s = server()
    s.batch_polls = 3
    rc, out = score(tmp_path, s.url, qrows(6) + qrows(2), *BATCH, "--top-p", "0.9", "--max-tokens", "16")
    assert rc == 0
    assert [r["uncertainty"] for r in read_jsonl(out)] == [float(expected_score(f"q{i:03d}")) for i in (*range(6), 0, 1)]
    assert [c.split()[0] for c in s.batch_requests] == ["upload", "create", "retrieve", "retrieve", "retrieve"]
    (batch,) = s.batches.values()
    lines = batch_lines(s, batch["input_file_id"])
    cache = read_jsonl(str(out) + ".cache.jsonl")
    assert sorted(line["custom_id"] for line in lines) == sorted(r["key"] for r in cache)  # custom_id: the cache key
    assert len(lines) == 6  # duplicates asked once, as live
    body = lines[0]["body"]
    assert (lines[0]["url"], body["model"], body["temperature"], body["top_p"], body["max_tokens"]) == (
        "/v1/chat/completions", "judge-1", 0.0, 0.9, 16)
    # the same body a live request sends
    live = server()
    (tmp_path / "live").mkdir()
    assert score(tmp_path / "live", live.url, qrows(1), "--top-p", "0.9", "--max-tokens", "16")[0] == 0
    assert live.requests[0].body == body
    assert not (tmp_path / "out.jsonl.cache.jsonl.batch.json").exists()  # the record goes with the batch


def test_unreadable_replies_get_a_reminder_batch(tmp_path, server):
    s = server(lambda req: reply("high, I think") if req.key == "q002" and req.n == 1 else None)
    rc, out = score(tmp_path, s.url, qrows(4), *BATCH)
    assert rc == 0
    creates = [c for c in s.batch_requests if c.startswith("create")]
    assert len(creates) == 2
    second = s.batches[creates[1].split()[1]]
    (line,) = batch_lines(s, second["input_file_id"])
    assert line["body"]["messages"][-2] == {"role": "assistant", "content": "high, I think"}  # the reminder turn
    assert read_jsonl(out)[2]["uncertainty"] == float(expected_score("q002"))
    cached = {r["key"]: r for r in read_jsonl(str(out) + ".cache.jsonl")}
    assert any(r["replies"] == ["high, I think", "Score: 2"] for r in cached.values())


def test_partly_failed_batch_keeps_the_successes_and_the_rerun_asks_only_the_failures(tmp_path, server):
    s = server(lambda req: status(500) if req.key in ("q001", "q004") else None)
    rc, out = score(tmp_path, s.url, qrows(6), *BATCH)
    assert rc == 1  # failed samples, listed
    failures = read_jsonl(str(out) + ".failures.jsonl")
    assert sorted(f["rows"][0] for f in failures) == [1, 4]
    assert "HTTP 500" in failures[0]["error"]
    assert cached_keys(str(out) + ".cache.jsonl") == {"q000", "q002", "q003", "q005"}
    again = server()
    rc, out = score(tmp_path, again.url, None, *BATCH)
    assert rc == 0
    (batch,) = again.batches.values()
    assert sorted(line["custom_id"] for line in batch_lines(again, batch["input_file_id"])) == sorted(
        f["key"] for f in failures)
    assert [r["uncertainty"] for r in read_jsonl(out)] == [float(i) for i in range(6)]


def test_an_expired_batch_keeps_what_ran_and_the_rerun_asks_the_rest(tmp_path, server):
    s = server()
    s.batch_end, s.batch_runs = "expired", 3
    rc, out = score(tmp_path, s.url, qrows(8), *BATCH)
    assert rc == 1
    failures = read_jsonl(str(out) + ".failures.jsonl")
    assert len(failures) == 5 and all("expired before this request ran" in f["error"] for f in failures)
    assert cached_keys(str(out) + ".cache.jsonl") == {"q000", "q001", "q002"}
    again = server()
    assert score(tmp_path, again.url, None, *BATCH)[0] == 0
    assert set(again.keys_asked()) == {f"q{i:03d}" for i in range(3, 8)}


def test_a_batch_that_fails_validation_stops_with_its_reason(tmp_path, server, capsys):
    s = server()
    s.batch_end = "failed"
    rc, out = score(tmp_path, s.url, qrows(3), *BATCH)
    assert rc == 2
    err = capsys.readouterr().err
    assert "failed before running (invalid_request: scripted failure); nothing was charged" in err
    assert not (tmp_path / "out.jsonl.cache.jsonl.batch.json").exists()


def test_batch_needs_an_openai_judge(tmp_path, server, capsys):
    rc, _ = score(tmp_path, None, qrows(2), "--batch", "--judge", "hf")
    assert rc == 2 and "--batch sends the requests through the OpenAI Batch API" in capsys.readouterr().err


def test_ctrl_c_while_the_batch_runs_then_the_rerun_resumes_that_batch(tmp_path, server):
    """Stopped while polling: the rerun polls the same batch (one upload, one create in all) instead of paying
    for a second one."""
    s = server()
    s.batch_polls = 10 ** 9  # never finishes while the first run watches it
    src = write_jsonl(tmp_path / "in.jsonl", qrows(5))
    out = tmp_path / "out.jsonl"
    argv = [sys.executable, "-m", "ual.score", str(src), "-o", str(out), "--model", "judge-1", "--base-url", s.url,
            *FAST, *BATCH]
    proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180  # a loaded machine may take a minute to import the child
    while sum(c.startswith("retrieve") for c in s.batch_requests) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    record = json.loads((tmp_path / "out.jsonl.cache.jsonl.batch.json").read_text())
    (batch_id,) = s.batches
    assert record["batch_id"] == batch_id and len(record["keys"]) == 5

    s.batch_polls = 0  # it finishes now
    rc = main([str(src), "-o", str(out), "--model", "judge-1", "--base-url", s.url, *FAST, *BATCH])
    assert rc == 0
    assert [c.split()[0] for c in s.batch_requests].count("create") == 1
    assert [c.split()[0] for c in s.batch_requests].count("upload") == 1
    assert [r["uncertainty"] for r in read_jsonl(out)] == [float(i) for i in range(5)]
    assert not (tmp_path / "out.jsonl.cache.jsonl.batch.json").exists()
