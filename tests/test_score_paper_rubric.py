"""``ual score --rubric paper``: the UAL authors' judge prompt, byte for byte, on the wire.

The reference is theirs, not ours: ../shared/authors/judge_prompt.md holds the template exactly as their
``benchmark/sample/gpt4_ent_score.py`` (commit 3ed0ffc) assigns it to ``prompt_temp``. The tests write a file
shaped like theirs around it, point ``ual score`` at it, and read what a real HTTP server on 127.0.0.1 receives.
"""

import hashlib
import json
from pathlib import Path

import pytest
from judge_server import JudgeServer, reply

from ual.score.cli import main
from ual.score.rubric import PAPER_SHA256, TemplateError, load_rubric, read_paper_template

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "authors" / "judge_prompt.md"
AUTHORS_MIRROR = Path("/work/.mirror/ekonwang+UAL4Alignment/repo")
BEGIN, END = "----- BEGIN TEMPLATE -----\n", "----- END TEMPLATE -----"


@pytest.fixture(scope="module")
def template() -> str:
    if not REFERENCE.exists():
        pytest.skip(f"the authors' reference prompt {REFERENCE} is not on this machine (it lives in ../shared)")
    text = REFERENCE.read_text(encoding="utf-8")
    return text[text.index(BEGIN) + len(BEGIN): text.index(END)]


