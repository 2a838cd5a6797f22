"""Benchmark of ``poll_jobs``' Baseten reads: concurrent poll vs the same reads in sequence.

The Baseten sandbox runs in a child process (so peak RSS is this process's
own), seeded with 1,000 running jobs (one checkpoint each) across 20 projects, 20 ms of latency
added to every request and a server-side rate limit of 100 requests/s (so any
burst over Baseten's documented limit shows up as a 429). Signed webhooks go to
a local verifying receiver.

1. ``poll``: the real poll (1 search + 1 checkpoints read per job; 2,000 events,
   each signed and delivered) at the configured client rate limit.
2. ``sequential``: the same 1,001 reads one after another.
3. ``concurrency_only``: the poll again with neither rate limit and no
   webhooks (the same reads as 2.), to show what the worker pool alone buys
   when the rate limit does not bind.

Run: ``python -m bench.poll_bench`` (or ``run()`` from code; returns a dict).
"""

from __future__ import annotations

import base64
import json
import logging
import resource
import secrets
import time
from typing import Any

import requests

from finetune_api.baseten.client import BasetenClient, RateLimiter
from finetune_api.core.logs import LOGGER_NAME, configure
from finetune_api.core.secrets import SecretStore
from finetune_api.core.settings import Settings, load_settings
from finetune_api.notify.events import EventSink
from finetune_api.polling.poller import poll
from loopback.servers import SandboxProcess
from loopback.webhook_receiver import WebhookReceiver

API_KEY = "bt-bench-" + secrets.token_hex(16)
WEBHOOK_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
SANDBOX_RATE_LIMIT = 100


def _rss_mb() -> float:
    """Current resident set size of this process."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Control:
    """The sandbox's ``/_sandbox/`` control API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = requests.post(f"{self.url}/_sandbox/{path}", json=body, timeout=60)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        response = requests.get(f"{self.url}/_sandbox/stats", timeout=10)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats


def _settings(url: str, receiver: str, rate: float, concurrency: int) -> Settings:
    return load_settings(
        baseten_api_url=url,
        baseten_remote_url="https://app.baseten.co",
        baseten_max_requests_per_second=min(rate, 90),
        poll_concurrency=concurrency,
        poll_lookback_seconds=3600,
        webhook_url=receiver,
        webhook_secret=WEBHOOK_SECRET,
    )


def run(
    *,
    projects: int = 20,
    jobs_per_project: int = 50,
    latency_ms: float = 20.0,
    rate: float = 90.0,
    concurrency: int = 16,
) -> dict[str, Any]:
    """Run the three phases and return their figures."""
    configure()
    logger = logging.getLogger(LOGGER_NAME)
    level = logger.level
    logger.setLevel(logging.WARNING)  # 1,000 event lines per poll would drown the output
    sandbox = SandboxProcess(API_KEY, None, step_seconds=0).start()
    receiver = WebhookReceiver(WEBHOOK_SECRET).start()
    try:
        control = _Control(sandbox.url)
        control.post(
            "seed",
            {
                "projects": projects,
                "jobs_per_project": jobs_per_project,
                "status": "TRAINING_JOB_RUNNING",
                "checkpoints_per_job": 1,
            },
        )
        control.post(
            "config", {"latency_ms": latency_ms, "rate_limit_per_second": SANDBOX_RATE_LIMIT}
        )
        settings = _settings(sandbox.url, receiver.url, rate, concurrency)
        rss_before = _rss_mb()

        # 1. The poll, at the configured rate limit.
        client = BasetenClient(settings, lambda: API_KEY, limiter=RateLimiter(rate))
        sink = EventSink(settings, SecretStore(settings))
        started = time.perf_counter()
        report = poll(settings, client, sink, None)
        poll_seconds = time.perf_counter() - started
        poll_stats = control.stats()
        poll_requests = client.request_count

        # 2. The same reads, one after another.
        sequential = BasetenClient(settings, lambda: API_KEY, limiter=RateLimiter(rate))
        started = time.perf_counter()
        for job in sequential.search_jobs():
            sequential.list_checkpoints(str(job["training_project_id"]), str(job["id"]))
        sequential_seconds = time.perf_counter() - started

        # 3. The poll with no rate limit on either side and events only logged
        # (reads only, like the sequential run): what the worker pool alone buys.
        control.post("config", {"rate_limit_per_second": None})
        unlimited = BasetenClient(settings, lambda: API_KEY, limiter=RateLimiter(1e6))
        quiet = settings.replace(webhook_url=None)
        started = time.perf_counter()
        poll(quiet, unlimited, EventSink(quiet, None), None)
        unlimited_seconds = time.perf_counter() - started
        final_stats = control.stats()
    finally:
        receiver.stop()
        sandbox.stop()
        logger.setLevel(level)

    reached = poll_requests / poll_seconds
    return {
        "jobs": projects * jobs_per_project,
        "projects": projects,
        "latency_ms": latency_ms,
        "concurrency": concurrency,
        "configured_rate_per_s": rate,
        "sandbox_rate_limit_per_s": SANDBOX_RATE_LIMIT,
        "poll": {
            "seconds": round(poll_seconds, 2),
            "requests": poll_requests,
            "events": report.events,
            "webhooks_delivered": report.webhooks_delivered,
            "webhooks_failed": report.webhooks_failed,
            "jobs_failed": report.jobs_failed,
            "request_rate_per_s": round(reached, 1),
            "max_requests_in_any_1s_window": poll_stats["max_requests_in_any_1s_window"],
            "responses_429": poll_stats["responses_429"],
        },
        "sequential_seconds": round(sequential_seconds, 2),
        "speedup_vs_sequential": round(sequential_seconds / poll_seconds, 2),
        "concurrency_only": {
            "seconds": round(unlimited_seconds, 2),
            "speedup_vs_sequential": round(sequential_seconds / unlimited_seconds, 2),
        },
        "responses_429_total": final_stats["responses_429"],
        "rss_before_poll_mb": round(rss_before, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        # The bound the rate limit sets on any speedup over sequential reads.
        "speedup_ceiling_at_this_rate": round(rate * sequential_seconds / (poll_requests or 1), 2),
    }


def main() -> None:
    result = run()
    p = result["poll"]
    print(json.dumps(result, indent=2))
    print()
    print(
        f"poll of {result['jobs']} jobs: {p['seconds']} s for {p['requests']} Baseten requests "
        f"({p['request_rate_per_s']}/s; limit {result['configured_rate_per_s']}/s; "
        f"busiest second {p['max_requests_in_any_1s_window']}; 429s {p['responses_429']})"
    )
    print(
        f"same reads in sequence: {result['sequential_seconds']} s -> "
        f"{result['speedup_vs_sequential']}x faster "
        f"(ceiling at this rate limit: {result['speedup_ceiling_at_this_rate']}x)"
    )
    print(
        f"without any rate limit: {result['concurrency_only']['seconds']} s -> "
        f"{result['concurrency_only']['speedup_vs_sequential']}x faster"
    )
    print(
        f"peak RSS {result['peak_rss_mb']} MB (before the poll {result['rss_before_poll_mb']} MB)"
    )


if __name__ == "__main__":
    main()
