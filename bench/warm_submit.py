"""Warm submit overhead: ``POST /jobs`` on a warm ``train_http`` vs truss's ``push()`` in-process.

* ours: ``POST /jobs`` to a warm ``train_http`` process (keep-alive client),
  without an ``Idempotency-Key`` and, separately, with a fresh key per request
  (the key's cost: a search of the project's jobs before and after the push).
* baseline: ``truss_train.public_api.push(Path(config.py), remote="<environment>")``
  in this process, re-staging a fresh copy of ``training_template/`` (with the
  same ``runtime_config.json``) per call and removing it after, as the service does.

Same sandbox, at 0 ms and at 50 ms of latency added to every Baseten request.
After a warm-up, the three are interleaved ``requests`` times (rotating order);
figures are p50 and p95 per variant.

Run alone: ``python -m bench.warm_submit``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from bench.harness import (
    ENV_REMOTE_NAME,
    REQUEST,
    Baseten,
    baseten,
    expect,
    first_answer,
    launch,
    ms,
    percentile,
    runtime_config,
    service_env,
    stage,
    workdir,
)

API_KEY = "bt-bench-" + secrets.token_hex(16)
LATENCIES_MS = (0, 50)


@contextmanager
def _truss_remote(bt: Baseten) -> Iterator[None]:
    """This process's truss pointed at the sandbox through the env-var remote."""
    from truss.remote.baseten import api as truss_api

    names = ("BASETEN_TRUSS_AUTH_REMOTE_URL", "BASETEN_TRUSS_AUTH_API_KEY")
    saved = {name: os.environ.get(name) for name in names}
    os.environ["BASETEN_TRUSS_AUTH_REMOTE_URL"] = bt.app_url
    os.environ["BASETEN_TRUSS_AUTH_API_KEY"] = bt.api_key
    truss_api.API_URL_MAPPING[bt.app_url] = bt.url
    try:
        yield
    finally:
        truss_api.API_URL_MAPPING.pop(bt.app_url, None)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _baseline(config: dict[str, Any]) -> Callable[[], None]:
    from truss_train import public_api

    def push() -> None:
        root = Path(tempfile.mkdtemp(prefix="bench-push-"))
        try:
            result = public_api.push(stage(root, config), remote=ENV_REMOTE_NAME)
            if not result.get("id"):
                raise RuntimeError(f"push returned no job id: {result!r}")
        finally:
            shutil.rmtree(root, ignore_errors=True)

    return push


def _ours(session: requests.Session, url: str, *, with_key: bool) -> Callable[[], None]:
    def submit() -> None:
        headers = {"Idempotency-Key": "bench-" + secrets.token_hex(8)} if with_key else {}
        response = session.post(f"{url}/jobs", json=REQUEST, headers=headers, timeout=60)
        expect(response, 201, "POST /jobs")

    return submit


def _timed(call: Callable[[], None]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _requests_per_call(bt: Baseten, call: Callable[[], None]) -> int:
    before = bt.stats()["requests"]
    call()
    return int(bt.stats()["requests"] - before)


def run(requests_per_variant: int = 20, warmup: int = 3) -> dict[str, Any]:
    result: dict[str, Any] = {"requests": requests_per_variant, "latencies": {}}
    with baseten(API_KEY) as bt, workdir("warm") as tmp, _truss_remote(bt):
        function = launch("train_http", service_env(bt, tmp))
        session = requests.Session()
        try:
            _, response = first_answer(function, "GET", "/healthz")
            expect(response, 200, "train_http /healthz")
            variants: dict[str, Callable[[], None]] = {
                "ours": _ours(session, function.url, with_key=False),
                "ours_key": _ours(session, function.url, with_key=True),
                "baseline": _baseline(runtime_config()),
            }
            for _ in range(warmup):
                for call in variants.values():
                    call()
            result["baseten_requests_per_submit"] = {
                name: _requests_per_call(bt, call) for name, call in variants.items()
            }
            names = list(variants)
            for latency in LATENCIES_MS:
                bt.configure(latency_ms=latency)
                samples: dict[str, list[float]] = {name: [] for name in names}
                for index in range(requests_per_variant):
                    shift = index % len(names)
                    for name in names[shift:] + names[:shift]:
                        samples[name].append(_timed(variants[name]))
                figures: dict[str, Any] = {}
                for name, values in samples.items():
                    figures[f"{name}_p50_ms"] = ms(percentile(values, 50))
                    figures[f"{name}_p95_ms"] = ms(percentile(values, 95))
                base50 = percentile(samples["baseline"], 50)
                figures["ratio_p50"] = round(percentile(samples["ours"], 50) / base50, 2)
                figures["ratio_p50_key"] = round(percentile(samples["ours_key"], 50) / base50, 2)
                figures["key_cost_p50_ms"] = ms(
                    percentile(samples["ours_key"], 50) - percentile(samples["ours"], 50)
                )
                result["latencies"][str(latency)] = figures
            bt.configure(latency_ms=0)
        finally:
            session.close()
            function.close()
    return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