def authors_file(path: Path, template: str) -> Path:
    """A file laid out like theirs: code that uses prompt_temp before the module-level assignment."""
    assert '"""' not in template
    path.write_text(
        "import json\n\n\ndef main():\n"
        "    prompt = prompt_temp.format(example=\"\\n\".join(sample['conversations']))\n\n\n"
        f'prompt_temp = """{template}"""\n\nif __name__ == "__main__":\n    main()\n', encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    for name in ("OPENAI_BASE_URL", "UAL_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)


def test_the_reference_is_the_template_the_issue_names(template):
    # Independent of our parser: the marker file's text has the length and hash stated by the authors' data.
    assert len(template) == 1272
    assert hashlib.sha256(template.encode()).hexdigest() == PAPER_SHA256
    assert template.count("{example}") == 1 and template.endswith("{example}\n")


def test_template_is_read_from_the_file_without_running_it(tmp_path, template):
    path = authors_file(tmp_path / "gpt4_ent_score.py", template)
    path.write_text(path.read_text() + "\nraise SystemExit('executed!')\n")  # parsing must not run this
    assert read_paper_template(path) == template
    rubric = load_rubric("paper", rubric_file=path)
    assert rubric.version == "paper:" + PAPER_SHA256[:12]
    assert rubric.request == {"temperature": 0.0, "top_p": 0.9, "max_tokens": 4096}
    assert rubric.prompt("A\nB") == template.replace("{example}", "A\nB")


@pytest.mark.skipif(not AUTHORS_MIRROR.exists(), reason=f"no snapshot of the authors' repository at {AUTHORS_MIRROR}")
def test_the_authors_own_file_parses(tmp_path):
    import subprocess

    source = subprocess.run(["git", "-C", str(AUTHORS_MIRROR), "show", "HEAD:benchmark/sample/gpt4_ent_score.py"],
                            capture_output=True, text=True, check=True).stdout
    path = tmp_path / "gpt4_ent_score.py"
    path.write_text(source)
    assert hashlib.sha256(read_paper_template(path).encode()).hexdigest() == PAPER_SHA256


@pytest.mark.parametrize("change, message", [
    (lambda t: t.replace("0 to 99", "0 to 100"), "is not the authors' template"),
    (lambda t: t.rstrip("\n"), "is not the authors' template"),  # the final newline counts
])
def test_another_template_is_refused_naming_the_file_and_line(tmp_path, template, change, message):
    path = authors_file(tmp_path / "gpt4_ent_score.py", change(template))
    with pytest.raises(TemplateError, match=message) as info:
        read_paper_template(path)
    assert str(path) in str(info.value) and "line 8" in str(info.value)


@pytest.mark.parametrize("source, message", [
    ("prompt_temp = 'x' + 'y'\n", "not a plain string literal"),
    ("prompt_temp = f'{x}'\n", "not a plain string literal"),
    ("template = 'x'\n", "assigns no prompt_temp"),
    ("def broken(:\n", "line 1: not Python"),
])
def test_files_that_are_not_the_authors_are_one_clear_error(tmp_path, source, message):
    path = tmp_path / "gpt4_ent_score.py"
    path.write_text(source)
    with pytest.raises(TemplateError, match=message):
        read_paper_template(path)


def test_paper_rubric_needs_the_file_and_excludes_a_custom_template(tmp_path):
    with pytest.raises(TemplateError, match="ekonwang/UAL4Alignment"):
        load_rubric("paper")
    with pytest.raises(TemplateError, match="cannot be combined"):
        load_rubric("paper", rubric_file="x.py", prompt_template="t.txt")
    with pytest.raises(TemplateError, match="--rubric paper only"):
        load_rubric("ual", rubric_file="x.py")


ROWS = [
    {"messages": [{"role": "user", "content": "q001 Tell me {a} joke"}, {"role": "assistant", "content": "Why?"},
                  {"role": "user", "content": "More"}, {"role": "assistant", "content": "Because."}]},
    {"instruction": "q002 Name a colour.", "input": "", "output": "Blue"},
    {"instruction": "q003 Add these.", "input": "2 and 3", "output": "5"},
    {"question": "q004 What is 2+2?", "answer": "2+2=4\n#### 4"},
]
EXAMPLES = {
    "q001": "q001 Tell me {a} joke\nWhy?\nMore\nBecause.",
    "q002": "q002 Name a colour.\nBlue",  # an empty input is left out, as the authors' Alpaca data had none
    "q003": "q003 Add these.\n2 and 3\n5",
    "q004": "q004 What is 2+2?\n2+2=4\n#### 4",
}


def test_the_request_a_server_receives_is_the_authors_prompt_byte_for_byte(tmp_path, template, capsys):
    path = authors_file(tmp_path / "gpt4_ent_score.py", template)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with JudgeServer(lambda req: reply("Score: 12")) as server:
        rc = main([str(src), "-o", str(tmp_path / "out.jsonl"), "--model", "gpt-4-1106-preview", "--base-url",
                   server.url, "--rubric", "paper", "--rubric-file", str(path), "--no-progress"])
        requests = list(server.requests)
    assert rc == 0
    assert sorted(r.key for r in requests) == sorted(EXAMPLES)
    for req in requests:
        assert req.messages == [{"role": "user", "content": template.replace("{example}", EXAMPLES[req.key])}]
        sent = {k: req.body.get(k) for k in ("model", "temperature", "top_p", "max_tokens")}
        assert sent == {"model": "gpt-4-1106-preview", "temperature": 0, "top_p": 0.9, "max_tokens": 4096}
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert {r["uncertainty_rubric"] for r in out} == {"paper"}
    assert {r["uncertainty_prompt_version"] for r in out} == {"paper:" + PAPER_SHA256[:12]}
    summary = capsys.readouterr().out
    assert "rubric: paper  sent with temperature 0, top_p 0.9, max_tokens 4096" in summary


def test_rubrics_do_not_share_cached_scores_and_flags_override_the_authors_settings(tmp_path, template):
    path = authors_file(tmp_path / "gpt4_ent_score.py", template)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:2]))
    base = [str(src), "-o", str(tmp_path / "out.jsonl"), "--model", "m", "--no-progress"]
    with JudgeServer(lambda req: reply("40")) as server:
        assert main([*base, "--base-url", server.url]) == 0
        first = len(server.requests)
        assert main([*base, "--base-url", server.url, "--rubric", "paper", "--rubric-file", str(path),
                     "--top-p", "1", "--max-tokens", "8"]) == 0
        paper = server.requests[first:]
    assert first == 2 and len(paper) == 2, "the paper rubric is asked afresh, not served from the ual cache"
    assert {(r.body["top_p"], r.body["max_tokens"]) for r in paper} == {(1, 8)}
    assert all("top_p" not in r.body and "max_tokens" not in r.body for r in server.requests[:first])
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert {r["uncertainty_rubric"] for r in out} == {"paper"}


