"""Idempotency under a cross-instance race: duplicates per key, and how long a duplicate lives.

Two ``train_http`` processes (two instances) receive the same request with the
same ``Idempotency-Key`` at once, six times per round, with job creation in the
sandbox slowed by ``create_delay_ms`` so that both instances push before either
job is visible. The baseline is the same burst without a key (six jobs). We
count the jobs left alive per key (must be 1), the duplicates created and
stopped, and a duplicate's lifetime (its ``created_at`` to its stop).
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import requests

from bench.harness import baseten, expect, first_answer, launch, ms, service_env, workdir

API_KEY = "bench-race-" + uuid.uuid4().hex
BODY = {"dataset_id": "HuggingFaceH4/Multilingual-Thinking", "model_id": "openai/gpt-oss-20b"}
BURST = 6
STOPPED = "TRAINING_JOB_STOPPED"


def _time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _burst(urls: list[str], key: str | None) -> list[requests.Response]:
    headers = {"Idempotency-Key": key} if key else {}

    def send(index: int) -> requests.Response:
        return requests.post(
            f"{urls[index % len(urls)]}/jobs", json=BODY, headers=headers, timeout=120
        )

    with ThreadPoolExecutor(BURST) as pool:
        return list(pool.map(send, range(BURST)))


def run(rounds: int = 5, create_delay_ms: int = 300) -> dict[str, Any]:
    with baseten(API_KEY) as bt, workdir("race") as tmp:
        functions = [launch("train_http", service_env(bt, tmp)) for _ in range(2)]
        try:
            for function in functions:
                expect(first_answer(function, "GET", "/healthz")[1], 200, "train_http /healthz")
            urls = [function.url for function in functions]
            bt.configure(create_delay_ms=create_delay_ms)
            baseline = _burst(urls, None)
            baseline_jobs = len(bt.jobs())
            bt.reset()
            bt.configure(create_delay_ms=create_delay_ms)
            live_per_key: list[int] = []
            duplicates = 0
            lifetimes: list[float] = []
            consistent = True
            for round_index in range(rounds):
                before = len(bt.jobs())
                responses = _burst(urls, f"race-{round_index}-{uuid.uuid4().hex}")
                named = {response.json()["training_job_id"] for response in responses}
                round_jobs = bt.jobs()[before:]
                live = [j for j in round_jobs if j["job"]["current_status"] != STOPPED]
                stopped = [j for j in round_jobs if j["job"]["current_status"] == STOPPED]
                consistent &= all(r.status_code in (200, 201) for r in responses)
                consistent &= len(named) == 1 and {j["job"]["id"] for j in live} == named
                live_per_key.append(len(live))
                duplicates += len(stopped)
                lifetimes += [
                    _time(j["job"]["updated_at"]) - _time(j["job"]["created_at"]) for j in stopped
                ]
        finally:
            for function in functions:
                function.close()
    return {
        "rounds": rounds,
        "burst": BURST,
        "create_delay_ms": create_delay_ms,
        "baseline_jobs_per_burst": baseline_jobs,
        "baseline_statuses": sorted(r.status_code for r in baseline),
        "max_live_jobs_per_key": max(live_per_key),
        "duplicates_created": duplicates,
        "max_duplicate_lifetime_ms": ms(max(lifetimes)) if lifetimes else 0.0,
        "every_answer_names_the_kept_job": consistent,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
