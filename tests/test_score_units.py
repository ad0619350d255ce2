"""The pure pieces of ``ual score``: rubric, cache, pacing, the NLL formula, summaries, dataset I/O."""

import asyncio
import json
import random
import time

import numpy as np
import pytest

from ual.files import write_atomic
from ual.score import data
from ual.score.cache import CacheWriter, read_cache, sample_key
from ual.score.nll import nll_to_scores, nll_version
from ual.score.pacing import Pacer, RetryPolicy, parse_retry_after
from ual.score.redact import MASK, Redactor
from ual.score.rubric import (
    DEFAULT_TEMPLATE,
    PROMPT_VERSION,
    REMINDER,
    TemplateError,
    load_rubric,
    load_template,
    reminder_messages,
    render_sample,
)
from ual.score.runner import assemble, plan_samples
from ual.score.summary import RunStats, format_summary, histogram_counts, histogram_line, smoothing_line

# --- rubric ------------------------------------------------------------------------------------------


def test_default_rubric_states_the_scale_and_all_three_bands():
    assert PROMPT_VERSION == "ual-rubric-v1"
    for band in ("70-99", "40-69", "0-39", "0 to 99"):
        assert band in DEFAULT_TEMPLATE
    assert DEFAULT_TEMPLATE.count("{sample}") == 1
    assert load_template(None) == (DEFAULT_TEMPLATE, PROMPT_VERSION)


ROWS = {
    "messages": {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
                              {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"},
                              {"role": "assistant", "content": "A2"}]},
    "conversations": {"conversations": [{"from": "human", "value": "U1"}, {"from": "gpt", "value": "A1"},
                                        {"from": "human", "value": "U2"}, {"from": "gpt", "value": "A2"}]},
    "prompt_completion": {"prompt": "U1", "completion": "A1"},
    "text": {"text": "T"},
    "alpaca": {"instruction": "I", "input": "X", "output": "O"},
    "gsm8k": {"question": "Q", "answer": "A #### 4"},
    "metamath": {"query": "Q", "response": "R"},
}


@pytest.mark.parametrize("fmt", sorted(ROWS))
def test_every_turn_of_every_format_is_rendered(fmt):
    rendered = render_sample(ROWS[fmt], "auto")
    assert rendered == render_sample(ROWS[fmt], fmt)
    if fmt in ("messages", "conversations"):
        assert rendered.index("U1") < rendered.index("A1") < rendered.index("U2") < rendered.index("A2")
        assert "[user]" in rendered and "[assistant]" in rendered
    for value in ROWS[fmt].values():
        if isinstance(value, str):
            assert value.split(" ")[0] in rendered


