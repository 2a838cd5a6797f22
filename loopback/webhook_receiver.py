"""A real Standard Webhooks receiver on 127.0.0.1, for the tests, bench and demo.

It verifies every request with ``standardwebhooks.Webhook(secret).verify`` (so
a wrongly signed delivery is rejected with 401 and recorded), records what it
accepted, and can be told what to answer next::

    with WebhookReceiver(secret) as receiver:
        receiver.respond_with(500, 200)   # first request 500, then 200
        ...
        receiver.events                   # verified, accepted payloads
        receiver.rejections               # why unverifiable requests were refused

``stop()`` takes it down (its port then refuses connections).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook

from loopback.lifecycle import StartStop

HOST = "127.0.0.1"


@dataclass
class Attempt:
    """One request the receiver saw."""

    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int
    reason: str | None = None
    payload: Any = None

    @property
    def webhook_id(self) -> str | None:
        return self.headers.get("webhook-id")


@dataclass
class _Script:
    statuses: deque[int] = field(default_factory=deque)
    delay_seconds: float = 0.0


class WebhookReceiver(StartStop):
    """A threaded HTTP server that verifies, records and answers as told."""

    def __init__(self, secret: str, *, default_status: int = 200) -> None:
        self._verifier = Webhook(secret)
        self.default_status = default_status
        self._lock = threading.Lock()
        self._script = _Script()
        self.attempts: list[Attempt] = []
        self._gate = threading.Event()
        self._gate.set()
        self.answered = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- control ----------------------------------------------------------

    def respond_with(self, *statuses: int) -> None:
        """Answer the next requests with ``statuses`` in order, then the default."""
        with self._lock:
            self._script.statuses.extend(statuses)

    def delay(self, seconds: float) -> None:
        """Wait this long before answering each request (to provoke timeouts)."""
        with self._lock:
            self._script.delay_seconds = seconds

    def hold(self) -> None:
        """Keep every answer waiting (requests are still recorded) until release()."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def clear(self) -> None:
        with self._lock:
            self.attempts.clear()
            self._script = _Script()

    # -- what was received -----------------------------------------------

    @property
    def events(self) -> list[dict[str, Any]]:
        """Verified payloads answered with 2xx, in arrival order (duplicates included)."""
        with self._lock:
            return [a.payload for a in self.attempts if a.verified and 200 <= a.status < 300]

    @property
    def unique_events(self) -> dict[str, dict[str, Any]]:
        """Accepted events by ``webhook-id``, first delivery wins (what a receiver keeps)."""
        kept: dict[str, dict[str, Any]] = {}
        with self._lock:
            for attempt in self.attempts:
                if attempt.verified and 200 <= attempt.status < 300 and attempt.webhook_id:
                    kept.setdefault(attempt.webhook_id, attempt.payload)
        return kept

    @property
    def rejections(self) -> list[str]:
        with self._lock:
            return [a.reason or "" for a in self.attempts if not a.verified]

    def attempts_for(self, webhook_id: str) -> list[Attempt]:
        with self._lock:
            return [a for a in self.attempts if a.webhook_id == webhook_id]

    # -- lifecycle --------------------------------------------------------

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, delay = receiver._next_answer()
                verified, reason, payload = receiver._verify(body, headers)
                if not verified:
                    status = 401
                receiver._record(
                    Attempt(self.path, headers, body, verified, status, reason, payload)
                )
                if delay:
                    time.sleep(delay)
                receiver._gate.wait(timeout=120)
                answer = json.dumps({"ok": 200 <= status < 300}).encode()
                try:
                    self.send_response(status)
                    if 300 <= status < 400:
                        self.send_header("Location", "/redirected")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                    with receiver._lock:
                        receiver.answered += 1
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        server = ThreadingHTTPServer((HOST, 0), Handler)
        server.daemon_threads = True
        self._server = server
        self.url = f"http://{HOST}:{server.server_address[1]}/hooks"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Take the receiver down: its port refuses connections from now on."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- internals --------------------------------------------------------

    def _next_answer(self) -> tuple[int, float]:
        with self._lock:
            status = (
                self._script.statuses.popleft() if self._script.statuses else self.default_status
            )
            return status, self._script.delay_seconds

    def _verify(self, body: bytes, headers: dict[str, str]) -> tuple[bool, str | None, Any]:
        try:
            payload = self._verifier.verify(body, headers)
        except Exception as error:  # noqa: BLE001 - any failure is a rejection to record
            return False, f"{type(error).__name__}: {error}", None
        if headers.get("content-type") != "application/json":
            return False, "content-type is not application/json", payload
        return True, None, payload

    def _record(self, attempt: Attempt) -> None:
        with self._lock:
            self.attempts.append(attempt)


def unused_url() -> str:
    """A loopback URL nothing listens on (a receiver that is down)."""
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    return f"http://{HOST}:{port}/hooks"
