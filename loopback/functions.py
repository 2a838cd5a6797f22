"""Run a function of main.py under a real ``functions-framework`` process on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import requests

from loopback.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_FRAMEWORK = Path(sys.executable).with_name("functions-framework")


class FunctionServer:
    """``functions-framework --target TARGET`` as a child process.

    Its stdout and stderr go to a file so tests can read what it logged
    (``output()``), e.g. to prove the API key never appears.
    """

    def __init__(
        self,
        target: str,
        env: Mapping[str, str],
        *,
        path: Path | None = None,
        threads: int = 8,
    ) -> None:
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "PYTHONUNBUFFERED": "1",
            "THREADS": str(threads),
            **env,
        }
        if path is not None:
            self._env["PATH"] = str(path)
        self._log = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - closed in stop()
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> FunctionServer:
        self._proc = subprocess.Popen(
            [
                str(FUNCTIONS_FRAMEWORK),
                "--source",
                str(ROOT / "main.py"),
                "--target",
                self.target,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=ROOT,
            env=self._env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.target} exited early:\n{self.output()}")
            try:
                requests.get(f"{self.url}/healthz", timeout=1)
                return self
            except requests.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.target} did not start in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def close(self) -> None:
        self.stop()
        self._log.close()

    def __enter__(self) -> FunctionServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
