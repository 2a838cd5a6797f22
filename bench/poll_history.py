"""poll_history: what a poll costs as finished jobs pile up (issue 15).

Three Baseten sandboxes (child processes, ``latency_ms`` per request), each with
20 running jobs (one checkpoint each) and 0, 10,000 or 100,000 finished jobs
(in 20 projects) that changed before the poll's window (the first poll runs
with a 45 s lookback, after the history aged 46 s; the steady polls with 600 s).
Between ``poll_jobs`` and the sandbox sits a byte-counting proxy, so
"downloaded" is what really crossed the wire from Baseten. ``poll_jobs`` runs
under a real functions-framework process with the default local state file and
the client's rate limit at 90/s.

Per run:

1. ``first``: a new process polls once with no state: a *full sweep* (every job,
   parsed as a stream). Its time, bytes and the worker's peak RSS.
2. ``steady``: another new process (the state kept in its file) polls once to
   warm up, then ``polls`` times, interleaved with the other sizes' polls so
   the machine's load weighs on all alike: median time, median bytes per poll,
   and the worker's peak RSS over all of them. This is what every scheduled
   poll costs.

Every figure is printed beside the 0-history run of the same benchmark.
Goals at 100,000 (the issue's): steady peak RSS <= 80 MB, <= 1 MB downloaded
per poll, steady time <= 1.2x the 0-history one.

Run alone: ``python -m bench.poll_history`` (``--quick``: 0 and 10,000 only).
"""

from __future__ import annotations

import http.client
import json
import secrets
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from bench.harness import expect, first_answer, launch, status_kb, workdir
from loopback.servers import SandboxProcess

API_KEY = "bt-bench-" + secrets.token_hex(16)
RUNNING = 20
PROJECTS = 20
GOAL_RSS_MB = 80.0
GOAL_BYTES_PER_POLL = 1_000_000
GOAL_TIME_RATIO = 1.2
STEADY_LOOKBACK = 600


# -- a proxy that counts what Baseten sends ---------------------------------------------


class _Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes = 0
        self.requests = 0
        self.longest_wait = 0.0  # the slowest time to first byte: Baseten's own work

    def waited(self, seconds: float) -> None:
        with self.lock:
            self.longest_wait = max(self.longest_wait, seconds)

    def add(self, count: int) -> None:
        with self.lock:
            self.bytes += count

    def take(self) -> tuple[int, int]:
        with self.lock:
            figures = (self.bytes, self.requests)
            self.bytes = self.requests = 0
            return figures

    def take_wait(self) -> float:
        with self.lock:
            wait, self.longest_wait = self.longest_wait, 0.0
            return wait


@contextmanager
def counting_proxy(target: str) -> Iterator[tuple[str, _Counter]]:
    """``http://127.0.0.1:PORT`` forwarding to ``target``, counting response bytes."""
    parts = urlsplit(target)
    counter = _Counter()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in ("host", "connection", "content-length")
            }
            upstream = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=300)
            try:
                sent_at = time.perf_counter()
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                counter.waited(time.perf_counter() - sent_at)
                with counter.lock:
                    counter.requests += 1
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Connection", "close")
                self.end_headers()
                while chunk := response.read(64 * 1024):
                    try:
                        self.wfile.write(chunk)
                    except OSError:
                        break  # the poll stopped reading: what it took is counted
                    counter.add(len(chunk))
            finally:
                upstream.close()

        do_GET = _forward
        do_POST = _forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counter
    finally:
        server.shutdown()
        server.server_close()


# -- one run -------------------------------------------------------------------------------


def _control(url: str, path: str, body: dict[str, Any]) -> Any:
    response = requests.post(f"{url}/_sandbox/{path}", json=body, timeout=600)
    response.raise_for_status()
    return response.json()


