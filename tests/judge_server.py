"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for the ``ual score`` tests.

Standard library only (``http.server`` in a thread). Each request is tied to a sample by a key
found in its first user message (default: a token like ``q007``); a ``script`` decides per request
what happens, from the key and how many times that key was asked (``n``, 1-based):

    reply("Score: 40")                  a normal chat.completion with that content
    status(429, headers={"Retry-After": "1"}), status(500)
    stall(5)                            say nothing for 5 s (past the client's timeout)
    drop()                              close the connection without a response

Without a script (or when it returns None) the answer is ``default_reply(key)``. The server
records every request (time, key, n, messages, Authorization) and the peak number in flight.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Action:
    kind: str  # reply | status | stall | drop
    content: str = ""
    code: int = 200
    headers: dict = field(default_factory=dict)
    body: str | None = None
    seconds: float = 0.0


def reply(content: str) -> Action:
    return Action("reply", content=content)


def status(code: int, headers: dict | None = None, body: str | None = None) -> Action:
    return Action("status", code=code, headers=headers or {}, body=body)


def stall(seconds: float) -> Action:
    return Action("stall", seconds=seconds)


def drop() -> Action:
    return Action("drop")


@dataclass
class Request:
    time: float
    key: str | None
    n: int
    body: dict
    authorization: str | None

    @property
    def messages(self) -> list[dict]:
        return self.body.get("messages", [])


def default_reply(key: str | None) -> str:
    """A deterministic score per key: q007 -> 'Score: 7'."""
    digits = re.sub(r"\D", "", key or "") or "50"
    return f"Score: {int(digits) % 100}"


def expected_score(key: str) -> int:
    return int(re.sub(r"\D", "", key)) % 100


class JudgeServer:
    """Start with ``with JudgeServer(script) as server:``; ``server.url`` is the OpenAI base URL."""

    def __init__(self, script=None, key_pattern: str = r"\bq\d+\b", delay: float = 0.0):
        self.script = script
        self.key_pattern = re.compile(key_pattern)
        self.delay = delay  # seconds every answer takes (so concurrency is observable)
        self.requests: list[Request] = []
        self.counts: Counter = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> "JudgeServer":
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self._closing.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> "JudgeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- bookkeeping -----------------------------------------------------------------------
    def keys_asked(self) -> Counter:
        return Counter(r.key for r in self.requests)

    def times(self, key: str) -> list[float]:
        return [r.time for r in self.requests if r.key == key]

    def _begin(self, body: dict, authorization: str | None) -> Request:
        messages = body.get("messages") or [{}]
        first = str(messages[0].get("content", ""))
        match = self.key_pattern.search(first)
        key = match.group(0) if match else None
        with self._lock:
            self.counts[key] += 1
            request = Request(time.monotonic(), key, self.counts[key], body, authorization)
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return request

    def _end(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _action(self, request: Request) -> Action:
        action = self.script(request) if self.script else None
        return action or reply(default_reply(request.key))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: JudgeServer

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._send(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        request = self.owner._begin(body, self.headers.get("Authorization"))
        try:
            self._perform(self.owner._action(request), body)
        finally:
            self.owner._end()

    def _perform(self, action: Action, body: dict) -> None:
        owner = self.owner
        if action.kind == "drop":
            self.close_connection = True
            return
        if action.kind == "stall":
            owner._closing.wait(action.seconds)
            self.close_connection = True
            return
        if owner.delay:
            owner._closing.wait(owner.delay)
        if action.kind == "status":
            payload = action.body if action.body is not None else json.dumps(
                {"error": {"message": f"scripted {action.code}", "type": "server_error", "code": None}}
            )
            self._send(action.code, payload, action.headers)
            return
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        completion_tokens = len(action.content.split())
        self._send(
            200,
            {
                "id": f"chatcmpl-{id(action):x}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "judge"),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": action.content}, "finish_reason": "stop"}
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )

    def _send(self, code: int, payload, headers: dict | None = None) -> None:
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
