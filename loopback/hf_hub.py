"""A Hugging Face Hub stand-in on 127.0.0.1: the file routes ``huggingface_hub`` downloads from.

``hf_hub_download(repo_id, filename, revision=…)`` with ``HF_ENDPOINT`` pointing
here sends, as huggingface_hub 2.x does against huggingface.co:

* ``HEAD /{repo_id}/resolve/{revision}/{filename}`` (``Accept-Encoding: identity``)
  and reads ``X-Repo-Commit`` (the commit the revision resolves to), ``ETag``
  (the file's id in its cache) and ``Content-Length`` (its size); no
  ``X-Xet-Hash`` header, so the plain HTTP path is taken;
* ``GET`` on the same URL for the bytes.

An unknown repository answers ``401`` with ``X-Error-Code: RepositoryNotFound``
(what the Hub answers an anonymous client for a missing or gated repository),
an unknown file ``404`` with ``X-Error-Code: EntryNotFound``. Every request is
recorded (``requests``), and ``fail_with(status)`` makes every answer that
status (an outage)::

    with HfHub({"org/tiny": {"tokenizer.json": data}}) as hub:
        os.environ["HF_ENDPOINT"] = hub.url

:func:`tiny_tokenizer_json` builds a real ``tokenizer.json`` with the
``tokenizers`` library (a word-level vocabulary over a small text), so tests
count tokens with a tokenizer whose counts they can predict: one token per
whitespace- or punctuation-separated word.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from loopback.lifecycle import StartStop

HOST = "127.0.0.1"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def tiny_tokenizer_json(texts: Iterable[str], *, vocab_size: int = 2000) -> bytes:
    """A real word-level ``tokenizer.json`` trained on ``texts`` (``[UNK]`` for the rest).

    Pre-tokenized by ``Whitespace`` (``\\w+|[^\\w\\s]+``), no special tokens added
    on encode: the token count of a text is its number of words and runs of
    punctuation, known words or not.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))  # noqa: S106 - not a secret
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # type: ignore[assignment]
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=["[UNK]"])  # type: ignore[call-arg]
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    return tokenizer.to_str().encode("utf-8")


class HfHub(StartStop):
    """Serves ``repos[repo_id][filename]`` at ``/{repo_id}/resolve/{revision}/{filename}``."""

    def __init__(self, repos: Mapping[str, Mapping[str, bytes]] | None = None) -> None:
        self.repos: dict[str, dict[str, bytes]] = {k: dict(v) for k, v in (repos or {}).items()}
        self.requests: list[tuple[str, str]] = []
        self.failure: int | None = None
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def fail_with(self, status: int | None) -> None:
        """Answer every request with ``status`` (None: serve again)."""
        self.failure = status

    def start(self) -> HfHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://{HOST}:{self._server.server_address[1]}"
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = unquote(handler.path.split("?", 1)[0])
        with self._lock:
            self.requests.append((handler.command, path))
        if self.failure is not None:
            self._send(handler, self.failure, b"", {}, body)
            return
        repo, sep, rest = path.lstrip("/").partition("/resolve/")
        revision, _, filename = rest.partition("/")
        if not sep or not revision or not filename:
            self._send(handler, 404, b"not found", {}, body)
            return
        files = self.repos.get(repo)
        if files is None:
            headers = {"X-Error-Code": "RepositoryNotFound", "X-Error-Message": "not found"}
            self._send(handler, 401, b"Repository not found", headers, body)
            return
        data = files.get(filename)
        if data is None:
            headers = {"X-Error-Code": "EntryNotFound", "X-Error-Message": "no such file"}
            self._send(handler, 404, b"Entry not found", headers, body)
            return
        etag = hashlib.sha256(data).hexdigest()
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": COMMIT}
        self._send(handler, 200, data, headers, body)

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        status: int,
        data: bytes,
        headers: Mapping[str, Any],
        body: bool,
    ) -> None:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, str(value))
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)