def test_custom_template_is_versioned_by_content(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text('Rate {sample} with JSON like {"score": N}')
    template, version = load_template(path)
    assert version.startswith("custom:") and len(version) == len("custom:") + 12
    rubric = load_rubric(prompt_template=path)
    assert (rubric.name, rubric.version) == ("custom", version)
    assert rubric.prompt("X") == 'Rate X with JSON like {"score": N}'  # braces survive
    path.write_text("Rate this {sample}!")
    assert load_template(path)[1] != version
    path.write_text("no placeholder")
    with pytest.raises(TemplateError, match="placeholder"):
        load_template(path)
    with pytest.raises(TemplateError, match="cannot read"):
        load_template(tmp_path / "missing.txt")


def test_reminder_is_appended_after_the_bad_reply():
    messages = reminder_messages("P", "high")
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == "high" and messages[2]["content"] == REMINDER


# --- cache -------------------------------------------------------------------------------------------


def test_key_depends_on_sample_prompt_version_and_judge():
    base = sample_key("s", "v1", "judge:openai:m")
    assert base == sample_key("s", "v1", "judge:openai:m")
    assert len({base, sample_key("t", "v1", "judge:openai:m"), sample_key("s", "v2", "judge:openai:m"),
                sample_key("s", "v1", "judge:openai:n")}) == 4


def test_cache_survives_a_torn_last_line_and_ignores_failures(tmp_path, capsys):
    path = tmp_path / "c.jsonl"
    with CacheWriter(path) as w:
        w.append({"key": "a", "score": 10})
        w.append({"key": "b", "score": None, "error": "unreadable"})
    with open(path, "a") as fh:
        fh.write('{"key": "c", "sco')  # killed mid-write
    assert set(read_cache(path)) == {"a"}
    assert "skipped 1 unreadable line" in capsys.readouterr().err
    with CacheWriter(path) as w:  # appending starts on a fresh line
        w.append({"key": "c", "score": 30})
    assert {k: r["score"] for k, r in read_cache(path).items()} == {"a": 10, "c": 30}


# --- pacing ------------------------------------------------------------------------------------------


def test_backoff_grows_is_jittered_capped_and_honours_retry_after():
    policy = RetryPolicy(max_retries=5, backoff_base=1.0, backoff_max=8.0)
    rng = random.Random(0)
    for attempt in range(6):
        cap = min(8.0, 2.0**attempt)
        delays = [policy.delay(attempt, rng=rng) for _ in range(50)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(set(delays)) > 1  # jitter
    assert policy.delay(0, retry_after=30.0, rng=rng) == 30.0  # the server's floor wins over the cap


def test_retry_after_headers():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({}) is None and parse_retry_after(None) is None
    assert parse_retry_after({"retry-after": "soon"}) is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= parse_retry_after({"retry-after": future}) <= 31


def test_pacer_spaces_requests_by_rpm():
    async def starts():
        pacer = Pacer(rpm=600)  # one every 0.1 s
        stamps = []

        async def one():
            await pacer.wait_turn()
            stamps.append(time.monotonic())

        begin = time.monotonic()
        await asyncio.gather(*(one() for _ in range(4)))
        return [t - begin for t in sorted(stamps)]

    stamps = asyncio.run(starts())
    for i, stamp in enumerate(stamps):  # the i-th start waits for its slot, 0.1 s after the previous one
        assert stamp >= 0.1 * i


def test_redactor():
    assert Redactor("sk-1")("Bearer sk-1 bad") == f"Bearer {MASK} bad"
    assert Redactor(None)("x") == "x" and Redactor("k")(None) is None


# --- the NLL formula ---------------------------------------------------------------------------------


def test_nll_scores_follow_the_documented_formula():
    nll = np.array([1.0, 2.0, 3.0, 6.0])  # mean 3
    scores = nll_to_scores(nll, center=50, beta=1.0)
    assert scores.tolist() == pytest.approx([50 * (1 + (x - 3) / 3) if x < 6 else 99 for x in nll])
    assert nll_to_scores([2.0, 2.0]).tolist() == [50.0, 50.0]  # an average sample scores the center
    assert nll_to_scores([0.0, 0.0]).tolist() == [50.0, 50.0]
    spread = nll_to_scores(nll, center=50, beta=0.5)
    assert np.all(np.abs(spread - 50) <= np.abs(scores - 50) + 1e-9)
    assert nll_version(50, 1) == "model-nll-v1(center=50,beta=1)"


# --- summary -----------------------------------------------------------------------------------------


def test_histograms_and_smoothing_line():
    assert histogram_counts([0, 9, 10, 99, 55]) == [2, 1, 0, 0, 0, 1, 0, 0, 0, 1]
    assert histogram_line([]) == "n=0"
    assert "mean=" in histogram_line([10, 20]) and "0-9:0 10-19:1 20-29:1" in histogram_line([10, 20])
    line = smoothing_line([10, 20, 30, None], 0.1)
    assert "mean=0.1000" in line
    assert "cannot map" in smoothing_line([0, 0], 0.1)
    text = format_summary(RunStats(rows=3, unique=2, scored=2), [10, 80, None], ["a", "b", "b"], 0.1)
    assert "a  n=1" in text and "b  n=1" in text and "(all)" in text


def test_assemble_keeps_rows_and_adds_provenance():
    rows = [{"text": "x", "uncertainty": 3, "other": [1, 2]}, {"text": "y"}]
    out = assemble(rows, [40, None], ["40", "junk"], "judge:openai:m", "ual-rubric-v1", "ual")
    assert out[0] == {"text": "x", "other": [1, 2], "uncertainty": 40.0, "uncertainty_method": "judge:openai:m",
                      "uncertainty_rubric": "ual", "uncertainty_prompt_version": "ual-rubric-v1",
                      "uncertainty_raw_reply": "40"}
    assert out[1]["uncertainty"] is None and out[1]["uncertainty_raw_reply"] == "junk"
    assert rows[0]["uncertainty"] == 3  # input rows untouched


def test_duplicates_share_one_sample():
    rows = [{"text": "a"}, {"text": "b"}, {"text": "a"}]
    samples, keys = plan_samples(rows, "text", load_rubric(), "j")
    assert len(samples) == 2 and keys[0] == keys[2] != keys[1] and samples[0].rows == [0, 2]


# --- dataset I/O -------------------------------------------------------------------------------------


def test_reads_jsonl_json_array_and_parquet_and_writes_both(tmp_path):
    rows = [{"text": "a", "n": 1}, {"text": "b", "n": 2}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    (tmp_path / "b.json").write_text(json.dumps(rows))
    assert data.read_rows(str(tmp_path / "a.jsonl")) == rows
    assert data.read_rows(str(tmp_path / "b.json")) == rows
    data.write_rows(tmp_path / "c.parquet", rows)
    assert data.read_rows(str(tmp_path / "c.parquet")) == rows
    assert data.default_source(str(tmp_path / "c.parquet")) == "c"
    assert data.default_source("org/name") == "org/name"


def test_bad_inputs_and_outputs(tmp_path):
    with pytest.raises(data.DataError, match="not found"):
        data.read_rows(str(tmp_path / "missing.jsonl"))
    (tmp_path / "x.tsv").write_text("a\tb\n")
    with pytest.raises(data.DataError, match="unsupported input"):
        data.read_rows(str(tmp_path / "x.tsv"))
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(data.DataError, match="broken.jsonl: line 2: not valid JSON"):
        data.read_rows(str(tmp_path / "broken.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(data.DataError, match="no rows"):
        data.read_rows(str(tmp_path / "empty.jsonl"))
    with pytest.raises(data.DataError, match="unsupported type"):
        data.check_output(tmp_path / "out.tsv")
    (tmp_path / "file").write_text("")
    with pytest.raises(data.DataError, match="cannot write"):
        data.check_output(tmp_path / "file" / "out.jsonl")


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")

    def explode(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_atomic(target, explode)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]
