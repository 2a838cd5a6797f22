"""Run a function of main.py under a real ``functions-framework`` process on loopback.

The one launcher for the tests, the demo and the benchmarks. ``start()`` waits
for ``/healthz``; ``launch()`` only spawns, for a benchmark that times the
first answer itself from ``started``. ``worker_pid()`` names the process whose
memory to measure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path

import requests

from loopback.lifecycle import StartStop
from loopback.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_FRAMEWORK = Path(sys.executable).with_name("functions-framework")


class FunctionServer(StartStop):
    """``functions-framework --target TARGET`` as a child process.

    Its stdout and stderr go to a file so tests can read what it logged
    (``output()``), e.g. to prove the API key never appears. ``env`` is laid
    over a minimal environment (``PATH``, ``HOME``, unbuffered output,
    ``THREADS``); ``path`` replaces ``PATH``; ``source`` is the file holding
    ``target``. ``stop()`` sends ``stop_signal``: ``SIGTERM`` (a graceful
    gunicorn shutdown, ~2.5 s) unless a caller wants the quick ``SIGINT``.
    """

    def __init__(
        self,
        target: str,
        env: Mapping[str, str],
        *,
        path: Path | None = None,
        threads: int = 8,
        source: Path = ROOT / "main.py",
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.target = target
        self.source = source
        self.stop_signal = stop_signal
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
        #: The settings the function runs with (read-only for callers).
        self.env: Mapping[str, str] = dict(env)
        self._log = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - closed in stop()
        self._proc: subprocess.Popen[bytes] | None = None
        #: ``time.perf_counter()`` just before the process was spawned.
        self.started = float("nan")

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The ``functions-framework`` process (gunicorn's arbiter); after ``launch()``."""
        if self._proc is None:
            raise RuntimeError(f"{self.target} was not launched")
        return self._proc

    def launch(self) -> FunctionServer:
        """Spawn the process and return at once (``start()`` also waits for ``/healthz``)."""
        self.started = time.perf_counter()
        self._proc = subprocess.Popen(
            [
                str(FUNCTIONS_FRAMEWORK),
                "--source",
                str(self.source),
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
        return self

    def start(self, timeout: float = 30.0) -> FunctionServer:
        self.launch()
        assert self._proc is not None
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

    def worker_pid(self) -> int:
        """The process that serves requests: gunicorn's forked worker, else the process."""
        children = child_pids(self.process.pid)
        return children[0] if children else self.process.pid

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(self.stop_signal)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                for pid in child_pids(self._proc.pid):
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self._proc.kill()
                self._proc.wait()

    def close(self) -> None:
        self.stop()
        self._log.close()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def child_pids(pid: int) -> list[int]:
    """The children of ``pid`` (from ``/proc``); empty if it is gone."""
    children: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text(encoding="ascii")
            children += [int(part) for part in text.split()]
    except OSError:
        return []
    return sorted(children)
