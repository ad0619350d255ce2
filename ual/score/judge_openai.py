"""The judge behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, TGI, llama.cpp...).

Uses the official ``openai`` client (``AsyncOpenAI``) with its own retries switched off
(``max_retries=0``) so that this module's policy is the only one that runs: timeouts, dropped
connections, 408/409/429 and 5xx are retried with backoff (Retry-After honoured); other 4xx fail
the one sample; 401/403/404 and a judge that stays unreachable abort the run (every later request
would fail the same way), as does a run of ``MAX_CONSECUTIVE_FAILURES`` requests failing in a row.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ual.score.pacing import Pacer, RetryPolicy, parse_retry_after
from ual.score.redact import Redactor

RETRY_STATUSES = {408, 409, 429}
FATAL_STATUSES = {401, 403, 404}
# This many requests in a row failing even after their retries (timeouts, 429, 5xx) means the judge
# is down, not that some samples are hard: stop instead of grinding through the rest of the dataset.
MAX_CONSECUTIVE_FAILURES = 10


@dataclass
class Reply:
    """One judge answer: its text and the tokens it cost."""

    text: str
    usage: dict = field(default_factory=dict)


class JudgeFatalError(RuntimeError):
    """Stop the whole run: the judge cannot answer any request (unreachable, bad key, unknown model)."""


class RequestFailed(RuntimeError):
    """This one request failed for good (after retries, or with an error retrying cannot fix)."""


def usage_dict(usage) -> dict:
    """Token counts from a response's ``usage`` (absent on some servers)."""
    if usage is None:
        return {}
    out = {}
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = getattr(usage, name, None)
        if isinstance(value, int):
            out[name] = value
    return out


class OpenAIJudge:
    """Asks one chat-completions model; ``ask`` returns a ``Reply`` or raises one of the errors above."""

    kind = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None,
        api_key: str,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        pacer: Pacer | None = None,
        temperature: float | None = 0.0,
        top_p: float | None = None,
        max_tokens: int | None = None,
        response_format: dict | None = None,
        concurrency: int = 16,
    ):
        import httpx2
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient

        self.model = model
        self.method = f"judge:openai:{model}"
        self.base_url = base_url
        self.retry = retry or RetryPolicy()
        self.pacer = pacer or Pacer()
        self.temperature = temperature
        self.top_p = top_p
        self.max_tokens = max_tokens
        self.response_format = response_format
        self.redact = Redactor(api_key)
        self.retries = 0  # transient errors retried, for the summary
        self.consecutive_failures = 0
        # One kept-alive connection per concurrent request (the workers already bound how many are in flight): the
        # SDK's own pool queues requests past 1000 in flight and keeps only 100 connections alive between requests.
        limits = httpx2.Limits(max_connections=None, max_keepalive_connections=max(1, concurrency))
        self._client = AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0,
                                   http_client=DefaultAsyncHttpxClient(timeout=timeout, limits=limits))

    @property
    def where(self) -> str:
        return str(self._client.base_url).rstrip("/")

    def request_body(self, messages: list[dict]) -> dict:
        """The chat-completions body for ``messages``: what a live request and a Batch API line both send."""
        params = {"model": self.model, "messages": messages}
        for name in ("temperature", "top_p", "max_tokens", "response_format"):
            if getattr(self, name) is not None:
                params[name] = getattr(self, name)
        return params

    async def ask(self, messages: list[dict]) -> Reply:
        import openai
        from openai.types.chat import ChatCompletion

        params = self.request_body(messages)
        attempt = 0
        while True:
            await self.pacer.wait_turn()
            retry_after = None
            try:
                # The body as built, posted as is: chat.completions.create would first run the SDK's TypedDict
                # transform over it: 0.5 of ~2.5 ms of client CPU per request, for a body it leaves unchanged
                response = await self._client.post("/chat/completions", body=params, cast_to=ChatCompletion)
            except openai.APITimeoutError as exc:
                error, fatal_when_exhausted = f"timed out ({self._describe(exc)})", False
            except openai.APIConnectionError as exc:
                error, fatal_when_exhausted = f"connection failed ({self._describe(exc)})", True
            except openai.APIStatusError as exc:
                status = exc.status_code
                detail = f"HTTP {status}: {self._describe(exc)}"
                if status in FATAL_STATUSES:
                    raise JudgeFatalError(f"the judge at {self.where} refused the request: {detail}") from None
                if status not in RETRY_STATUSES and status < 500:
                    raise RequestFailed(detail) from None
                error, fatal_when_exhausted = detail, False
                retry_after = parse_retry_after(getattr(exc.response, "headers", None))
            except openai.OpenAIError as exc:  # malformed response and the like: this sample only
                raise RequestFailed(f"{type(exc).__name__}: {self._describe(exc)}") from None
            else:
                self.consecutive_failures = 0
                return self._reply(response)
            if attempt >= self.retry.max_retries:
                tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
                if fatal_when_exhausted:
                    raise JudgeFatalError(f"cannot reach the judge at {self.where} after {tries}: {error}")
                self.consecutive_failures += 1
                if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                    raise JudgeFatalError(
                        f"the judge at {self.where} failed {self.consecutive_failures} requests in a row, each after "
                        f"{tries}; last error: {error}"
                    )
                raise RequestFailed(f"{error}; gave up after {tries}")
            delay = self.retry.delay(attempt, retry_after)
            if retry_after is not None:
                self.pacer.pause(delay)
            self.retries += 1
            attempt += 1
            await asyncio.sleep(delay)

    def _describe(self, exc: Exception) -> str:
        text = str(exc) or type(exc).__name__
        cause = exc.__cause__ or exc.__context__
        if cause is not None and str(cause) and str(cause) not in text:
            text = f"{text} {type(cause).__name__}: {cause}"
        return self.redact(text)[:500]

    def _reply(self, response) -> Reply:
        choices = getattr(response, "choices", None) or []
        content = choices[0].message.content if choices and choices[0].message is not None else None
        return Reply(text=self.redact(content or ""), usage=usage_dict(getattr(response, "usage", None)))

    def reply_from_body(self, body: dict) -> Reply:
        """A ``Reply`` from a chat.completion as JSON (a Batch API output line's ``response.body``)."""
        from openai.types.chat import ChatCompletion

        return self._reply(ChatCompletion.model_validate(body))

    async def aclose(self) -> None:
        await self._client.close()