def test_a_wrong_file_stops_before_any_request(tmp_path, template, capsys):
    path = authors_file(tmp_path / "gpt4_ent_score.py", template.replace("diversity", "variety"))
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(ROWS[0]) + "\n")
    with JudgeServer() as server:
        rc = main([str(src), "-o", str(tmp_path / "out.jsonl"), "--model", "m", "--base-url", server.url,
                   "--rubric", "paper", "--rubric-file", str(path), "--no-progress"])
        assert server.requests == []
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("ual score: error: --rubric-file")
    assert not (tmp_path / "out.jsonl").exists()


def test_rubric_cost_benchmark_counts_what_the_judge_did(tmp_path, template):
    """benchmarks/judge_rubrics.py against a judge that answers the paper prompt in prose first."""
    import subprocess
    import sys

    path = authors_file(tmp_path / "gpt4_ent_score.py", template)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"q{i:03d} task", "completion": "answer"}) + "\n" for i in range(6)))

    def judge(req):
        paper = "#### Example:" in req.messages[0]["content"]
        if paper and len(req.messages) == 1:  # first ask: prose with two bands in it, unreadable -> the reminder
            return reply("This sits between the 0-39 and 40-69 bands." if req.key != "q005" else "low")
        return reply("Score: 7" if paper else "55")

    with JudgeServer(judge) as server:
        done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "judge_rubrics.py"), "--base-url", server.url,
                               "--model", "m/x", "--rubric-file", str(path), "--files", str(rows), "--out",
                               str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
        sent = len(server.requests)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "judge_rubrics_m_x.json").read_text())
    ual, paper = result["rubrics"]["ual"], result["rubrics"]["paper"]
    assert (ual["samples"], ual["requests"], ual["first_reply_unreadable"], ual["failed"]) == (6, 6, 0, 0)
    assert (paper["samples"], paper["requests"], paper["first_reply_unreadable"], paper["failed"]) == (6, 12, 6, 0)
    assert ual["requests"] + paper["requests"] == sent
    assert paper["mean_score"] == 7 and ual["mean_score"] == 55


def test_structured_output_sends_the_score_schema_and_cuts_re_asks(tmp_path, template):
    """--response-format json: the request carries a JSON schema for {"score": 0-99}; a judge that honours it
    (as OpenAI's structured outputs and vLLM's guided decoding do) answers in that form, read by the same parser."""
    import subprocess
    import sys

    from ual.score.rubric import SCORE_SCHEMA

    path = authors_file(tmp_path / "gpt4_ent_score.py", template)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"q{i:03d} task", "completion": "answer"}) + "\n" for i in range(5)))
    bodies = []

    def judge(req):
        bodies.append(req.body)
        if "response_format" in req.body:
            return reply('{"score": 12}')
        return reply("Between the 0-39 and 40-69 bands." if len(req.messages) == 1 else "12")

    with JudgeServer(judge) as server:
        done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "judge_rubrics.py"), "--base-url", server.url,
                               "--model", "m", "--rubric-file", str(path), "--files", str(rows), "--response-formats",
                               "text", "json", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "judge_rubrics_m.json").read_text())["rubrics"]
    assert result["paper"]["first_reply_unreadable"] == 5 and result["paper+json"]["first_reply_unreadable"] == 0
    assert result["paper+json"]["requests"] == 5 and result["paper+json"]["mean_score"] == 12
    assert [b["response_format"] for b in bodies if "response_format" in b] == [SCORE_SCHEMA] * 10  # ual + paper


def test_structured_output_needs_an_openai_compatible_judge(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(ROWS[0]) + "\n")
    assert main([str(src), "-o", str(tmp_path / "o.jsonl"), "--judge", "prior", "--response-format", "json"]) == 2
    assert "--judge prior has none" in capsys.readouterr().err
