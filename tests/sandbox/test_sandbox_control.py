"""The ``/_sandbox/`` control API: faults, switches, seeding, stats, reset."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from sandbox import Sandbox
from tests.sandbox.support import API_KEY, FakeClock, Http, JobFactory, job_body


def _parse(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _jobs_path(job: dict[str, Any]) -> str:
    return f"v1/training_projects/{job['training_project_id']}/jobs/{job['id']}"


# ------------------------------------------------------------------- faults


def test_fault_on_a_route_with_count_and_method(http: Http) -> None:
    added = http.control(
        "POST",
        "faults",
        {"method": "GET", "path": r"^v1/training_projects$", "status": 503, "count": 2},
    )
    assert added.status_code == 201
    first = http.api("GET", "v1/training_projects")
    assert first.status_code == 503
    assert first.json() == {"code": "UNAVAILABLE", "message": "sandbox fault: HTTP 503"}
    # Other methods on the same path are untouched.
    assert http.api("POST", "v1/training_projects", {"training_project": {"name": "a"}}).ok
    assert http.api("GET", "v1/training_projects").status_code == 503
    assert http.api("GET", "v1/training_projects").status_code == 200
    [fault] = http.control("GET", "faults").json()["faults"]
    assert fault["hits"] == 2
    assert fault["count"] == 0


def test_fault_forever_with_custom_body_until_cleared(http: Http) -> None:
    http.control("POST", "faults", {"path": "search", "status": 502, "body": "<html>bad gw</html>"})
    for _ in range(3):
        reply = http.api("POST", "v1/training_jobs/search", {})
        assert reply.status_code == 502
        assert reply.text == "<html>bad gw</html>"
        assert reply.headers["Content-Type"].startswith("text/plain")
    assert http.control("DELETE", "faults").json() == {"faults": []}
    assert http.api("POST", "v1/training_jobs/search", {}).status_code == 200


def test_fault_429_carries_retry_after_in_body_and_header(http: Http, sandbox: Sandbox) -> None:
    sandbox.add_fault(path="training_projects", status=429, retry_after=2, count=1)
    reply = http.api("GET", "v1/training_projects")
    assert reply.status_code == 429
    # Baseten's 429 body (docs.baseten.co/reference/management-api/rate-limits).
    assert reply.json() == {
        "error": "Rate limit exceeded. Please try again later.",
        "retry_after": 2,
    }
    assert reply.headers["Retry-After"] == "2"
    assert sandbox.stats()["responses_429"] == 1


def test_fault_hang_produces_a_client_timeout(private_sandbox: Sandbox) -> None:
    # A private sandbox: the hung handler answers only when its sandbox stops.
    http = Http(private_sandbox.url, API_KEY)
    private_sandbox.add_fault(path="training_projects", status=200, hang_seconds=30, count=1)
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        http.api("GET", "v1/training_projects", timeout=0.3)
    assert time.monotonic() - started < 5
    # The hung request does not block the next one.
    assert http.api("GET", "v1/training_projects", timeout=5).status_code == 200


def test_fault_close_drops_the_connection(http: Http, sandbox: Sandbox) -> None:
    sandbox.add_fault(path="training_projects", close=True, count=1)
    with pytest.raises(requests.ConnectionError):
        http.api("GET", "v1/training_projects", timeout=5)
    assert http.api("GET", "v1/training_projects").status_code == 200


def test_fault_after_handling_creates_the_job_but_fails_the_response(
    http: Http, sandbox: Sandbox, make_job: JobFactory
) -> None:
    make_job()  # creates the project and one job
    [existing] = sandbox.jobs()
    sandbox.add_fault(method="POST", path=r"/jobs$", status=504, after_handling=True, count=1)
    with pytest.raises(AssertionError):
        make_job()  # the factory asserts a 200
    assert len(sandbox.jobs()) == 2
    assert sandbox.jobs()[0]["job"]["id"] == existing["job"]["id"]


def test_fault_spec_is_validated(http: Http) -> None:
    for bad in [
        {"status": 503},
        {"path": "(", "status": 503},
        {"path": "x", "status": 42},
        {"path": "x", "status": 503, "count": 0},
        {"path": "x", "status": 503, "bogus": 1},
    ]:
        reply = http.control("POST", "faults", bad)
        assert reply.status_code == 400, bad
        assert reply.json()["code"] == "VALIDATION_ERROR"
    assert http.control("GET", "faults").json() == {"faults": []}


def test_latency_applies_to_api_not_control(http: Http) -> None:
    http.control("POST", "config", {"latency_ms": 1000})
    elapsed: list[float] = []

    def call_api() -> None:
        started = time.monotonic()
        assert http.api("GET", "v1/training_projects").status_code == 200
        elapsed.append(time.monotonic() - started)

    thread = threading.Thread(target=call_api)
    thread.start()
    # Control answers at once, even while an API request sits in its latency.
    assert http.control("GET", "stats").status_code == 200
    assert thread.is_alive()
    thread.join()
    assert elapsed[0] >= 1.0


# ---------------------------------------------------------- config switches


def test_config_defaults_and_validation(http: Http) -> None:
    assert http.control("GET", "config").json() == {
        "step_seconds": None,
        "latency_ms": 0,
        "create_delay_ms": 0,
        "fail_new_jobs": None,
        "rate_limit_per_second": None,
        "running_steps": 2,
        "capacity_short": False,
        "forward_compat": False,
        "check_answers": True,
    }
    for bad in [
        {"latency_ms": -1},
        {"step_seconds": "2"},
        {"rate_limit_per_second": 0},
        {"fail_new_jobs": 3},
        {"capacity_short": 1},
        {"forward_compat": "yes"},
        {"check_answers": None},
        {"nope": 1},
    ]:
        assert http.control("POST", "config", bad).status_code == 400, bad
    updated = http.control("POST", "config", {"latency_ms": 5, "fail_new_jobs": "boom"}).json()
    assert updated["latency_ms"] == 5
    assert updated["fail_new_jobs"] == "boom"
    assert updated["create_delay_ms"] == 0


def test_create_delay_holds_jobs_back_and_lets_creates_overlap(
    http: Http, upload: Callable[[bytes], dict[str, str]], sandbox: Sandbox
) -> None:
    reply = http.api("POST", "v1/training_projects", {"training_project": {"name": "race"}})
    path = f"v1/training_projects/{reply.json()['training_project']['id']}/jobs"
    bodies = [job_body(upload(b"x")) for _ in range(2)]
    http.control("POST", "config", {"create_delay_ms": 1000})
    barrier = threading.Barrier(3)
    replies: list[requests.Response] = []

    def create(body: dict[str, Any]) -> None:
        barrier.wait()
        replies.append(http.api("POST", path, body))

    threads = [threading.Thread(target=create, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    barrier.wait()
    released = datetime.now(UTC)
    time.sleep(0.3)
    assert sandbox.jobs() == []  # both requests are received but not yet recorded
    for thread in threads:
        thread.join()

    assert [r.status_code for r in replies] == [200, 200]
    created = sorted(_parse(r.json()["training_job"]["created_at"]) for r in replies)
    assert created[0] >= released + timedelta(seconds=0.9)
    # Serialized creates would be a full delay apart; these waited side by side.
    assert created[1] - created[0] < timedelta(seconds=0.5)
    assert len(sandbox.jobs()) == 2


def test_fail_new_jobs_fails_only_jobs_created_while_set(
    http: Http, make_job: JobFactory, sandbox: Sandbox
) -> None:
    healthy = make_job()
    http.control("POST", "config", {"fail_new_jobs": "CUDA out of memory"})
    doomed = make_job()
    http.control("POST", "config", {"fail_new_jobs": None})
    sandbox.advance(steps=5)

    healthy_now = http.api("GET", _jobs_path(healthy)).json()["training_job"]
    doomed_now = http.api("GET", _jobs_path(doomed)).json()["training_job"]
    assert healthy_now["current_status"] == "TRAINING_JOB_COMPLETED"
    assert healthy_now["error_message"] is None
    assert doomed_now["current_status"] == "TRAINING_JOB_FAILED"
    assert doomed_now["error_message"] == "CUDA out of memory"
    checkpoints = http.api("GET", f"{_jobs_path(doomed)}/checkpoints").json()["checkpoints"]
    assert len(checkpoints) == 1  # the one written while running; no final one


def test_rate_limit_returns_429_and_recovers(clocked_sandbox: Sandbox, clock: FakeClock) -> None:
    http = Http(clocked_sandbox.url, API_KEY)
    http.control("POST", "config", {"rate_limit_per_second": 5})
    statuses = [http.api("GET", "v1/training_projects").status_code for _ in range(8)]
    assert statuses == [200] * 5 + [429] * 3
    limited = http.api("GET", "v1/training_projects")
    assert limited.json() == {
        "error": "Rate limit exceeded. Please try again later.",
        "retry_after": 1,
    }
    assert limited.headers["Retry-After"] == "1"
    assert http.control("GET", "stats").status_code == 200  # control is never limited
    clock.advance(1.001)
    assert http.api("GET", "v1/training_projects").status_code == 200
    stats = http.control("GET", "stats").json()
    assert stats["responses_429"] == 4
    assert stats["max_requests_in_any_1s_window"] == 9


def test_rate_limit_off_by_default_under_a_burst(http: Http) -> None:
    assert all(http.api("GET", "v1/training_projects").ok for _ in range(30))


# ----------------------------------------------------------- jobs control


def test_force_status_and_unknown_status_passes_through(
    http: Http, make_job: JobFactory, sandbox: Sandbox
) -> None:
    job = make_job()
    forced = http.control(
        "POST", f"jobs/{job['id']}/status", {"status": "TRAINING_JOB_PREEMPTED"}
    ).json()["training_job"]
    assert forced["current_status"] == "TRAINING_JOB_PREEMPTED"
    assert forced["updated_at"] > job["updated_at"]
    sandbox.advance(job["id"], steps=3)  # an unknown status never moves by itself
    got = http.api("GET", _jobs_path(job)).json()["training_job"]
    assert got["current_status"] == "TRAINING_JOB_PREEMPTED"

    failed = sandbox.set_status(job["id"], "TRAINING_JOB_DEPLOY_FAILED", "image pull failed")
    assert failed["error_message"] == "image pull failed"
    assert http.control("POST", "jobs/nope123/status", {"status": "X"}).status_code == 404
    assert http.control("POST", f"jobs/{job['id']}/status", {}).status_code == 400


def test_advance_endpoints_follow_the_path(http: Http, make_job: JobFactory) -> None:
    first, second = make_job(), make_job()
    seen = []
    for _ in range(4):
        reply = http.control("POST", f"jobs/{first['id']}/advance").json()
        seen.append(reply["training_jobs"][0]["current_status"])
    assert seen == [
        "TRAINING_JOB_DEPLOYING",
        "TRAINING_JOB_RUNNING",
        "TRAINING_JOB_RUNNING",
        "TRAINING_JOB_COMPLETED",
    ]
    everyone = http.control("POST", "advance", {"steps": 2}).json()["training_jobs"]
    assert [j["id"] for j in everyone] == [second["id"]]  # terminal jobs are left alone
    assert everyone[0]["current_status"] == "TRAINING_JOB_RUNNING"
    assert http.control("POST", "advance", {"steps": 0}).status_code == 400


def test_manual_checkpoints(http: Http, make_job: JobFactory) -> None:
    job = make_job()
    added = http.control("POST", f"jobs/{job['id']}/checkpoints", {"checkpoint_id": "ckpt-a"})
    assert added.status_code == 201
    checkpoint = added.json()["checkpoint"]
    assert checkpoint["checkpoint_id"] == "ckpt-a"
    assert checkpoint["training_job_id"] == job["id"]
    assert checkpoint["base_model"] == "Qwen/Qwen3-0.6B"
    assert checkpoint["lora_adapter_config"]["r"] == 16  # no RUNTIME_CONFIG: defaults
    default_id = http.control("POST", f"jobs/{job['id']}/checkpoints").json()["checkpoint"]
    listed = http.api("GET", f"{_jobs_path(job)}/checkpoints").json()["checkpoints"]
    assert [c["checkpoint_id"] for c in listed] == ["ckpt-a", default_id["checkpoint_id"]]
    duplicate = http.control("POST", f"jobs/{job['id']}/checkpoints", {"checkpoint_id": "ckpt-a"})
    assert duplicate.status_code == 400
    assert http.control("POST", "jobs/nope123/checkpoints", {}).status_code == 404


def test_stop_running_job_and_terminal_job(
    http: Http, make_job: JobFactory, sandbox: Sandbox
) -> None:
    job = make_job()
    sandbox.set_status(job["id"], "TRAINING_JOB_RUNNING")
    stopped = http.api("POST", f"{_jobs_path(job)}/stop", {})
    assert stopped.status_code == 200
    assert stopped.json()["training_job"]["current_status"] == "TRAINING_JOB_STOPPED"
    sandbox.advance(job["id"], steps=3)
    assert http.api("GET", _jobs_path(job)).json()["training_job"]["current_status"] == (
        "TRAINING_JOB_STOPPED"
    )
    again = http.api("POST", f"{_jobs_path(job)}/stop", {})
    assert again.status_code == 400
    assert "TRAINING_JOB_STOPPED" in again.json()["message"]


def test_search_ordering_and_filters(http: Http, make_job: JobFactory, sandbox: Sandbox) -> None:
    a, b, c = make_job("p1"), make_job("p2"), make_job("p1")
    sandbox.set_status(a["id"], "TRAINING_JOB_RUNNING")  # a is now the most recently updated
    sandbox.set_status(c["id"], "TRAINING_JOB_FAILED")

    def ids(body: dict[str, Any]) -> list[str]:
        reply = http.api("POST", "v1/training_jobs/search", body)
        assert reply.status_code == 200, reply.text
        return [j["id"] for j in reply.json()["training_jobs"]]

    assert ids({}) == [c["id"], b["id"], a["id"]]
    assert ids({"order_by": [{"field": "created_at", "order": "asc"}]}) == [
        a["id"],
        b["id"],
        c["id"],
    ]
    assert ids({"order_by": [{"field": "updated_at", "order": "desc"}]}) == [
        c["id"],
        a["id"],
        b["id"],
    ]
    assert ids({"project_id": a["training_project_id"]}) == [c["id"], a["id"]]
    assert ids({"statuses": ["TRAINING_JOB_RUNNING", "TRAINING_JOB_FAILED"]}) == [c["id"], a["id"]]
    assert ids({"statuses": ["TRAINING_JOB_COMPLETED"]}) == []
    assert ids({"project_id": "nope123"}) == []
    for bad in [
        {"order_by": [{"field": "name", "order": "asc"}]},
        {"statuses": "TRAINING_JOB_RUNNING"},
        {"limit": 3},
    ]:
        reply = http.api("POST", "v1/training_jobs/search", bad, probe=True)
        assert reply.status_code == 400, bad


def test_seed_creates_many_jobs(http: Http, sandbox: Sandbox) -> None:
    reply = http.control(
        "POST",
        "seed",
        {
            "projects": 3,
            "jobs_per_project": 4,
            "status": "TRAINING_JOB_RUNNING",
            "checkpoints_per_job": 1,
        },
    )
    assert reply.status_code == 201
    seeded = reply.json()
    assert len(seeded["projects"]) == 3
    assert len(seeded["job_ids"]) == len(set(seeded["job_ids"])) == 12
    running = http.api("POST", "v1/training_jobs/search", {"statuses": ["TRAINING_JOB_RUNNING"]})
    assert {j["id"] for j in running.json()["training_jobs"]} == set(seeded["job_ids"])
    project = seeded["projects"][0]
    listed = http.api("GET", f"v1/training_projects/{project['id']}/jobs").json()
    assert {j["id"] for j in listed["training_jobs"]} == set(project["job_ids"])
    checkpoints = http.api(
        "GET", f"v1/training_projects/{project['id']}/jobs/{project['job_ids'][0]}/checkpoints"
    ).json()["checkpoints"]
    assert len(checkpoints) == 1
    assert http.control("POST", "seed", {"projects": -1}).status_code == 400


def test_stats_count_api_requests_only(http: Http, make_job: JobFactory) -> None:
    make_job()
    http.api("GET", "v1/training_projects", headers={})
    http.api("GET", "v1/unknown", probe=True)
    http.control("GET", "jobs")
    stats = http.control("GET", "stats").json()
    assert stats["requests"] == 5
    assert stats["by_route"] == {
        "POST /v1/training_projects": 1,
        "GET /v1/blobs/credentials/<blob_type>": 1,
        "POST /v1/training_projects/<project_id>/jobs": 1,
        "GET /v1/training_projects": 1,
        "GET <unmatched>": 1,
    }
    assert stats["by_status"] == {"200": 3, "401": 1, "404": 1}
    assert stats["responses_429"] == 0
    assert 1 <= stats["max_requests_in_any_1s_window"] <= 5


def test_stats_max_requests_in_any_1s_window(clocked_sandbox: Sandbox, clock: FakeClock) -> None:
    http = Http(clocked_sandbox.url, API_KEY)
    for burst in (3, 6, 2):
        for _ in range(burst):
            http.api("GET", "v1/training_projects")
        clock.advance(1.5)
    stats = http.control("GET", "stats").json()
    assert stats["requests"] == 11
    assert stats["max_requests_in_any_1s_window"] == 6


def test_reset_drops_everything(http: Http, make_job: JobFactory, sandbox: Sandbox) -> None:
    make_job()
    sandbox.add_fault(path="never-matches", status=500)
    http.control("POST", "config", {"latency_ms": 1, "api_key": "sk-other"})
    assert http.control("POST", "reset").json() == {"reset": True}
    assert http.api("GET", "v1/training_projects").json() == {"training_projects": []}
    assert http.control("GET", "jobs").json() == {"jobs": []}
    assert http.control("GET", "faults").json() == {"faults": []}
    assert http.control("GET", "config").json()["latency_ms"] == 0
    assert http.control("GET", "stats").json()["requests"] == 1
