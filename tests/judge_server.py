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

It also serves the Batch API (``POST /v1/files``, ``POST /v1/batches``, ``GET /v1/batches/ID``,
``GET /v1/files/ID/content``): each line of a batch's input file is answered by the same script when the
batch finishes, which is after ``batch_polls`` status checks. ``batch_end`` picks how it ends:
``completed``; ``expired``, after running only the first ``batch_runs`` lines; or ``failed`` (validation,
nothing run). A scripted ``status(...)`` becomes that line's entry in the batch's error file; ``stall``
and ``drop`` have no batch meaning.
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


def completion(content: str, body: dict) -> dict:
    """A chat.completion answering ``body`` with ``content`` (token counts: words)."""
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    completion_tokens = len(content.split())
    return {
        "id": f"chatcmpl-{abs(hash(content)):x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "judge"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


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
        self.connections = 0  # TCP connections accepted
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd: _Server | None = None
        self.batch_polls, self.batch_end, self.batch_runs = 1, "completed", None
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.batch_requests: list[str] = []  # every files/batches call, e.g. "create batch_1", "retrieve batch_1"

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> "JudgeServer":
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = _Server(("127.0.0.1", 0), Handler)
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

    # --- the Batch API -----------------------------------------------------------------------
    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{len(self.files) + len(self.batches) + 1}"

    def upload(self, filename: str, content: bytes, purpose: str) -> dict:
        with self._lock:
            file_id = self._new_id("file")
            self.files[file_id] = content
            self.batch_requests.append(f"upload {file_id}")
        return {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose, "status": "processed"}

    def create_batch(self, body: dict) -> dict:
        with self._lock:
            batch_id = self._new_id("batch")
            lines = [json.loads(line) for line in self.files[body["input_file_id"]].decode().splitlines() if line]
            self.batches[batch_id] = {"id": batch_id, "object": "batch", "endpoint": body["endpoint"],
                                      "input_file_id": body["input_file_id"], "status": "validating",
                                      "completion_window": body["completion_window"], "created_at": int(time.time()),
                                      "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                                      "_lines": lines, "_polls": 0}
            self.batch_requests.append(f"create {batch_id}")
        return self._public(batch_id)

    def retrieve_batch(self, batch_id: str) -> dict:
        with self._lock:
            self.batch_requests.append(f"retrieve {batch_id}")
            batch = self.batches[batch_id]
            batch["_polls"] += 1
            if batch["status"] in ("validating", "in_progress"):
                batch["status"] = "in_progress"
                if batch["_polls"] >= self.batch_polls:
                    self._finish(batch)
        return self._public(batch_id)

    def _finish(self, batch: dict) -> None:
        if self.batch_end == "failed":
            batch["status"] = "failed"
            batch["errors"] = {"object": "list", "data": [{"code": "invalid_request", "message": "scripted failure",
                                                          "line": 1, "param": None}]}
            return
        lines = batch["_lines"] if self.batch_end != "expired" else batch["_lines"][: self.batch_runs or 0]
        out, err = [], []
        for line in lines:
            first = str((line["body"].get("messages") or [{}])[0].get("content", ""))
            match = self.key_pattern.search(first)
            key = match.group(0) if match else None
            self.counts[key] += 1
            request = Request(time.monotonic(), key, self.counts[key], line["body"], None)
            self.requests.append(request)
            action = self._action(request)
            if action.kind == "status":
                err.append({"id": f"batch_req_{len(err)}", "custom_id": line["custom_id"],
                            "response": {"status_code": action.code, "request_id": "r",
                                         "body": {"error": {"message": f"scripted {action.code}",
                                                            "type": "server_error"}}}, "error": None})
            else:
                out.append({"id": f"batch_req_{len(out)}", "custom_id": line["custom_id"],
                            "response": {"status_code": 200, "request_id": "r",
                                         "body": completion(action.content, line["body"])}, "error": None})
        for name, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                file_id = self._new_id("file")
                self.files[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                batch[name] = file_id
        batch["status"] = "completed" if self.batch_end == "completed" else "expired"
        batch["request_counts"] = {"total": len(batch["_lines"]), "completed": len(out), "failed": len(err)}

    def _public(self, batch_id: str) -> dict:
        return {k: v for k, v in self.batches[batch_id].items() if not k.startswith("_")}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a client opening many connections at once would see some reset
    request_queue_size = 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle on, the body waits for the client's delayed ACK
    # (~40 ms on Linux), which doubled a 50 ms judge's latency. Real servers (uvicorn, vLLM) set TCP_NODELAY too.
    disable_nagle_algorithm = True
    owner: JudgeServer

    def setup(self) -> None:  # one per TCP connection: counts how well the client reuses them
        super().setup()
        with self.owner._lock:
            self.owner.connections += 1

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        owner, parts = self.owner, self.path.strip("/").split("/")
        if parts[:2] == ["v1", "batches"] and len(parts) == 3 and parts[2] in owner.batches:
            self._send(200, owner.retrieve_batch(parts[2]))
        elif parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content" and parts[2] in owner.files:
            self._send(200, owner.files[parts[2]].decode())
        else:
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") == "/v1/files":
            from email.parser import BytesParser

            form = BytesParser().parsebytes(b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n"
                                            + raw)
            parts = {part.get_param("name", header="content-disposition"): part for part in form.get_payload()}
            upload = parts["file"]
            self._send(200, self.owner.upload(upload.get_filename(), upload.get_payload(decode=True),
                                              parts["purpose"].get_payload(decode=True).decode()))
            return
        if self.path.rstrip("/") == "/v1/batches":
            self._send(200, self.owner.create_batch(json.loads(raw)))
            return
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
        self._send(200, completion(action.content, body))

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
