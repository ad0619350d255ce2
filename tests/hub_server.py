"""A loopback stand-in for the Hugging Face Hub's upload API, for push tests (standard library and PyYAML).

It answers what ``huggingface_hub`` 2.x sends for ``create_repo`` and ``upload_folder`` with small files:
``POST /api/repos/create``, ``POST /api/validate-yaml`` (the card's front matter must parse as YAML, as the Hub
requires), ``POST /api/models/{repo}/preupload/{rev}`` (every file "regular", so contents come
inline) and ``POST /api/models/{repo}/commit/{rev}`` (NDJSON: a header, then one line per file, base64). Each
commit is recorded as (summary, {path: bytes}). Any other request is recorded in ``unexpected`` and gets a 404, so a
test sees which call the client made that this stand-in does not know.

Point a process at it with ``HF_ENDPOINT=server.url`` (read when huggingface_hub is imported) and a dummy token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml


@dataclass
class Commit:
    repo: str
    summary: str
    files: dict[str, bytes] = field(default_factory=dict)


class HubServer:
    def __init__(self):
        self.repos: set[str] = set()
        self.commits: list[Commit] = []
        self.unexpected: list[str] = []
        self.validated_cards: list[str] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()

    def files_of(self, repo: str) -> dict[str, bytes]:
        """The repository's files after every commit so far, in order."""
        files: dict[str, bytes] = {}
        for commit in self.commits:
            if commit.repo == repo:
                files.update(commit.files)
        return files

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    request = json.loads(body)
                    repo = f"{request.get('organization') or 'user'}/{request['name']}" if "/" not in request["name"] \
                        else request["name"]
                    with hub._lock:
                        hub.repos.add(repo)
                    return self._send(200, {"url": f"{hub.url}/{repo}", "name": repo})
                if path == "/api/validate-yaml":
                    content = json.loads(body)["content"]
                    front = re.match(r"---\n(.*?)\n---\n", content, re.S)
                    try:
                        yaml.safe_load(front.group(1) if front else "")
                    except yaml.YAMLError as e:
                        return self._send(400, {"errors": [{"message": f"invalid YAML: {e}"}]})
                    with hub._lock:
                        hub.validated_cards.append(content)
                    return self._send(200, {"warnings": []})
                m = re.fullmatch(r"/api/models/(.+)/preupload/([^/]+)", path)
                if m:
                    files = json.loads(body)["files"]
                    return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                      for f in files]})
                m = re.fullmatch(r"/api/models/(.+)/commit/([^/]+)", path)
                if m:
                    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    header = next(line["value"] for line in lines if line["key"] == "header")
                    commit = Commit(m.group(1), header.get("summary", ""))
                    for line in lines:
                        if line["key"] == "file":
                            commit.files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                    oid = hashlib.sha1(body).hexdigest()
                    with hub._lock:
                        hub.commits.append(commit)
                    return self._send(200, {"commitUrl": f"{hub.url}/{m.group(1)}/commit/{oid}", "commitOid": oid})
                with hub._lock:
                    hub.unexpected.append(f"POST {self.path}")
                self._send(404, {"error": f"not implemented by the stand-in: POST {self.path}"})

            def do_GET(self):  # noqa: N802
                with hub._lock:
                    hub.unexpected.append(f"GET {self.path}")
                self._send(404, {"error": f"not implemented by the stand-in: GET {self.path}"})

        return Handler
