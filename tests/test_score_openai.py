"""``ual score`` against a real OpenAI-compatible HTTP server on 127.0.0.1 (tests/judge_server.py).

No mocks: the official ``openai`` client talks HTTP to a scripted server that answers in varied
formats, answers garbage, rate-limits, fails, stalls and drops connections. Timeouts and backoffs
are made tiny with flags so the whole file runs in seconds.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from judge_server import JudgeServer, drop, expected_score, reply, stall, status

from ual.score.cli import main
from ual.score.rubric import REMINDER

KEY = "sk-test-DoNotLeak-7f3a9c1e5b"
FAST = ["--timeout", "0.5", "--backoff-base", "0.01", "--backoff-max", "0.05", "--max-retries", "3", "--no-progress"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    for name in ("OPENAI_BASE_URL", "UAL_JUDGE_MODEL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    """A factory: ``server(script, delay=...)`` starts one; all are stopped at the end."""
    started = []

    def start(script=None, **kwargs):
        s = JudgeServer(script, **kwargs).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def qrows(n, start=0):
    """n prompt/completion rows whose prompts carry the server's key q000, q001, ..."""
    return [{"prompt": f"q{i:03d}: what is {i} + 1?", "completion": str(i + 1)} for i in range(start, start + n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def score(tmp_path, url, rows, *flags, output="out.jsonl"):
    """Run ``ual score`` in-process on ``rows``; returns (exit code, output path)."""
    src = write_jsonl(tmp_path / "in.jsonl", rows) if rows is not None else tmp_path / "in.jsonl"
    out = tmp_path / output
    argv = [str(src), "--output", str(out), "--model", "judge-1", *FAST, *flags]
    if url:
        argv += ["--base-url", url]
    return main(argv), out


# --- answers -------------------------------------------------------------------------------------------

FORMATS = ["Score: {}", "**{}**/99", '{{"score": {}}}', "I'd rate it {}.", "{}", "```json\n{{\"score\": {}}}\n```",
           "Rating: {} out of 99", "<think>hmm</think>{}"]


def test_every_answer_format_is_read_and_provenance_is_written(tmp_path, server, capsys):
    def script(req):
        i = int(req.key[1:])
        return reply(FORMATS[i % len(FORMATS)].format(expected_score(req.key)))

    s = server(script)
    rows = qrows(len(FORMATS)) + [{"messages": [
        {"role": "user", "content": "q042 tell me a story"}, {"role": "assistant", "content": "Once upon a time"},
        {"role": "user", "content": "another one"}, {"role": "assistant", "content": "There was a cat"}]}]
    rc, out = score(tmp_path, s.url, rows)
    assert rc == 0
    result = read_jsonl(out)
    assert [r["uncertainty"] for r in result] == [float(i) for i in range(len(FORMATS))] + [42.0]
    assert {r["uncertainty_method"] for r in result} == {"judge:openai:judge-1"}
    assert {r["uncertainty_prompt_version"] for r in result} == {"ual-rubric-v1"}
    assert result[1]["uncertainty_raw_reply"] == "**1**/99"
    assert result[0]["prompt"] == rows[0]["prompt"] and result[-1]["messages"] == rows[-1]["messages"]
    # One request per sample, the whole multi-turn sample in it, temperature 0, the key as Bearer token.
    assert len(s.requests) == len(rows)
    story = next(r for r in s.requests if r.key == "q042")
    for turn in ("tell me a story", "Once upon a time", "another one", "There was a cat"):
        assert turn in story.messages[0]["content"]
    assert story.body["model"] == "judge-1" and story.body["temperature"] == 0
    assert story.authorization == f"Bearer {KEY}"
    # Summary: counts, histogram, smoothing at the target mean, token totals as the server counted them.
    stdout = capsys.readouterr().out
    assert f"scored now: {len(rows)}  from cache: 0  failed: 0" in stdout
    assert "uncertainty by source:" in stdout and "in  n=9" in stdout
    assert "smoothing (uncertainty, target mean 0.1): n=9" in stdout and "mean=0.1000" in stdout
    words = sum(len(str(m["content"]).split()) for r in s.requests for m in r.messages)
    assert f"prompt={words}" in stdout


def test_garbage_is_retried_once_with_a_reminder_then_failed_and_listed(tmp_path, server, capfd):
    def script(req):
        if req.key == "q001":
            return reply("high")  # never a number
        if req.key == "q002" and req.n == 1:
            return reply("somewhere between 20 and 30")  # fixed after the reminder

    s = server(script)
    argv_extra = [a for a in FAST if a != "--no-progress"]  # show the bar: it counts failures
    rc = main([str(write_jsonl(tmp_path / "in.jsonl", qrows(4))), "-o", str(tmp_path / "out.jsonl"),
               "--model", "judge-1", "--base-url", s.url, *argv_extra])
    captured = capfd.readouterr()
    assert rc == 1  # some failed and --allow-failures was not given
    assert s.keys_asked() == {"q000": 1, "q001": 2, "q002": 2, "q003": 1}
    retry = [r for r in s.requests if r.key == "q001"][1]
    assert [m["role"] for m in retry.messages] == ["user", "assistant", "user"]
    assert retry.messages[1]["content"] == "high" and retry.messages[2]["content"] == REMINDER
    result = read_jsonl(tmp_path / "out.jsonl")
    assert [r["uncertainty"] for r in result] == [0.0, None, 2.0, 3.0]
    assert result[1]["uncertainty_raw_reply"] == "high"
    failures = read_jsonl(tmp_path / "out.jsonl.failures.jsonl")
    assert len(failures) == 1 and failures[0]["rows"] == [1] and failures[0]["replies"] == ["high", "high"]
    assert "no number" in failures[0]["error"] and "q001" in failures[0]["sample"]
    assert "failed: 1 (1 rows)" in captured.out and "row 1: unreadable reply" in captured.out
    assert "failed=1" in captured.err  # the progress bar
    # The failure was recorded but not taken as an answer: a rerun asks again, only for it.
    s2 = server()
    rc = main([str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--model", "judge-1",
               "--base-url", s2.url, *FAST])
    assert rc == 0 and s2.keys_asked() == {"q001": 1}
    assert [r["uncertainty"] for r in read_jsonl(tmp_path / "out.jsonl")] == [0.0, 1.0, 2.0, 3.0]
    assert not (tmp_path / "out.jsonl.failures.jsonl").exists()


def test_allow_failures_exits_zero(tmp_path, server):
    s = server(lambda req: reply("150"))
    rc, out = score(tmp_path, s.url, qrows(2), "--allow-failures")
    assert rc == 0 and [r["uncertainty"] for r in read_jsonl(out)] == [None, None]


# --- transient errors ----------------------------------------------------------------------------------


def test_429_500_stall_and_drop_are_retried_with_backoff_then_succeed(tmp_path, server, capsys):
    def script(req):
        if req.key == "q000" and req.n == 1:
            return status(429)
        if req.key == "q001" and req.n <= 2:
            return status(500)
        if req.key == "q002" and req.n == 1:
            return stall(5)  # past --timeout 0.5
        if req.key == "q003" and req.n == 1:
            return drop()
        if req.key == "q004" and req.n == 1:
            return status(503)

    s = server(script)
    rc, out = score(tmp_path, s.url, qrows(6))
    assert rc == 0
    assert [r["uncertainty"] for r in read_jsonl(out)] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert s.keys_asked() == {"q000": 2, "q001": 3, "q002": 2, "q003": 2, "q004": 2, "q005": 1}
    gaps = [b - a for a, b in zip(s.times("q001"), s.times("q001")[1:])]
    assert gaps[0] >= 0.005 and gaps[1] >= 0.01  # base 0.01 doubling, half of it at least (jitter)
    stall_gap = s.times("q002")[1] - s.times("q002")[0]
    assert 0.45 <= stall_gap < 3  # the client gave up at the timeout, not when the server did
    assert "transient retries: 6" in capsys.readouterr().out


def test_retry_after_is_honoured(tmp_path, server):
    s = server(lambda req: status(429, {"Retry-After": "1"}) if req.n == 1 else None)
    rc, _ = score(tmp_path, s.url, qrows(1))
    assert rc == 0
    first, second = s.times("q000")
    assert second - first >= 1.0  # the backoff flags alone would allow 0.05 s


def test_requests_that_keep_failing_become_failures_not_guesses(tmp_path, server):
    s = server(lambda req: status(500) if req.key == "q001" else (status(400) if req.key == "q002" else None))
    rc, out = score(tmp_path, s.url, qrows(3), "--max-retries", "2")
    assert rc == 1
    assert s.keys_asked() == {"q000": 1, "q001": 3, "q002": 1}  # 400 is not retried
    assert [r["uncertainty"] for r in read_jsonl(out)] == [0.0, None, None]
    errors = {f["rows"][0]: f["error"] for f in read_jsonl(str(out) + ".failures.jsonl")}
    assert "HTTP 500" in errors[1] and "gave up after 3 attempts" in errors[1] and "HTTP 400" in errors[2]


def test_a_judge_that_keeps_failing_stops_the_run(tmp_path, server, capsys):
    s = server(lambda req: status(503))
    rc, out = score(tmp_path, s.url, qrows(30), "--max-retries", "1", "--concurrency", "2")
    assert rc == 2 and not out.exists()
    assert "failed 10 requests in a row" in capsys.readouterr().err
    assert len(s.requests) < 30 * 2


# --- throughput ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 4])
def test_concurrency_limit_is_respected(tmp_path, server, concurrency):
    s = server(delay=0.08)
    rc, _ = score(tmp_path, s.url, qrows(8), "--concurrency", str(concurrency))
    assert rc == 0 and len(s.requests) == 8
    assert s.max_in_flight == concurrency


@pytest.mark.parametrize("concurrency", [8, 250])
def test_connections_are_kept_alive_one_per_concurrent_request(tmp_path, server, concurrency):
    # Past 100 in flight, the openai SDK's default pool (100 kept alive) closed and reopened connections as it
    # drained: at 200-300 it opened 15-100% more than needed. Each TCP connect costs the client (and a TLS
    # handshake, against a real provider) more than a request on an open connection.
    s = server(delay=0.2)
    rc, _ = score(tmp_path, s.url, qrows(4 * concurrency), "--concurrency", str(concurrency), "--timeout", "60")
    assert rc == 0 and len(s.requests) == 4 * concurrency
    assert s.connections <= concurrency, f"{s.connections} TCP connections for {concurrency} concurrent requests"


def test_rpm_limit_spaces_requests(tmp_path, server):
    s = server()
    rc, _ = score(tmp_path, s.url, qrows(5), "--rpm", "600")  # one request per 0.1 s
    assert rc == 0
    starts = sorted(r.time for r in s.requests)
    # Sent 0.1 s apart; arrival times jitter on a busy machine, so check the span, not each gap.
    assert starts[-1] - starts[0] >= 0.4 * 0.8


def test_duplicates_are_asked_once(tmp_path, server):
    s = server()
    rows = qrows(3) + qrows(3) + qrows(1, start=1)
    rc, out = score(tmp_path, s.url, rows)
    assert rc == 0
    assert s.keys_asked() == {"q000": 1, "q001": 1, "q002": 1}
    assert [r["uncertainty"] for r in read_jsonl(out)] == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 1.0]


# --- resume, atomicity, unreachable --------------------------------------------------------------------


def cached_keys(path):
    """q-keys whose answers are in the cache (the default server answers 'Score: <key number>')."""
    return {f"q{r['score']:03d}" for r in read_jsonl(path) if r.get("score") is not None}


def test_interrupted_run_keeps_answers_and_the_rerun_asks_only_the_missing(tmp_path, server, capsys):
    (tmp_path / "out.jsonl").write_text("previous output\n")
    # The judge goes away half-way: from q010 on every connection is dropped -> the run aborts.
    s1 = server(lambda req: drop() if int(req.key[1:]) >= 10 else None, delay=0.01)
    rc, out = score(tmp_path, s1.url, qrows(20), "--concurrency", "2", "--max-retries", "1")
    err = capsys.readouterr().err
    assert rc == 2
    assert "cannot reach the judge" in err and "rerun the same command" in err
    assert out.read_text() == "previous output\n"  # atomic: the old output is untouched, nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl", "out.jsonl.cache.jsonl"]
    answered = cached_keys(str(out) + ".cache.jsonl")
    assert {f"q{i:03d}" for i in range(8)} <= answered and all(int(k[1:]) < 10 for k in answered)

    s2 = server()
    rc, out = score(tmp_path, s2.url, None)
    assert rc == 0
    assert set(s2.keys_asked()) == {f"q{i:03d}" for i in range(20)} - answered
    assert all(n == 1 for n in s2.keys_asked().values())
    assert [r["uncertainty"] for r in read_jsonl(out)] == [float(i) for i in range(20)]
    assert f"from cache: {len(answered)}" in capsys.readouterr().out


def test_ctrl_c_then_rerun_asks_only_what_is_missing(tmp_path, server):
    # q000-q003 are answered; q004 gets no answer for two minutes and the client waits a minute for it, so the run
    # is certainly still going when Ctrl-C arrives, however slowly a busy machine runs either process (with FAST's
    # 0.5 s timeout, a loaded CI machine once let the client give up on ten keys before the signal came)
    s = server(lambda req: stall(120) if int(req.key[1:]) >= 4 else None, delay=0.05)
    src = write_jsonl(tmp_path / "in.jsonl", qrows(30))
    out = tmp_path / "out.jsonl"
    argv = [sys.executable, "-m", "ual.score", str(src), "-o", str(out), "--model", "judge-1",
            "--base-url", s.url, "--concurrency", "1", *FAST, "--timeout", "60"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180  # the child's imports alone can take a minute on a loaded machine
    while len(s.requests) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and not out.exists()
    answered = cached_keys(str(out) + ".cache.jsonl")
    assert answered == {f"q{i:03d}" for i in range(4)}

    s2 = server()
    rc = main([str(src), "-o", str(out), "--model", "judge-1", "--base-url", s2.url, *FAST])
    assert rc == 0
    assert set(s2.keys_asked()) == {f"q{i:03d}" for i in range(30)} - answered
    assert len(s2.requests) == 30 - len(answered)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_fails_fast_with_a_clear_message(tmp_path, capsys):
    start = time.monotonic()
    rc, out = score(tmp_path, f"http://127.0.0.1:{free_port()}/v1", qrows(5), "--max-retries", "2")
    assert rc == 2 and time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert "cannot reach the judge at http://127.0.0.1:" in err and "after 3 attempts" in err
    assert not out.exists()


# --- secrets -------------------------------------------------------------------------------------------


def test_api_key_never_leaks(tmp_path, server, capfd):
    def script(req):
        auth = req.authorization or ""
        if req.key == "q001":
            return reply(f"Score: 5 (you sent {auth})")  # a reply that echoes the key
        if req.key == "q002":
            return status(400, body=json.dumps({"error": {"message": f"bad request from {auth}"}}))
        if req.key == "q003" and req.n == 1:
            return status(500, body=f"upstream said {auth}")

    s = server(script)
    rc, _ = score(tmp_path, s.url, qrows(4), "--plot", str(tmp_path / "hist.png"))
    assert rc == 1
    assert all(r.authorization == f"Bearer {KEY}" for r in s.requests)  # the key was really used
    # A server that refuses the key (and echoes it) aborts the run; the message is redacted too.
    bad = server(lambda req: status(401, body=json.dumps({"error": {"message": f"Incorrect API key {req.authorization}"}})))
    rc2, _ = score(tmp_path, bad.url, qrows(2), output="out2.jsonl")
    assert rc2 == 2
    captured = capfd.readouterr()
    assert "refused the request: HTTP 401" in captured.err and "[REDACTED]" in captured.err
    texts = {"stdout": captured.out, "stderr": captured.err}
    for path in tmp_path.rglob("*"):
        if path.is_file():
            texts[path.name] = path.read_bytes().decode("utf-8", "replace")
    assert {"out.jsonl", "out.jsonl.cache.jsonl", "out.jsonl.failures.jsonl", "hist.png"} <= set(texts)
    assert "[REDACTED]" in texts["out.jsonl.failures.jsonl"]
    for name, text in texts.items():
        assert KEY not in text, f"API key leaked into {name}"


# --- dry run -------------------------------------------------------------------------------------------


def test_dry_run_sends_nothing(tmp_path, server, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")  # not needed to look
    s = server()
    rows = qrows(3) + qrows(1)
    rc, _ = score(tmp_path, s.url, rows, "--dry-run", "--dry-run-samples", "1")
    assert rc == 0 and s.requests == []
    stdout = capsys.readouterr().out
    assert "requests to send: 3" in stdout and "q000: what is 0 + 1?" in stdout and "q001" not in stdout
    assert "70-99" in stdout  # the rubric is shown as it would be sent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
