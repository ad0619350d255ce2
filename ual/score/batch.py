"""``ual score --batch``: the samples go through the OpenAI Batch API. It costs half the price of live requests and
has no rate limit to pace; the answers come back within the batch's completion window (24 h).

One round is one batch:
- a JSON Lines file, one chat-completions request per sample, with the sample's cache key as ``custom_id``;
- uploaded (``files``), then submitted (``batches``), then polled with progress;
- its output and error files are downloaded and read by the same parser as live replies.
Replies that cannot be read go into a second round that carries the reminder, as live scoring does.

Everything paid for is kept:
- each answer is appended to the cache as soon as its file is read;
- the batch in flight is recorded in ``CACHE.batch.json`` (written atomically) the moment it exists, so a rerun
  after any interruption (Ctrl-C, kill, a lost connection) polls that batch again instead of paying for a new one;
- an expired batch yields the answers it has, and a partly failed one its successes; the rerun asks only for the
  rest.
The control-plane calls (upload, create, poll, download) use the SDK's own retries.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ual.errors import UsageError
from ual.files import write_atomic
from ual.score.judge_openai import JudgeFatalError, Reply
from ual.score.parse import ScoreParseError, parse_score
from ual.score.rubric import first_messages, reminder_messages
from ual.score.runner import Outcome, Sample, _settle_retry, add_usage

ENDPOINT = "/v1/chat/completions"
DONE = ("completed", "expired", "cancelled")  # these may carry output; "failed" never ran


@dataclass
class BatchState:
    """The batch in flight, as saved beside the cache: enough to resume it without asking again."""

    round: str  # "first" or "reminder"
    keys: list[str]
    input_file_id: str | None = None
    batch_id: str | None = None
    first_replies: dict[str, str] = field(default_factory=dict)  # reminder round: each sample's unreadable reply
    first_usage: dict[str, dict] = field(default_factory=dict)  # and the tokens it cost

    def save(self, path: Path) -> None:
        write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(asdict(self), indent=1)))

    @classmethod
    def load(cls, path: Path) -> BatchState | None:
        if not path.exists():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{path}: not a batch record written by ual score ({exc}); delete it to start a new "
                             "batch (a batch it named keeps running at the provider)") from None


class BatchClient:
    """The files and batches endpoints of an OpenAI-compatible server, for one judge's requests."""

    def __init__(self, judge, api_key: str, base_url: str | None, timeout: float, max_retries: int,
                 poll_seconds: float, completion_window: str = "24h"):
        from openai import OpenAI

        self.judge = judge  # request bodies, reply parsing, redaction: as live requests
        self.poll_seconds = poll_seconds
        self.completion_window = completion_window
        self._client = OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries)

    def upload(self, requests: list[tuple[str, list[dict]]]) -> str:
        lines = [json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT,
                             "body": self.judge.request_body(messages)}, ensure_ascii=False)
                 for key, messages in requests]
        data = ("\n".join(lines) + "\n").encode("utf-8")
        return self._call("upload the requests", self._client.files.create,
                          file=("ual-score-batch.jsonl", data), purpose="batch").id

    def create(self, input_file_id: str) -> str:
        return self._call("create the batch", self._client.batches.create, input_file_id=input_file_id,
                          endpoint=ENDPOINT, completion_window=self.completion_window).id

    def wait(self, batch_id: str, progress) -> object:
        """Poll until the batch ends; ``progress(done, total, status)`` after each poll."""
        while True:
            batch = self._call("check the batch", self._client.batches.retrieve, batch_id)
            counts = batch.request_counts
            if counts is not None:
                progress(counts.completed + counts.failed, counts.total, batch.status)
            if batch.status in (*DONE, "failed"):
                return batch
            time.sleep(self.poll_seconds)

    def results(self, batch) -> dict[str, Reply | str]:
        """custom_id -> the reply, or why that request failed; requests the batch never ran are absent."""
        out: dict[str, Reply | str] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            text = self._call("download the results", self._client.files.content, file_id).text
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    key, result = self._result(line, file_id, number)
                    out[key] = result
        return out

    def _result(self, line: str, file_id: str, number: int) -> tuple[str, Reply | str]:
        try:
            record = json.loads(line)
            key = record["custom_id"]
        except (ValueError, KeyError, TypeError):
            raise JudgeFatalError(f"batch file {file_id}, line {number}: not a Batch API result line") from None
        response = record.get("response") or {}
        if record.get("error"):
            error = record["error"]
            return key, self.judge.redact(f"batch request failed: {error.get('code')}: {error.get('message')}")
        status = response.get("status_code")
        if status != 200:
            message = ((response.get("body") or {}).get("error") or {}).get("message", "")
            return key, self.judge.redact(f"batch request failed: HTTP {status}: {message}"[:500])
        try:
            return key, self.judge.reply_from_body(response["body"])
        except Exception as exc:  # a malformed body fails that sample only
            return key, f"batch request failed: unreadable response ({type(exc).__name__})"

    def _call(self, what: str, fn, *args, **kwargs):
        import openai

        try:
            return fn(*args, **kwargs)
        except openai.APIStatusError as exc:
            raise JudgeFatalError(f"cannot {what} at {self.judge.where}: HTTP {exc.status_code}: "
                                  f"{self.judge.redact(str(exc))[:300]}") from None
        except openai.OpenAIError as exc:
            raise JudgeFatalError(f"cannot {what} at {self.judge.where}: {self.judge.redact(str(exc))[:300]}") from None


