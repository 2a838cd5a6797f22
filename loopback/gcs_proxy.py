"""A pass-through HTTP proxy in front of fake-gcs-server that can refuse or fail on demand.

fake-gcs-server has no IAM and never fails; Cloud Storage does both. Pointed at
this proxy (``STORAGE_EMULATOR_HOST``), the real client meets real HTTP 403s for
a bucket the service "may not read" and real 503s during an "outage", while
everything else reaches fake-gcs-server unchanged.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from loopback.lifecycle import StartStop

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class GcsProxy(StartStop):
    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.forbidden_buckets: set[str] = set()
        self.fail_media = False  # every object download answers 503
        self.paths: list[str] = []  # every request's path, in order (what reached storage)
        self._server: ThreadingHTTPServer | None = None
        self.url = ""
        self.host = ""

    def start(self) -> GcsProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                proxy.paths.append(self.path)
                refusal = proxy._refusal(self.path)
                if refusal is not None:
                    payload = b'{"error": {"code": %d, "message": "refused by the proxy"}}' % (
                        refusal
                    )
                    self.send_response(refusal)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                upstream = requests.request(
                    self.command,
                    proxy.target + self.path,
                    data=body,
                    headers=headers,
                    stream=True,
                    timeout=60,
                    allow_redirects=False,
                )
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP_BY_HOP | {"content-encoding"}:
                        self.send_header(key, value)
                content = upstream.raw.read(decode_content=True)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _relay

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://{self.host}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def _refusal(self, path: str) -> int | None:
        if any(
            f"/b/{bucket}/" in path or path.endswith(f"/b/{bucket}")
            for bucket in self.forbidden_buckets
        ):
            return 403
        if self.fail_media and "alt=media" in path:
            return 503
        return None

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