def _env(proxy: str, tmp: Path, lookback: int) -> dict[str, str]:
    import os

    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp),
        "TMPDIR": str(tmp),
        "PYTHONUNBUFFERED": "1",
        "BASETEN_API_KEY": API_KEY,
        "BASETEN_API_URL": proxy,
        "BASETEN_MAX_REQUESTS_PER_SECOND": "90",
        "POLL_LOOKBACK_SECONDS": str(lookback),
        # The sandbox takes a while to build a 100,000-job answer.
        "BASETEN_TIMEOUT_SECONDS": "120",
        "POLL_STATE_FILE": str(tmp / "state" / "poll-state.json"),
    }


def _poll(url: str) -> dict[str, Any]:
    response = requests.post(url, json={}, timeout=600)
    expect(response, 200, "poll_jobs POST /")
    report: dict[str, Any] = response.json()
    return report


@contextmanager
def _baseten(finished: int, latency_ms: float, lookback: int) -> Iterator[dict[str, Any]]:
    """A seeded sandbox behind a counting proxy: ``finished`` old jobs, 20 running ones."""
    sandbox = SandboxProcess(API_KEY, None, step_seconds=0, start_timeout=60).start()
    try:
        started = time.perf_counter()
        per_project = finished // PROJECTS
        if per_project:
            _control(
                sandbox.url,
                "seed",
                {
                    "projects": PROJECTS,
                    "jobs_per_project": per_project,
                    "status": "TRAINING_JOB_COMPLETED",
                    "name_prefix": "history",
                },
            )
        seeded = time.perf_counter() - started
        with counting_proxy(sandbox.url) as (proxy, counter):
            yield {
                "finished": finished,
                "sandbox": sandbox,
                "proxy": proxy,
                "counter": counter,
                "seed_seconds": round(seeded, 1),
                "lookback": lookback,
                "latency_ms": latency_ms,
            }
    finally:
        sandbox.stop()


def _start_running(bt: dict[str, Any]) -> None:
    _control(
        bt["sandbox"].url,
        "seed",
        {
            "projects": 1,
            "jobs_per_project": RUNNING,
            "status": "TRAINING_JOB_RUNNING",
            "checkpoints_per_job": 1,
            "name_prefix": "live",
        },
    )
    # The sandbox's check of each answer against Baseten's spec (jsonschema, ~50 s
    # of its CPU for a 100,000-job answer) is a cost Baseten does not have.
    _control(bt["sandbox"].url, "config", {"latency_ms": bt["latency_ms"], "check_answers": False})