def run_batch_api(client: BatchClient, samples: list[Sample], on_outcome, state_path: Path, progress,
                  answered=frozenset(), say=print) -> None:
    """Score ``samples`` in batches (a reminder round only for unreadable replies). A batch recorded in
    ``state_path`` by an interrupted run is finished first; samples it did not cover get a new batch.
    ``answered``: keys the cache already has (a resumed batch may hold them too; they are not recorded twice)."""
    by_key = {s.key: s for s in samples}
    state = BatchState.load(state_path)
    if state is not None:
        strangers = [k for k in state.keys if k not in by_key and k not in answered]
        if strangers:
            raise UsageError(f"{state_path} records a batch ({state.batch_id or state.input_file_id}) for "
                             f"{len(strangers)} sample(s) this command does not score: rerun the command that "
                             "started it, or delete the file to start a new batch")
        say(f"resuming batch {state.batch_id or '(not yet created)'} ({state.round} round, {len(state.keys)} "
            f"request(s)) recorded in {state_path}")
        covered = set(state.keys)
        _run_rounds(client, state, by_key, on_outcome, state_path, progress, say)
        samples = [s for s in samples if s.key not in covered]
    if samples:
        _run_rounds(client, BatchState("first", [s.key for s in samples]), by_key, on_outcome, state_path, progress,
                    say)


def _run_rounds(client, state: BatchState | None, by_key, on_outcome, state_path: Path, progress, say) -> None:
    while state is not None:
        if state.batch_id is None:
            if state.input_file_id is None:
                keys = [k for k in state.keys if k in by_key]
                requests = [(k, first_messages(by_key[k].prompt)) if state.round == "first"
                            else (k, reminder_messages(by_key[k].prompt, state.first_replies[k])) for k in keys]
                state.keys, state.input_file_id = keys, client.upload(requests)
                state.save(state_path)  # an upload costs nothing; recorded so a rerun reuses it
            state.batch_id = client.create(state.input_file_id)
            state.save(state_path)
            say(f"batch {state.batch_id} submitted ({state.round} round, {len(state.keys)} request(s)); its id is "
                f"kept in {state_path}, so an interrupted run resumes it")
        batch = client.wait(state.batch_id, progress)
        if batch.status == "failed":
            errors = getattr(getattr(batch, "errors", None), "data", None) or []
            detail = "; ".join(f"{e.code}: {e.message}" for e in errors[:3]) or "no reason given"
            state_path.unlink()
            raise JudgeFatalError(f"batch {state.batch_id} failed before running ({detail}); nothing was charged")
        results = client.results(batch)
        unrun = f"batch {state.batch_id} {batch.status} before this request ran"
        state = _settle_round(state, results, unrun, by_key, on_outcome)
        if state is not None:  # the reminder round; its record keeps the first replies, so they are not lost
            state.save(state_path)
        else:
            state_path.unlink()


def _settle_round(state: BatchState, results: dict, unrun: str, by_key: dict, on_outcome) -> BatchState | None:
    """Record every result of a round (of the samples still asked about); the next round's state or None."""
    reminders, usage = {}, {}
    for key in state.keys:
        if key not in by_key:  # answered meanwhile (the cache has it)
            continue
        result = results.get(key)
        if state.round == "first":
            out = Outcome(key=key, score=None)
            if isinstance(result, Reply):
                out.replies.append(result.text)
                add_usage(out.usage, result.usage)
                try:
                    out.score = parse_score(result.text)
                except ScoreParseError:
                    reminders[key], usage[key] = result.text, out.usage  # settled with the reminder's answer
                    continue
            else:
                out.error = result or unrun
        else:
            out = Outcome(key=key, score=None, replies=[state.first_replies[key]], reminded=True,
                          usage=dict(state.first_usage.get(key, {})))
            try:
                parse_score(state.first_replies[key])
            except ScoreParseError as first:
                if isinstance(result, Reply):
                    _settle_retry(out, first, result)
                else:
                    out.error = f"unreadable reply ({first}); the reminder {result or unrun}"
        on_outcome(out)
    return BatchState("reminder", list(reminders), first_replies=reminders, first_usage=usage) if reminders else None
