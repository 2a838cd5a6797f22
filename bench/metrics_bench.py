"""``GET /jobs/{p}/{j}/metrics`` over a long job vs the same log pages read one after another.

The sandbox (a child process) holds a finished job of 100,000 optimizer steps
(two lines each, plus epoch lines: ~204,000 log lines) written in the
template's format, with 20 ms of latency on every request and a server-side
rate limit of 100 requests/s. ``train_http`` runs under functions-framework
with ``BASETEN_MAX_REQUESTS_PER_SECOND=90``.

* ours: ``GET …/metrics`` (every log page, read by concurrent slices, parsed
  into series as they arrive; the metrics read alongside), timed at the client.
  Each run asks for a different ``points`` so the per-instance cache of
  finished jobs never answers it.
* baseline: the same pages (1,000 lines each, oldest first) read one after
  another by the same Baseten client, without parsing.
* peak RSS growth of the serving worker (``VmHWM`` after minus ``VmRSS`` before).
* the SVG route: the first chart (imports matplotlib) and a later one.

Run alone: ``python -m bench.metrics_bench``.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import requests

from bench.harness import (
    expect,
    first_answer,
    launch,
    median,
    ms,
    status_kb,
    workdir,
)
from finetune_api.baseten.client import BasetenClient, RateLimiter
from finetune_api.baseten.log_pages import iter_lines, job_fetch
from finetune_api.core.settings import load_settings
from loopback.functions import FunctionServer
from loopback.servers import SandboxProcess

API_KEY = "bt-bench-" + secrets.token_hex(16)
SANDBOX_RATE_LIMIT = 100
RATE = 90.0


def _control(url: str, method: str, path: str, body: Any = None) -> Any:
    response = requests.request(method, f"{url}/_sandbox/{path}", json=body, timeout=600)
    response.raise_for_status()
    return response.json()


def long_job(url: str, latency_ms: float, logs: dict[str, Any]) -> tuple[str, str, Any]:
    """(project id, job id, what the sandbox wrote) of a running job seeded in the
    sandbox at ``url`` with synthetic template logs (``logs``: the sandbox's
    ``logs/synthetic`` body), then ``latency_ms`` on every request and the
    server-side rate limit."""
    seeded = _control(
        url, "POST", "seed", {"status": "TRAINING_JOB_RUNNING", "name_prefix": "long"}
    )
    project_id, job_id = seeded["projects"][0]["id"], seeded["job_ids"][0]
    made = _control(url, "POST", f"jobs/{job_id}/logs/synthetic", logs)
    _control(
        url,
        "POST",
        "config",
        {
            "latency_ms": latency_ms,
            "rate_limit_per_second": SANDBOX_RATE_LIMIT,
            # The sandbox's spec check of its own answers (~0.1 s of its CPU per
            # page) would be what both sides measure; Baseten has no such cost.
            "check_answers": False,
        },
    )
    return project_id, job_id, made


def serve_job(tmp: Path, url: str, project_id: str, job_id: str) -> tuple[FunctionServer, str]:
    """``train_http`` under functions-framework on the sandbox at ``url`` (its home in
    ``tmp``), healthy and warmed up by one ``GET`` of the job; (the server, the
    job's URL). The caller closes the server; it is closed here if a check fails."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp),
        "TMPDIR": str(tmp),
        "PYTHONUNBUFFERED": "1",
        "BASETEN_API_KEY": API_KEY,
        "BASETEN_REMOTE_URL": "https://app.baseten.co",
        "BASETEN_API_URL": url,
        "BASETEN_MAX_REQUESTS_PER_SECOND": str(int(RATE)),
    }
    function = launch("train_http", env)
    try:
        _, health = first_answer(function, "GET", "/healthz")
        expect(health, 200, "train_http /healthz")
        path = f"{function.url}/jobs/{project_id}/{job_id}"
        expect(requests.get(path, timeout=60), 200, "GET job (warm-up)")
    except BaseException:
        function.close()
        raise
    return function, path


