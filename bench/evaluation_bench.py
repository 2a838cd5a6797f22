"""``GET /jobs/{p}/{j}/evaluation`` vs ``GET …/metrics`` on the same long job, same run.

The sandbox (a child process) holds a job of 96,200 optimizer steps with a
validation set, written in the template's format (two lines a step, the base
model's evaluation, an evaluation and a checkpoint line an epoch of 25 steps,
five sample lines, the summary: ~200,100 log lines), with 20 ms of latency on every request
and a server-side rate limit of 100 requests/s. ``train_http`` runs under
functions-framework with ``BASETEN_MAX_REQUESTS_PER_SECOND=90``.

* The job is kept running while the two routes are timed, so neither answer is
  served from the per-instance cache; the routes alternate, ``runs`` times each.
* ratio: the evaluation's median over the metrics route's median (both read every
  log page of the job's life; the metrics route also reads Baseten's metrics).
* Then the job completes: the first evaluation of the finished job (kept), and a
  second one, with the Baseten requests it cost (counted at the sandbox).

Run alone: ``python -m bench.evaluation_bench``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import requests

from bench.harness import expect, median, ms, workdir
from bench.metrics_bench import API_KEY, _control, long_job, serve_job
from loopback.functions import FunctionServer
from loopback.servers import SandboxProcess


def _timed(url: str, **params: Any) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    response = requests.get(url, params=params, timeout=600)
    seconds = time.perf_counter() - started
    expect(response, 200, f"GET {url.rsplit('/', 1)[-1]}")
    answer: dict[str, Any] = response.json()
    return seconds, answer


def run(*, steps: int = 96_200, latency_ms: float = 20.0, runs: int = 3) -> dict[str, Any]:
    sandbox = SandboxProcess(API_KEY, None, step_seconds=0).start()
    function: FunctionServer | None = None
    try:
        url = sandbox.url
        project_id, job_id, made = long_job(
            url,
            latency_ms,
            {"steps": steps, "seconds": 2 * 86_400, "validation": True, "eval_samples": 5},
        )
        with workdir("evaluation") as tmp:
            function, path = serve_job(tmp, url, project_id, job_id)
            metrics: list[float] = []
            evaluation: list[float] = []
            answer: dict[str, Any] = {}
            for index in range(runs):
                seconds, _ = _timed(f"{path}/metrics", points=500 + index)
                metrics.append(seconds)
                seconds, answer = _timed(f"{path}/evaluation")
                evaluation.append(seconds)
            _control(url, "POST", f"jobs/{job_id}/status", {"status": "TRAINING_JOB_COMPLETED"})
            finished_first, _ = _timed(f"{path}/evaluation")
            before = _control(url, "GET", "stats")["requests"]
            finished_kept, kept = _timed(f"{path}/evaluation")
            kept_requests = _control(url, "GET", "stats")["requests"] - before
    finally:
        if function is not None:
            function.close()
        sandbox.stop()

    metrics_median, evaluation_median = median(metrics), median(evaluation)
    return {
        "steps": steps,
        "log_lines": made["lines"],
        "latency_ms": latency_ms,
        "runs": runs,
        "metrics_ms": ms(metrics_median),
        "metrics_samples_ms": [ms(s) for s in metrics],
        "evaluation_ms": ms(evaluation_median),
        "evaluation_samples_ms": [ms(s) for s in evaluation],
        "ratio": round(evaluation_median / metrics_median, 2),
        "finished_first_ms": ms(finished_first),
        "finished_kept_ms": ms(finished_kept),
        "finished_kept_baseten_requests": kept_requests,
        "answer_samples": len(answer.get("samples") or []),
        "answer_change": answer.get("change"),
        "kept_status": kept.get("status"),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
