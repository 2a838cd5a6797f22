"""A local Secret Manager REST endpoint for the real google-cloud-secret-manager client.

It answers ``GET /v1/projects/P/secrets/S/versions/V:access`` the way Google
does (base64 payload plus ``dataCrc32c``), and can be told to fail a secret
with 404/403/500/503 or a corrupted checksum. Every request is counted.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import google_crc32c

_PATH = re.compile(r"^/v1/projects/([^/]+)/secrets/([^/]+)/versions/([^/:]+):access$")
_STATUS_NAMES = {
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


class FakeSecretManager:
    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], list[str]] = {}
        self.failures: dict[str, int | str] = {}  # secret id → status, or "bad_crc"
        self.requests: list[str] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with fake._lock:
                    fake.requests.append(path)
                match = _PATH.match(path)
                if not match:
                    return self._error(404, "no such route")
                project, secret, version = match.groups()
                failure = fake.failures.get(secret)
                if isinstance(failure, int):
                    return self._error(failure, f"injected {failure}")
                versions = fake.secrets.get((project, secret))
                if not versions:
                    return self._error(404, f"Secret [{secret}] not found or has no versions.")
                number = len(versions) if version == "latest" else int(version)
                if not 1 <= number <= len(versions):
                    return self._error(404, "version not found")
                data = versions[number - 1].encode()
                crc = google_crc32c.value(data)
                if failure == "bad_crc":
                    crc ^= 1
                self._send(
                    200,
                    {
                        "name": f"projects/{project}/secrets/{secret}/versions/{number}",
                        "payload": {
                            "data": base64.b64encode(data).decode(),
                            "dataCrc32c": str(crc),
                        },
                    },
                )

            def _error(self, status: int, message: str) -> None:
                self._send(
                    status,
                    {
                        "error": {
                            "code": status,
                            "message": message,
                            "status": _STATUS_NAMES.get(status, "UNKNOWN"),
                        }
                    },
                )

            def _send(self, status: int, body: dict[str, object]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FakeSecretManager:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, project: str, secret: str, value: str) -> None:
        """Add a new version (the latest) of ``secret``."""
        with self._lock:
            self.secrets.setdefault((project, secret), []).append(value)

    def reset(self) -> None:
        with self._lock:
            self.secrets.clear()
            self.failures.clear()
            self.requests.clear()