def _sequential_pages(
    url: str, project_id: str, job_id: str, lo: int, hi: int
) -> tuple[float, int, int]:
    settings = load_settings(
        baseten_api_url=url,
        baseten_remote_url="https://app.baseten.co",
        baseten_max_requests_per_second=RATE,
    )
    client = BasetenClient(settings, lambda: API_KEY, limiter=RateLimiter(RATE, burst=3))
    started = time.perf_counter()
    lines = 0
    for page in iter_lines(job_fetch(client, project_id, job_id), lo, hi):
        lines += len(page)
    seconds = time.perf_counter() - started
    requests_made = client.request_count
    client.close()
    return seconds, lines, requests_made


def run(*, steps: int = 100_000, latency_ms: float = 20.0, runs: int = 3) -> dict[str, Any]:
    sandbox = SandboxProcess(API_KEY, None, step_seconds=0).start()
    function: FunctionServer | None = None
    try:
        url = sandbox.url
        project_id, job_id, made = long_job(
            url, latency_ms, {"steps": steps, "seconds": 2 * 86_400}
        )
        _control(url, "POST", f"jobs/{job_id}/status", {"status": "TRAINING_JOB_COMPLETED"})
        lo, hi = made["first_ns"], made["last_ns"] + 1_000_000_000

        with workdir("metrics") as tmp:
            function, path = serve_job(tmp, url, project_id, job_id)
            worker = function.worker_pid()
            rss_before_kb = status_kb(worker, "VmRSS")

            ours: list[float] = []
            baseline: list[float] = []
            baseline_lines = baseline_requests = 0
            answer: dict[str, Any] = {}
            before_429 = _control(url, "GET", "stats")["responses_429"]
            requests_before = _control(url, "GET", "stats")["requests"]
            for index in range(runs):
                started = time.perf_counter()
                response = requests.get(
                    f"{path}/metrics", params={"points": 500 + index}, timeout=600
                )
                ours.append(time.perf_counter() - started)
                expect(response, 200, "GET metrics")
                answer = response.json()
                if index == 0:
                    requests_per_answer = (
                        _control(url, "GET", "stats")["requests"] - requests_before
                    )
                seconds, baseline_lines, baseline_requests = _sequential_pages(
                    url, project_id, job_id, lo, hi
                )
                baseline.append(seconds)
            peak_growth_mb = (status_kb(worker, "VmHWM") - rss_before_kb) / 1024
            stats = _control(url, "GET", "stats")

            svg_first_started = time.perf_counter()
            first_svg = requests.get(f"{path}/metrics", params={"format": "svg"}, timeout=600)
            svg_first = time.perf_counter() - svg_first_started
            expect(first_svg, 200, "GET metrics as SVG")
            svg_again_started = time.perf_counter()
            again_svg = requests.get(
                f"{path}/metrics", headers={"Accept": "image/svg+xml"}, timeout=600
            )
            svg_again = time.perf_counter() - svg_again_started
            expect(again_svg, 200, "GET metrics as SVG (cached answer)")
    finally:
        if function is not None:
            function.close()
        sandbox.stop()

    summary = (answer.get("training") or {}).get("summary") or {}
    ours_median, baseline_median = median(ours), median(baseline)
    return {
        "steps": steps,
        "log_lines": made["lines"],
        "latency_ms": latency_ms,
        "configured_rate_per_s": RATE,
        "sandbox_rate_limit_per_s": SANDBOX_RATE_LIMIT,
        "runs": runs,
        "ours_ms": ms(ours_median),
        "ours_samples_ms": [ms(s) for s in ours],
        "baseline_ms": ms(baseline_median),
        "baseline_samples_ms": [ms(s) for s in baseline],
        "ratio": round(ours_median / baseline_median, 2),
        "baseten_requests_per_answer": requests_per_answer,
        "baseline_pages": baseline_requests,
        "baseline_lines": baseline_lines,
        "responses_429": stats["responses_429"] - before_429,
        "max_requests_in_any_1s_window": stats["max_requests_in_any_1s_window"],
        "peak_rss_growth_mb": round(peak_growth_mb, 1),
        "rss_before_mb": round(rss_before_kb / 1024, 1),
        "answer_steps": len((answer.get("training") or {}).get("steps") or []),
        "answer_summary_step": summary.get("step"),
        "svg_first_ms": ms(svg_first),
        "svg_cached_answer_ms": ms(svg_again),
        "svg_bytes": len(again_svg.content),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
