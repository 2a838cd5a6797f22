"""Shared machinery of the benchmarks: loopback servers, function processes, figures.

The stand-ins themselves (sandbox process, function launcher) live in ``loopback/``.

Everything binds 127.0.0.1. The Baseten sandbox (with its embedded moto S3)
runs in a child process, so the benchmark process itself only drives requests
and, for in-process baselines, runs truss: no server thread competes with the
measured code for this interpreter's GIL.

truss has no setting for a custom REST base (it maps the app URL to the REST
URL through ``truss.remote.baseten.api.API_URL_MAPPING``), and ``truss train
push`` asks the app URL's GraphQL endpoint for the user's teams. So the "app
URL" here is a tiny GraphQL stub answering ``{"teams": []}`` (no team: the
project goes to the organization, as the service does without
``BASETEN_TEAM_ID``), mapped to the sandbox's REST base in every process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from loopback.functions import FunctionServer
from loopback.servers import SandboxProcess

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
TEMPLATE_DIR = ROOT / "training_template"
HOST = "127.0.0.1"
ENV_REMOTE_NAME = "<environment>"

#: The body every submit benchmark sends (the recipe's example job).
REQUEST: dict[str, Any] = {
    "dataset_id": "HuggingFaceH4/Multilingual-Thinking",
    "model_id": "openai/gpt-oss-20b",
    "project_name": "bench",
    "hyperparameters": {"num_epochs": 2, "lora_rank": 32, "learning_rate": 0.0001},
    "compute": {"accelerator": "H100", "gpu_count": 1},
}


# -- figures -------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100), like numpy's default."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


# -- the GraphQL stub (the "app URL") -------------------------------------------------


class _GraphQLHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = json.dumps({"data": {"teams": []}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def graphql_stub() -> Iterator[str]:
    server = ThreadingHTTPServer((HOST, 0), _GraphQLHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# -- the Baseten side ----------------------------------------------------------------


class Baseten:
    """The sandbox in a child process (embedded S3) plus the app-URL stub."""

    def __init__(self, sandbox: SandboxProcess, app_url: str, api_key: str) -> None:
        self._sandbox = sandbox
        self.url = sandbox.url
        self.app_url = app_url
        self.api_key = api_key

    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = requests.request(method, f"{self.url}/_sandbox/{path}", json=body, timeout=60)
        response.raise_for_status()
        return response.json()

    def configure(self, **changes: Any) -> Any:
        return self.control("POST", "config", changes)

    def reset(self) -> None:
        self.control("POST", "reset")

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.control("GET", "stats")
        return stats

    def jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self.control("GET", "jobs")["jobs"]
        return jobs


@contextmanager
def baseten(api_key: str) -> Iterator[Baseten]:
    sandbox = SandboxProcess(api_key, None, step_seconds=0, extra_args=["--embedded-s3"])
    sandbox.start()
    try:
        with graphql_stub() as app_url:
            yield Baseten(sandbox, app_url, api_key)
    finally:
        sandbox.stop()


def service_env(bt: Baseten, tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a function process wired to the loopback Baseten."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp),
        "TMPDIR": str(tmp),
        "PYTHONUNBUFFERED": "1",
        "BASETEN_API_KEY": bt.api_key,
        "BASETEN_REMOTE_URL": bt.app_url,
        "BASETEN_API_URL": bt.url,
        **extra,
    }


def truss_env(bt: Baseten, tmp: Path) -> dict[str, str]:
    """The environment of a ``truss`` CLI process: env-var remote, no update check."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp),
        "TMPDIR": str(tmp),
        "PYTHONUNBUFFERED": "1",
        "BASETEN_TRUSS_AUTH_REMOTE_URL": bt.app_url,
        "BASETEN_TRUSS_AUTH_API_KEY": bt.api_key,
        "BASETEN_TRUSS_AUTH_KEYRING_DISABLED": "1",
        "TRUSS_NO_UPDATE_CHECK": "1",
    }


# -- function processes --------------------------------------------------------------


def launch(
    target: str,
    env: Mapping[str, str],
    *,
    source: Path = ROOT / "main.py",
    threads: int = 8,
) -> FunctionServer:
    """Start ``functions-framework --target TARGET`` on a free port (does not wait).

    ``first_answer`` then times the first answer from ``started``; ``close()``
    stops it with SIGINT (quick: SIGTERM waits ~2.5 s for gunicorn).
    """
    function = FunctionServer(
        target, env, source=source, threads=threads, stop_signal=signal.SIGINT
    )
    return function.launch()


def first_answer(
    function: FunctionServer,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[float, requests.Response]:
    """Send the request until the process accepts it; return (seconds since start, response).

    Only a refused connection is retried (nothing was sent), so a POST is never
    delivered twice. The clock stops when the response has been read.
    """
    deadline = function.started + timeout
    url = function.url + path
    while True:
        try:
            response = requests.request(
                method, url, json=json_body, headers=dict(headers or {}), timeout=timeout
            )
            return time.perf_counter() - function.started, response
        except requests.ConnectionError as error:
            if not _refused(error):
                raise
            if function.process.poll() is not None:
                raise RuntimeError(
                    f"{function.target} exited early:\n{function.output()[-3000:]}"
                ) from None
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{function.target} did not answer in {timeout} s") from None
            time.sleep(0.005)


def _refused(error: requests.ConnectionError) -> bool:
    """Whether the connection was refused (nothing listening yet, nothing sent)."""
    seen: BaseException | None = error
    for _ in range(6):
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError):
            return True
        reason = getattr(seen, "reason", None)
        seen = reason if isinstance(reason, BaseException) else seen.__context__
    return False


def expect(response: requests.Response, status: int, what: str) -> None:
    if response.status_code != status:
        raise RuntimeError(
            f"{what}: expected HTTP {status}, got {response.status_code}: {response.text[:500]}"
        )


# -- /proc ---------------------------------------------------------------------------


def status_kb(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` figure in kB (``VmHWM``, ``VmRSS``); 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rollup_kb(pid: int) -> dict[str, int]:
    """``/proc/PID/smaps_rollup`` figures in kB (``Pss``, ``Private_Dirty``, ...)."""
    figures: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    figures[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        pass
    return figures


# -- the staged template -------------------------------------------------------------


def runtime_config(body: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``runtime_config.json`` exactly as the service writes it for ``body``."""
    from finetune_api.core.schemas import parse_training_request
    from finetune_api.core.settings import load_settings
    from finetune_api.jobs.service import JobService

    settings = load_settings(baseten_api_key="unused", baseten_remote_url="http://unused")
    service = JobService(settings, client=None, pusher=None)
    request = service.resolve(parse_training_request(dict(body or REQUEST), settings))
    return service.runtime_config(request, str(request.job_name))


def stage(dest: Path, config: Mapping[str, Any]) -> Path:
    """A copy of ``training_template/`` with ``runtime_config.json``; returns its config.py."""
    staged = dest / "template"
    shutil.copytree(
        TEMPLATE_DIR, staged, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git")
    )
    (staged / "runtime_config.json").write_text(
        json.dumps(dict(config), indent=2, sort_keys=True), encoding="utf-8"
    )
    return staged / "config.py"


@contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
