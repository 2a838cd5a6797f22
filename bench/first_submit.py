"""First submit on a cold instance, ours vs the ``truss train push`` CLI.

* ours: ``functions-framework --target train_http`` is started and sent
  ``POST /jobs`` until it accepts the connection; the clock runs from just
  before the process is spawned to the ``201`` (truss's import included).
* baseline: ``truss train push STAGED/config.py --remote "<environment>"
  --non-interactive`` for a copy of ``training_template/`` staged with the
  ``runtime_config.json`` the service writes for the same request, from just
  before the process is spawned until it exits 0. The CLI's process cannot be
  patched from outside, so it runs through a ``python -c`` wrapper that adds
  the app URL → sandbox mapping to ``API_URL_MAPPING`` and calls truss's own
  entry point, ``truss.cli.cli:truss_cli`` (what the ``truss`` script runs).
  The CLI also asks the app URL's GraphQL endpoint for the user's teams and
  lists the projects; that is part of what ``truss train push`` costs.

Both run against the same sandbox (no added latency). Also reported for both:
the time from spawn to the job's ``created_at`` in the sandbox (same clock), so
the CLI's exit (printing, interpreter shutdown) and our response can be told
apart from the work. Interleaved ``runs`` times after one discarded warm-up each.

Run alone: ``python -m bench.first_submit``.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.harness import (
    ENV_REMOTE_NAME,
    REQUEST,
    ROOT,
    Baseten,
    baseten,
    expect,
    first_answer,
    launch,
    median,
    ms,
    runtime_config,
    service_env,
    stage,
    truss_env,
    workdir,
)

API_KEY = "bt-bench-" + secrets.token_hex(16)

# argv: app URL, sandbox REST URL, then the CLI's own arguments.
CLI_WRAPPER = (
    "import sys\n"
    "from truss.remote.baseten import api\n"
    "api.API_URL_MAPPING[sys.argv[1]] = sys.argv[2]\n"
    "from truss.cli.cli import truss_cli\n"
    "truss_cli(sys.argv[3:], prog_name='truss')\n"
)


def _created_at(job: dict[str, Any]) -> float:
    """The job's ``created_at`` as seconds since the epoch."""
    stamp = str(job["job"]["created_at"]).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


def _latest_job(bt: Baseten) -> dict[str, Any]:
    jobs = bt.jobs()
    if not jobs:
        raise RuntimeError("no job reached the sandbox")
    return jobs[-1]


def _ours(bt: Baseten, env: dict[str, str]) -> tuple[float, float]:
    wall = time.time()
    function = launch("train_http", env)
    try:
        seconds, response = first_answer(function, "POST", "/jobs", json_body=REQUEST)
        expect(response, 201, "train_http first POST /jobs")
    finally:
        function.close()
    created = _created_at(_latest_job(bt)) - wall
    return seconds, created


def _cli(bt: Baseten, tmp: Path, index: int) -> tuple[float, float]:
    stage_dir = tmp / f"cli-{index}"
    stage_dir.mkdir()
    config = stage(stage_dir, runtime_config())
    env = truss_env(bt, tmp)
    args = [sys.executable, "-c", CLI_WRAPPER, bt.app_url, bt.url]
    args += ["train", "push", str(config), "--remote", ENV_REMOTE_NAME, "--non-interactive"]
    wall = time.time()
    started = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - started
    if done.returncode != 0 or "successfully created" not in done.stdout:
        raise RuntimeError(
            f"truss train push failed ({done.returncode}):\n{done.stdout[-2000:]}"
            f"\n{done.stderr[-2000:]}"
        )
    created = _created_at(_latest_job(bt)) - wall
    return seconds, created


def run(runs: int = 5) -> dict[str, Any]:
    ours: list[tuple[float, float]] = []
    cli: list[tuple[float, float]] = []
    with baseten(API_KEY) as bt, workdir("first") as tmp:
        env = service_env(bt, tmp)
        _ours(bt, env)  # warm-up: .pyc files, page cache
        _cli(bt, tmp, -1)
        for index in range(runs):
            if index % 2:
                cli.append(_cli(bt, tmp, index))
                ours.append(_ours(bt, env))
            else:
                ours.append(_ours(bt, env))
                cli.append(_cli(bt, tmp, index))
        jobs = len(bt.jobs())
    ours_s = median([total for total, _ in ours])
    cli_s = median([total for total, _ in cli])
    ours_created = median([created for _, created in ours])
    cli_created = median([created for _, created in cli])
    return {
        "runs": runs,
        "jobs_created": jobs,
        "ours_ms": ms(ours_s),
        "cli_ms": ms(cli_s),
        "ratio": round(ours_s / cli_s, 2),
        "ours_to_job_created_ms": ms(ours_created),
        "cli_to_job_created_ms": ms(cli_created),
        "ratio_to_job_created": round(ours_created / cli_created, 2),
        "samples_ms": {
            "ours": [ms(total) for total, _ in ours],
            "cli": [ms(total) for total, _ in cli],
        },
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
