"""Issue 21's two figures: Baseten requests for ``metrics?since=1970``, and a bz2 bomb.

``python -m bench.hostile_bounds`` prints one JSON object:

* ``metrics_since_1970``: Baseten requests (counted at the sandbox) for one
  ``GET …/metrics?since=1970-01-01T00:00:00Z`` of a finished sandbox job;
* ``bz2_archive``: seconds and peak memory (tracemalloc, bytes) for the poll's
  archive reader on a bz2 tar of 300,000 empty members (about 3.5 KB).

Each part runs in a child process, so neither inherits the other's memory.
"""

from __future__ import annotations

import bz2
import json
import subprocess
import sys
import tarfile
import time
import tracemalloc
from typing import Any


def bomb(members: int = 300_000) -> bytes:
    """A bz2 tar of ``members`` empty members (one header block each), as the issue's."""
    header = tarfile.TarInfo("e").tobuf(tarfile.USTAR_FORMAT)
    compressor = bz2.BZ2Compressor(9)
    parts = [compressor.compress(header * 1000) for _ in range(members // 1000)]
    return b"".join([*parts, compressor.compress(bytes(1024)), compressor.flush()])


def archive_figure() -> dict[str, Any]:
    from finetune_api.jobs.runtime_config import runtime_config_from_archive

    data = bomb()
    tracemalloc.start()
    started = time.perf_counter()
    result = runtime_config_from_archive(data)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "archive_bytes": len(data),
        "seconds": round(seconds, 3),
        "peak_bytes": peak,
        "result": repr(result),
    }


def metrics_figure() -> dict[str, Any]:
    from finetune_api.baseten.client import BasetenClient, RateLimiter
    from finetune_api.core.settings import load_settings
    from finetune_api.insights.job_insights import JobInsights, metrics_query
    from loopback.servers import start_sandbox

    key = "bt-bench-0123456789abcdef"
    sandbox = start_sandbox(key, None)
    try:
        seeded = sandbox.seed(status="TRAINING_JOB_COMPLETED")
        project_id, job_id = seeded["projects"][0]["id"], seeded["job_ids"][0]
        sandbox.synthesize_logs(job_id, steps=200, seconds=600)
        settings = load_settings(baseten_api_url=sandbox.url, baseten_max_requests_per_second=90)
        client = BasetenClient(settings, lambda: key, limiter=RateLimiter(10_000))
        insights = JobInsights(settings, client)
        route = "GET /v1/training_projects/<project_id>/jobs/<job_id>/logs"
        before = sandbox.stats()
        started = time.perf_counter()
        outcome = "answered"
        try:
            insights.metrics(project_id, job_id, metrics_query({"since": "1970-01-01T00:00:00Z"}))
        except Exception as error:  # noqa: BLE001 - reported
            outcome = f"{type(error).__name__}: {getattr(error, 'message', error)}"
        seconds = time.perf_counter() - started
        after = sandbox.stats()
        client.close()
        return {
            "baseten_requests": after["requests"] - before["requests"],
            "log_requests": after["by_route"].get(route, 0) - before["by_route"].get(route, 0),
            "seconds": round(seconds, 3),
            "outcome": outcome,
        }
    finally:
        sandbox.stop()


def main() -> None:
    if len(sys.argv) > 1:
        figure = {"archive": archive_figure, "metrics": metrics_figure}[sys.argv[1]]()
        print(json.dumps(figure))
        return
    out = {}
    for name, key in (("metrics", "metrics_since_1970"), ("archive", "bz2_archive")):
        done = subprocess.run(
            [sys.executable, "-m", "bench.hostile_bounds", name],
            capture_output=True,
            text=True,
            check=True,
        )
        out[key] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
