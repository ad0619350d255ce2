"""From rows to scored rows: render, deduplicate, skip what the cache has, ask, record, assemble.

The judges differ in how they are asked (async HTTP, batched local generation, a loss, a rule);
what they share lives here: one ``Sample`` per distinct rendered sample (duplicates are asked once),
one ``Outcome`` per sample, every outcome with a reply appended to the cache as soon as it exists,
and the same reminder-then-failure rule for unreadable replies.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ual.score.cache import sample_key
from ual.score.judge_openai import RequestFailed
from ual.score.parse import ScoreParseError, parse_score
from ual.score.rubric import Rubric, first_messages, reminder_messages

PROVENANCE_COLUMNS = ("uncertainty", "uncertainty_method", "uncertainty_rubric", "uncertainty_prompt_version",
                      "uncertainty_raw_reply")


class SampleError(ValueError):
    """A row that does not have the shape its dataset's format promises."""


@dataclass
class Sample:
    """One distinct rendered sample and the rows that share it."""

    key: str
    rendered: str
    prompt: str
    rows: list[int] = field(default_factory=list)


@dataclass
class Outcome:
    """What came of asking about one sample: a judge's ``score`` or model-nll's ``nll``, or an ``error`` saying why not."""

    key: str
    score: float | None
    replies: list[str] = field(default_factory=list)
    error: str | None = None
    usage: dict = field(default_factory=dict)
    cached: bool = False
    reminded: bool = False
    nll: float | None = None

    def record(self, method: str, prompt_version: str) -> dict:
        """The cache line for this outcome."""
        rec = {"key": self.key, "method": method, "prompt_version": prompt_version, "score": self.score}
        if self.nll is not None:
            rec["nll"] = self.nll
        rec.update({"replies": self.replies, "error": self.error, "usage": self.usage})
        return rec

    @classmethod
    def from_record(cls, rec: dict) -> Outcome:
        return cls(
            key=rec["key"],
            score=rec.get("score"),
            replies=list(rec.get("replies") or []),
            usage=dict(rec.get("usage") or {}),
            cached=True,
            nll=rec.get("nll"),
        )


def plan_samples(rows: list[dict], formats, rubric: Rubric, judge: str):
    """(distinct samples in first-seen order, the sample key of every row). ``formats``: one per row, or one.
    A sample's key is its rendering, ``rubric.version`` and the judge, so each rubric has its own cache entries."""
    if isinstance(formats, str):
        formats = [formats] * len(rows)
    samples: dict[str, Sample] = {}
    row_keys = []
    for index, (row, fmt) in enumerate(zip(rows, formats)):
        try:
            rendered = rubric.render(row, fmt)
        except (KeyError, TypeError, AttributeError) as exc:
            raise SampleError(f"row {index}: cannot read it as format {fmt!r} ({type(exc).__name__}: {exc})") from None
        key = sample_key(rendered, rubric.version, judge)
        if key not in samples:
            samples[key] = Sample(key=key, rendered=rendered, prompt=rubric.prompt(rendered))
        samples[key].rows.append(index)
        row_keys.append(key)
    return list(samples.values()), row_keys


def add_usage(total: dict, usage: dict) -> None:
    for name, value in usage.items():
        total[name] = total.get(name, 0) + value


def _settle_retry(out, first: ScoreParseError, reply) -> None:
    """Record the reply to the reminder: its score, or a failure naming both unreadable replies."""
    out.replies.append(reply.text)
    add_usage(out.usage, reply.usage)
    try:
        out.score = parse_score(reply.text)
    except ScoreParseError as second:
        out.error = _reply_failure(first, second)


def _reply_failure(first: ScoreParseError, second: ScoreParseError) -> str:
    return f"unreadable reply, also after the reminder: {second} (first reply: {first})"


async def ask_sample(judge, sample: Sample) -> Outcome:
    """One sample through an async judge: ask; if unreadable, ask once more with the reminder."""
    out = Outcome(key=sample.key, score=None)
    try:
        reply = await judge.ask(first_messages(sample.prompt))
        out.replies.append(reply.text)
        add_usage(out.usage, reply.usage)
        try:
            out.score = parse_score(reply.text)
            return out
        except ScoreParseError as first:
            out.reminded = True
            _settle_retry(out, first, await judge.ask(reminder_messages(sample.prompt, reply.text)))
    except RequestFailed as exc:
        out.error = f"request failed: {exc}"
    return out


async def run_async_judge(judge, samples: list[Sample], on_outcome, concurrency: int) -> None:
    """Ask about every sample with at most ``concurrency`` requests in flight.

    A ``JudgeFatalError`` (or Ctrl-C) stops everything at once; what was answered is already recorded.
    """
    pending = iter(samples)

    async def worker():
        for sample in pending:  # one shared iterator: each sample goes to exactly one worker
            on_outcome(await ask_sample(judge, sample))

    tasks = [asyncio.create_task(worker()) for _ in range(max(1, min(concurrency, len(samples))))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def run_batch_judge(judge, samples: list[Sample], on_outcome, batch_size: int) -> None:
    """Ask a local (batched) judge: each batch once, then the unreadable ones once more with the reminder."""
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        replies = judge.generate([first_messages(s.prompt) for s in chunk])
        outcomes, retry = [], []
        for sample, reply in zip(chunk, replies):
            out = Outcome(key=sample.key, score=None, replies=[reply.text], usage=dict(reply.usage))
            try:
                out.score = parse_score(reply.text)
            except ScoreParseError as exc:
                out.reminded = True
                retry.append((sample, out, exc))
            outcomes.append(out)
        if retry:
            again = judge.generate([reminder_messages(s.prompt, o.replies[0]) for s, o, _ in retry])
            for (_, out, first), reply in zip(retry, again):
                _settle_retry(out, first, reply)
        for out in outcomes:
            on_outcome(out)


def run_nll(scorer, samples: list[Sample], messages_of, on_outcome, batch_size: int) -> None:
    """Measure each sample's mean NLL (the score itself needs the dataset mean: see ``nll.nll_to_scores``)."""
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        for sample, (nll, tokens) in zip(chunk, scorer.mean_nll([messages_of(s) for s in chunk])):
            out = Outcome(key=sample.key, score=None, nll=nll, usage={"prompt_tokens": tokens, "total_tokens": tokens})
            if nll is None:
                out.error = f"sample has {tokens} token(s) to score; need at least 2"
            on_outcome(out)


def assemble(rows, row_scores, row_replies, method: str, prompt_version: str | None,
             rubric: str | None = None) -> list[dict]:
    """Every input row unchanged, plus the score and its provenance (None where it failed)."""
    out = []
    for row, score, reply in zip(rows, row_scores, row_replies):
        new = {k: v for k, v in row.items() if k not in PROVENANCE_COLUMNS}
        new["uncertainty"] = None if score is None else float(score)
        new["uncertainty_method"] = method
        new["uncertainty_rubric"] = rubric
        new["uncertainty_prompt_version"] = prompt_version
        new["uncertainty_raw_reply"] = reply
        out.append(new)
    return out
