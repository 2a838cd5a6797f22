"""A failed push leaves TMPDIR as it found it, at once (no garbage collection needed)."""

from __future__ import annotations

import gc
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import finetune_api
from finetune_api import runtime
from finetune_api.core.errors import UpstreamUnavailableError
from loopback.servers import running_sandbox
from tests.conftest import API_KEY


class _RefusingS3(BaseHTTPRequestHandler):
    """Creates buckets (the sandbox does that first) and refuses every upload with 403."""

    def _answer(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/xml")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _refuse(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._answer(
            403,
            b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
            b"<Message>Access Denied</Message></Error>",
        )

    def do_PUT(self) -> None:
        if self.path.strip("/").count("/") == 0 and "?" not in self.path:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._answer(200)  # CreateBucket
        else:
            self._refuse()

    do_POST = _refuse
    do_GET = _refuse

    def do_HEAD(self) -> None:
        self._answer(403)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_s3() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusingS3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_failed_upload_removes_truss_archive_at_once(
    refusing_s3: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    work = tmp_path / "tmp"
    work.mkdir()
    with running_sandbox(API_KEY, refusing_s3) as sandbox:
        monkeypatch.setenv("BASETEN_API_KEY", API_KEY)
        monkeypatch.setenv("BASETEN_REMOTE_URL", sandbox.url)
        monkeypatch.setenv("BASETEN_API_URL", sandbox.url)
        monkeypatch.setattr(tempfile, "tempdir", str(work))
        runtime.reset()
        gc.disable()  # "at once": no collection may tidy up behind the code's back
        try:
            with pytest.raises(UpstreamUnavailableError) as caught:
                finetune_api.handle_training_request("org/data", "org/model")
            # The caller still holds the error (as a request handler or pytest does).
            assert caught.value.status == 503
            assert sorted(p.name for p in work.iterdir()) == []
        finally:
            gc.enable()
            runtime.reset()
        assert sandbox.jobs() == []
