"""A local fake of the Gemini ``generateContent`` HTTP API for tests (127.0.0.1 only, thread-based ``http.server``).

Point google-genai at it with ``GOOGLE_GEMINI_BASE_URL`` (``monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL",
fake.base_url)``). Replies are scripted: queued ones first (``fake.push(...)``, in arrival order), then ``default``,
a :class:`Reply` or a function of the parsed request returning one (e.g. answer with the transcript's class)::

    with FakeGemini(default=ok("Anger")) as fake:
        fake.push(*burst(429, 2), error(500), slow(2.0, "Sad"), malformed())
        ...
        assert fake.count == 6
        fake.requests[0].body["generationConfig"]["temperature"]

Import it by name (``from gemini_fake import FakeGemini, ok``) as ``qwen2_fixtures``: pytest puts ``tests/`` on
``sys.path``. The JSON shapes follow the public REST reference (candidates, finishReason, usageMetadata, error).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "FakeGemini",
    "Received",
    "Reply",
    "blocked",
    "burst",
    "empty",
    "error",
    "malformed",
    "ok",
    "safety",
    "slow",
]

_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
           500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}  # fmt: skip


@dataclass(frozen=True)
class Reply:
    """One scripted HTTP reply: status, JSON body (or raw bytes) and a delay before answering (for timeouts)."""

    status: int = 200
    body: dict[str, Any] | None = None
    raw: bytes | None = None
    delay: float = 0.0


@dataclass
class Received:
    """One request as the server saw it: path, headers (lower-cased names), parsed JSON body, arrival time."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    time: float = field(default_factory=time.monotonic)

    @property
    def model(self) -> str:
        """The model of ``.../models/<model>:generateContent``."""
        return self.path.rsplit("/models/", 1)[-1].split(":", 1)[0]

    @property
    def text(self) -> str:
        """The concatenated text parts of the request (the prompt)."""
        parts = [p for c in self.body.get("contents", []) for p in c.get("parts", [])]
        return "".join(p.get("text", "") for p in parts)

    @property
    def audio(self) -> list[tuple[str, bytes]]:
        """``(mime type, decoded bytes)`` of every inline-data part (the SDK sends URL-safe base64)."""
        out = []
        for content in self.body.get("contents", []):
            for part in content.get("parts", []):
                inline = part.get("inlineData") or part.get("inline_data")
                if inline:
                    mime = inline.get("mimeType") or inline.get("mime_type")
                    out.append((mime, base64.urlsafe_b64decode(inline["data"])))
        return out


def ok(text: str, tokens: tuple[int, int] = (12, 1), finish: str = "STOP", delay: float = 0.0) -> Reply:
    """A successful answer with one candidate whose text is ``text`` and usage (prompt, candidates) tokens."""
    body = {
        "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": finish, "index": 0}],
        "usageMetadata": {
            "promptTokenCount": tokens[0],
            "candidatesTokenCount": tokens[1],
            "totalTokenCount": tokens[0] + tokens[1],
        },
        "modelVersion": "fake",
    }
    return Reply(200, body, delay=delay)


def error(status: int, message: str = "scripted error", delay: float = 0.0) -> Reply:
    """An API error body as Google sends it (``{"error": {code, message, status}}``)."""
    body = {"error": {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}}
    return Reply(status, body, delay=delay)


def burst(status: int = 429, n: int = 3) -> list[Reply]:
    """``n`` errors in a row (a rate-limit burst by default)."""
    return [error(status, "quota exceeded" if status == 429 else "scripted error") for _ in range(n)]


def slow(delay: float, text: str = "Anger") -> Reply:
    """A correct answer sent only after ``delay`` seconds (longer than the client's timeout: a timeout)."""
    return ok(text, delay=delay)


def safety() -> Reply:
    """A candidate stopped for SAFETY: no ``content``."""
    return Reply(200, {"candidates": [{"finishReason": "SAFETY", "index": 0}], "modelVersion": "fake"})


def blocked(reason: str = "SAFETY") -> Reply:
    """The prompt itself blocked: no candidates, ``promptFeedback.blockReason``."""
    return Reply(200, {"promptFeedback": {"blockReason": reason}, "modelVersion": "fake"})


def empty() -> Reply:
    """A 200 with no candidates and no feedback at all."""
    return Reply(200, {"modelVersion": "fake"})


def malformed(text: str = "I cannot tell which emotion this is.") -> Reply:
    """A well-formed response whose text is not a single class name."""
    return ok(text)


Responder = Callable[[Received], Reply]


class FakeGemini:
    """The fake server: ``start()``/``stop()`` or a context manager; ``base_url``, ``requests``, ``count``, ``push``."""

    def __init__(self, default: Reply | Responder | None = None) -> None:
        self.default: Reply | Responder = default if default is not None else ok("Anger")
        self.requests: list[Received] = []
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting ---------------------------------------------------------------------------------------------
    def push(self, *replies: Reply | list[Reply]) -> None:
        """Queue replies for the next requests, in order (lists are flattened: ``push(*burst(429, 2), ok("Sad"))``)."""
        with self._lock:
            for reply in replies:
                self._queue.extend(reply if isinstance(reply, list) else [reply])

    @property
    def count(self) -> int:
        """How many requests arrived so far."""
        with self._lock:
            return len(self.requests)

    @property
    def pending(self) -> int:
        """How many queued replies are still unused."""
        with self._lock:
            return len(self._queue)

    def _next(self, received: Received) -> Reply:
        with self._lock:
            self.requests.append(received)
            if self._queue:
                return self._queue.popleft()
        return self.default(received) if callable(self.default) else self.default

    # -- lifecycle ---------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (valid after ``start``)."""
        if self._server is None:
            raise RuntimeError("the fake Gemini server is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeGemini:
        """Listen on 127.0.0.1, a free port, in a daemon thread."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(data) if data else {}
                except json.JSONDecodeError:
                    body = {"_unparsed": data.decode("utf-8", "replace")}
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = fake._next(Received(self.path, headers, body))
                if reply.delay:
                    time.sleep(reply.delay)
                payload = reply.raw if reply.raw is not None else json.dumps(reply.body or {}).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json; charset=UTF-8")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
                """Quiet."""

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (delayed handlers still sleeping are daemon threads and die with the process)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeGemini:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