def _first_poll(bt: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """A new process, no state: the full sweep."""
    function = launch("poll_jobs", env, threads=1)
    try:
        _, response = first_answer(function, "GET", "/healthz")
        expect(response, 200, "poll_jobs /healthz")
        bt["counter"].take()
        bt["counter"].take_wait()
        report = _poll(function.url)
        sent, count = bt["counter"].take()
        wait = bt["counter"].take_wait()
        rss = status_kb(function.worker_pid(), "VmHWM") / 1024
    finally:
        function.stop()
    assert report["full_sweep"] and report["state_saved"], report
    return {
        "ms": report["duration_ms"],
        # How long the sandbox took to start answering (it builds the whole answer first).
        "baseten_answer_wait_ms": round(wait * 1000),
        "bytes": sent,
        "requests": count,
        "peak_rss_mb": round(rss, 1),
        "jobs_checked": report["jobs_checked"],
        "events": report["events"],
    }


def run(
    *,
    sizes: tuple[int, ...] = (0, 10_000, 100_000),
    polls: int = 7,
    latency_ms: float = 5.0,
    lookback: int = 45,
) -> dict[str, Any]:
    """Seed every size, let the history age out of the lookback, then measure.

    The steady polls of the sizes are interleaved (one of each per round), so
    the load of the machine weighs on all of them alike.
    """
    with ExitStack() as stack:
        worlds = [stack.enter_context(_baseten(size, latency_ms, lookback)) for size in sizes]
        tmps = [stack.enter_context(workdir("history")) for _ in sizes]
        envs = [_env(bt["proxy"], tmp, lookback) for bt, tmp in zip(worlds, tmps, strict=True)]
        # The history must be older than the window, as a real one is.
        time.sleep(lookback + 1)
        for bt in worlds:
            _start_running(bt)
        # Largest first (the oldest state is warmed up first below).
        order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
        first_by_index = {i: _first_poll(worlds[i], envs[i]) for i in order}
        firsts = [first_by_index[i] for i in range(len(sizes))]

        # The steady processes use a deployment's lookback: a full sweep of
        # 100,000 jobs outlasts the short one above.
        steady_envs = [{**env, "POLL_LOOKBACK_SECONDS": str(STEADY_LOOKBACK)} for env in envs]
        functions = [launch("poll_jobs", env, threads=1) for env in steady_envs]
        for function in functions:
            stack.callback(function.stop)
        for index in order:  # the oldest state first
            _, response = first_answer(functions[index], "GET", "/healthz")
            expect(response, 200, "poll_jobs /healthz")
            _poll(functions[index].url)  # warm-up: imports on first use
        samples: list[list[dict[str, Any]]] = [[] for _ in sizes]
        for _ in range(polls):
            for index, (bt, function) in enumerate(zip(worlds, functions, strict=True)):
                bt["counter"].take()
                report = _poll(function.url)
                sent, count = bt["counter"].take()
                assert not report["full_sweep"] and report["state_saved"], report
                samples[index].append(
                    {"ms": report["duration_ms"], "bytes": sent, "requests": count}
                )
        rss = [status_kb(function.worker_pid(), "VmHWM") / 1024 for function in functions]

    runs: list[dict[str, Any]] = []
    for index, size in enumerate(sizes):
        steady = samples[index]
        runs.append(
            {
                "finished_jobs": size,
                "running_jobs": RUNNING,
                "seed_seconds": worlds[index]["seed_seconds"],
                "first": firsts[index],
                "steady": {
                    "ms": statistics.median(s["ms"] for s in steady),
                    "bytes": statistics.median(s["bytes"] for s in steady),
                    "requests": statistics.median(s["requests"] for s in steady),
                    "peak_rss_mb": round(rss[index], 1),
                    "samples": steady,
                },
            }
        )
    base = runs[0]
    for item in runs:
        for phase in ("first", "steady"):
            figures = item[phase]
            figures["time_ratio"] = round(figures["ms"] / max(base[phase]["ms"], 1), 2)
            figures["rss_ratio"] = round(figures["peak_rss_mb"] / base[phase]["peak_rss_mb"], 2)
    largest = runs[-1]
    return {
        "latency_ms": latency_ms,
        "lookback_seconds": {"first": lookback, "steady": STEADY_LOOKBACK},
        "polls": polls,
        "runs": runs,
        "storage_import_ms": _storage_import_ms(),
        "goals": {
            "finished_jobs": largest["finished_jobs"],
            "rss_ok": largest["steady"]["peak_rss_mb"] <= GOAL_RSS_MB,
            "bytes_ok": largest["steady"]["bytes"] <= GOAL_BYTES_PER_POLL,
            "time_ok": largest["steady"]["time_ratio"] <= GOAL_TIME_RATIO,
        },
    }


def _storage_import_ms(runs: int = 5) -> float:
    """What ``google.cloud.storage`` adds to a cold start when a bucket is configured."""
    import subprocess
    import sys

    def timed(code: str) -> float:
        begin = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - begin

    timed("from google.cloud import storage")  # warm the page cache and .pyc files
    bare = statistics.median(timed("import requests") for _ in range(runs))
    storage = statistics.median(
        timed("import requests; from google.cloud import storage") for _ in range(runs)
    )
    return round((storage - bare) * 1000, 1)


if __name__ == "__main__":
    import sys

    quick = "--quick" in sys.argv
    print(json.dumps(run(sizes=(0, 10_000)) if quick else run(), indent=2))
