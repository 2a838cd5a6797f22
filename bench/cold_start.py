"""Cold start: process start → first ``200``, ours vs a bare functions-framework function.

* ``train_http``: ``GET /healthz`` (contacts nothing).
* ``poll_jobs``: a no-op poll, ``POST /`` with ``{}`` against an empty sandbox
  (settings, the API key and one Baseten search are on this path).
* ``poll_jobs_gcs``: the same with the poll state in Cloud Storage (a local
  fake-gcs-server): what the storage client's import adds to the first poll.
* baseline: ``bench/hello_main.py``, ``GET /healthz``.

Each process is started, timed to its first answer and stopped; the three are
interleaved (rotating order) ``runs`` times after one discarded warm-up round
(the first import of a module writes its ``.pyc``). Figures are medians.

Run alone: ``python -m bench.cold_start``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from bench.harness import (
    BENCH_DIR,
    Baseten,
    baseten,
    expect,
    first_answer,
    launch,
    median,
    ms,
    service_env,
    workdir,
)
from loopback.functions import FunctionServer

API_KEY = "bt-bench-" + secrets.token_hex(16)


def _hello(bt: Baseten, env: dict[str, str]) -> float:
    function = launch("hello", env, source=BENCH_DIR / "hello_main.py")
    try:
        seconds, response = first_answer(function, "GET", "/healthz")
        expect(response, 200, "hello /healthz")
        return seconds
    finally:
        function.close()


def _train_http(bt: Baseten, env: dict[str, str]) -> float:
    function = launch("train_http", env)
    try:
        seconds, response = first_answer(function, "GET", "/healthz")
        expect(response, 200, "train_http /healthz")
        return seconds
    finally:
        function.close()


def _poll_jobs(bt: Baseten, env: dict[str, str]) -> float:
    function: FunctionServer = launch("poll_jobs", env, threads=1)
    try:
        seconds, response = first_answer(function, "POST", "/", json_body={})
        expect(response, 200, "poll_jobs POST /")
        return seconds
    finally:
        function.close()


def run(runs: int = 7) -> dict[str, Any]:
    from loopback.servers import LocalGcs

    with LocalGcs() as gcs:
        gcs.client().create_bucket("bench-state")
        return _run(runs, gcs)


def _run(runs: int, gcs: Any) -> dict[str, Any]:

    def poll_jobs_gcs(bt: Baseten, env: dict[str, str]) -> float:
        extra = {"POLL_STATE_BUCKET": "bench-state", "STORAGE_EMULATOR_HOST": gcs.host}
        return _poll_jobs(bt, {**env, **extra})

    cases: dict[str, Callable[[Baseten, dict[str, str]], float]] = {
        "hello": _hello,
        "train_http": _train_http,
        "poll_jobs": _poll_jobs,
        "poll_jobs_gcs": poll_jobs_gcs,
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    with baseten(API_KEY) as bt, workdir("cold") as tmp:
        env = service_env(bt, tmp)
        for name in names:  # warm-up: .pyc files, page cache
            cases[name](bt, env)
        for round_ in range(runs):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                samples[name].append(cases[name](bt, env))
        searches = bt.stats()["by_route"].get("POST /v1/training_jobs/search", 0)
    hello = median(samples["hello"])
    result: dict[str, Any] = {
        "runs": runs,
        "samples_ms": {name: [ms(s) for s in values] for name, values in samples.items()},
        "hello_ms": ms(hello),
        "baseten_searches": searches,
    }
    for name in ("train_http", "poll_jobs", "poll_jobs_gcs"):
        value = median(samples[name])
        result[f"{name}_ms"] = ms(value)
        result[f"{name}_ratio"] = round(value / hello, 2)
    return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
