"""Teams (issue 29): what the team check costs, and what counting a team's use costs.

* ``check``: a warm ``POST /jobs`` and a warm ``GET /jobs/{p}/{j}`` on a ``train_http``
  whose ``API_KEYS`` has ``team:key`` entries (the team is decided at the edge, the
  team's services scope everything), against the same routes on a ``train_http``
  without teams (a plain key), both warm, same sandbox, interleaved. Ratio: p50
  with teams / p50 without. Goal: at most 1.05.
* ``limit``: ``TEAM_LIMITS`` counting at 200 active jobs across 10 teams (and 2,000
  finished ones that must not matter): Baseten requests per check (goal: 1), and our
  own time per check = the check's time minus the same search sent raw (goal:
  at most 50 ms).

Run alone: ``python -m bench.teams_bench``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import requests

from bench.harness import (
    REQUEST,
    baseten,
    expect,
    first_answer,
    launch,
    ms,
    percentile,
    service_env,
    workdir,
)

API_KEY = "bt-bench-" + secrets.token_hex(16)
PLAIN = "plain-key-" + secrets.token_hex(8)
TEAM = "alpha-key-" + secrets.token_hex(8)
TEAMS = 10
ACTIVE_PER_TEAM = 20
FINISHED = 2000


def _timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _check(requests_per_variant: int, bt: Any, tmp: Any) -> dict[str, Any]:
    plain = launch("train_http", service_env(bt, tmp / "plain", API_KEYS=PLAIN))
    teams = launch(
        "train_http",
        service_env(bt, tmp / "teams", API_KEYS=f"alpha:{TEAM},beta:{PLAIN}x"),
    )
    session = requests.Session()
    try:
        for function in (plain, teams):
            _, response = first_answer(function, "GET", "/healthz")
            expect(response, 200, "train_http /healthz")

        def submit(url: str, key: str, body: dict[str, Any]) -> Callable[[], Any]:
            def call() -> Any:
                response = session.post(
                    f"{url}/jobs", json=body, headers={"X-Api-Key": key}, timeout=60
                )
                expect(response, 201, "POST /jobs")
                return response.json()

            return call

        def read(url: str, key: str, job: dict[str, Any]) -> Callable[[], Any]:
            path = f"{url}/jobs/{job['training_project_id']}/{job['training_job_id']}"

            def call() -> None:
                expect(session.get(path, headers={"X-Api-Key": key}, timeout=60), 200, "GET")

            return call

        variants = {
            "submit_plain": submit(plain.url, PLAIN, REQUEST),
            # The same request in the team's projects (alpha-…).
            "submit_teams": submit(
                teams.url, TEAM, {**REQUEST, "project_name": f"alpha-{REQUEST['project_name']}"}
            ),
        }
        jobs = {name: call() for name, call in variants.items()}
        variants["get_plain"] = read(plain.url, PLAIN, jobs["submit_plain"])
        variants["get_teams"] = read(teams.url, TEAM, jobs["submit_teams"])
        for _ in range(3):
            for call in variants.values():
                call()
        names = list(variants)
        samples: dict[str, list[float]] = {name: [] for name in names}
        for index in range(requests_per_variant):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                samples[name].append(_timed(variants[name]))
        figures: dict[str, Any] = {}
        for name, values in samples.items():
            figures[f"{name}_p50_ms"] = ms(percentile(values, 50))
        for route in ("submit", "get"):
            figures[f"ratio_{route}_p50"] = round(
                percentile(samples[f"{route}_teams"], 50)
                / percentile(samples[f"{route}_plain"], 50),
                3,
            )
        return figures
    finally:
        session.close()
        plain.close()
        teams.close()


def _limit(runs: int, bt: Any) -> dict[str, Any]:
    from finetune_api.baseten.client import BasetenClient
    from finetune_api.core.settings import load_settings
    from finetune_api.jobs.quota import ACTIVE_STATUSES, TeamQuota

    bt.reset()
    bt.control(
        "POST",
        "seed",
        {
            "projects": 20,
            "jobs_per_project": FINISHED // 20,
            "name_prefix": "old",
            "status": "TRAINING_JOB_COMPLETED",
        },
    )
    for team in range(TEAMS):
        bt.control(
            "POST",
            "seed",
            {
                "projects": 1,
                "jobs_per_project": ACTIVE_PER_TEAM,
                "name_prefix": f"team{team}",
                "status": "TRAINING_JOB_RUNNING",
            },
        )
    settings = load_settings(
        {}, baseten_api_key=bt.api_key, baseten_api_url=bt.url, baseten_remote_url=bt.app_url
    )
    client = BasetenClient(settings, lambda: bt.api_key)
    limits = {"*": {"max_active_jobs": 1000, "max_active_gpus": 100000}}
    quota = TeamQuota(limits, "team3", None, client, None)
    assert quota.use() == (ACTIVE_PER_TEAM, ACTIVE_PER_TEAM), quota.use()
    before = bt.stats()["requests"]
    checks = [_timed(lambda: quota.check(1)) for _ in range(runs)]
    per_check = (bt.stats()["requests"] - before) / runs
    raw_session = requests.Session()
    body = {
        "project_id": None,
        "job_id": None,
        "statuses": list(ACTIVE_STATUSES),
        "order_by": [{"field": "created_at", "order": "desc"}],
    }

    def raw() -> None:
        response = raw_session.post(
            f"{bt.url}/v1/training_jobs/search",
            json=body,
            headers={"Authorization": f"Api-Key {bt.api_key}"},
            timeout=60,
        )
        response.raise_for_status()
        response.json()

    raws = [_timed(raw) for _ in range(runs)]
    from finetune_api.jobs.quota import team_use

    active = client.search_jobs(statuses=list(ACTIVE_STATUSES))
    counts = [_timed(lambda: team_use(active, "team3-")) for _ in range(runs)]
    client.close()
    raw_session.close()
    own = percentile(checks, 50) - percentile(raws, 50)
    return {
        "active_jobs": TEAMS * ACTIVE_PER_TEAM,
        "finished_jobs": FINISHED,
        "baseten_requests_per_check": per_check,
        "check_p50_ms": ms(percentile(checks, 50)),
        "raw_search_p50_ms": ms(percentile(raws, 50)),
        # The check minus the raw search (noisy), and the count alone over the answer.
        "own_p50_ms": ms(max(own, percentile(counts, 50))),
        "count_p50_ms": ms(percentile(counts, 50)),
    }


def run(requests_per_variant: int = 40, runs: int = 20) -> dict[str, Any]:
    with baseten(API_KEY) as bt, workdir("teams") as tmp:
        (tmp / "plain").mkdir()
        (tmp / "teams").mkdir()
        result = {"check": _check(requests_per_variant, bt, tmp), "limit": _limit(runs, bt)}
    check, limit = result["check"], result["limit"]
    result["goals"] = {
        "team check <= 5% on a warm submit": check["ratio_submit_p50"] <= 1.05,
        "team check <= 5% on GET /jobs/{p}/{j}": check["ratio_get_p50"] <= 1.05,
        "one Baseten search per limit check": limit["baseten_requests_per_check"] == 1,
        "limit check <= 50 ms of our own time": limit["own_p50_ms"] <= 50,
    }
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
