"""Memory: peak RSS of ``train_http`` serving 20 concurrent submits.

functions-framework runs gunicorn: the process it starts (the arbiter) imports
``main.py`` and forks one worker, which serves every request; truss is
imported there, on the first submit. The figure is the worker's ``VmHWM``
(peak resident set, from ``/proc/PID/status``), read after

1. a cold start and a first wave of ``concurrency`` simultaneous ``POST /jobs``
   (truss imported under load), then
2. a second wave of the same size on the warm worker (growth would show here),

with 50 ms of Baseten latency so the requests really overlap, and
``THREADS=concurrency`` so all of them are in flight at once (the deployed
``train_http`` runs 8 threads: this is the harsher case). The instance
estimate adds the arbiter's private memory (its other pages are shared with
the worker, counted once by the container).

Run alone: ``python -m bench.memory``.
"""

from __future__ import annotations

import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from bench.harness import (
    REQUEST,
    baseten,
    expect,
    first_answer,
    launch,
    rollup_kb,
    service_env,
    status_kb,
    workdir,
)
from loopback.functions import child_pids

API_KEY = "bt-bench-" + secrets.token_hex(16)
GOAL_MB = 384
INSTANCE_SIZES_MIB = (256, 512, 1024, 2048, 4096)


def _mb(kb: int) -> float:
    return round(kb / 1024, 1)


def _wave(url: str, concurrency: int) -> float:
    def submit(_: int) -> int:
        response = requests.post(f"{url}/jobs", json=REQUEST, timeout=120)
        expect(response, 201, "POST /jobs")
        return response.status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(submit, range(concurrency)))
    return time.perf_counter() - started


def recommend(peak_mb: float, headroom: float = 0.6) -> int:
    """The smallest instance size of which ``peak_mb`` uses at most ``headroom``.

    40 % spare covers what this run does not see: larger request bodies, a
    slower Baseten keeping more requests in flight, /tmp (in memory on Cloud
    Run) and allocator fragmentation over a long-lived instance.
    """
    for size in INSTANCE_SIZES_MIB:
        if peak_mb <= size * 1.048576 * headroom:
            return size
    return INSTANCE_SIZES_MIB[-1]


def run(concurrency: int = 20, latency_ms: int = 50) -> dict[str, Any]:
    with baseten(API_KEY) as bt, workdir("memory") as tmp:
        bt.configure(latency_ms=latency_ms)
        function = launch("train_http", service_env(bt, tmp), threads=concurrency)
        try:
            _, response = first_answer(function, "GET", "/healthz")
            expect(response, 200, "train_http /healthz")
            arbiter = function.process.pid
            worker = function.worker_pid()
            if worker == arbiter or child_pids(worker):
                raise RuntimeError(f"unexpected process tree under {arbiter}")
            idle_kb = status_kb(worker, "VmRSS")
            cold_wave_s = _wave(function.url, concurrency)
            cold_peak_kb = status_kb(worker, "VmHWM")
            warm_wave_s = _wave(function.url, concurrency)
            peak_kb = status_kb(worker, "VmHWM")
            after_kb = status_kb(worker, "VmRSS")
            arbiter_rollup = rollup_kb(arbiter)
            arbiter_private_kb = arbiter_rollup.get("Private_Clean", 0) + arbiter_rollup.get(
                "Private_Dirty", 0
            )
            arbiter_rss_kb = status_kb(arbiter, "VmRSS")
            pss_kb = rollup_kb(worker).get("Pss", 0) + arbiter_rollup.get("Pss", 0)
        finally:
            function.close()
            bt.configure(latency_ms=0)
        jobs = len(bt.jobs())
    peak_mb = _mb(peak_kb)
    instance_mb = _mb(peak_kb + arbiter_private_kb)
    return {
        "concurrency": concurrency,
        "latency_ms": latency_ms,
        "jobs_created": jobs,
        "worker_idle_rss_mb": _mb(idle_kb),
        "worker_peak_after_cold_wave_mb": _mb(cold_peak_kb),
        "worker_peak_mb": peak_mb,
        "worker_rss_after_mb": _mb(after_kb),
        "arbiter_rss_mb": _mb(arbiter_rss_kb),
        "arbiter_private_mb": _mb(arbiter_private_kb),
        "instance_peak_estimate_mb": instance_mb,
        "pss_total_after_mb": _mb(pss_kb),
        "cold_wave_seconds": round(cold_wave_s, 2),
        "warm_wave_seconds": round(warm_wave_s, 2),
        "goal_mb": GOAL_MB,
        "recommended_memory_mib": recommend(instance_mb),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
