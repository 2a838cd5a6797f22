"""The status clock: one step every ``step_seconds``, computed from time on read."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from loopback.servers import LocalS3
from sandbox import Sandbox
from tests.sandbox.support import API_KEY, FakeClock, Http, JobFactory, job_body


def _plus(stamp: str, seconds: int) -> str:
    """``stamp`` (RFC 3339, microseconds) plus whole ``seconds``, same format."""
    moment = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return (moment + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _create(http: Http, sandbox: Sandbox, local_key: str) -> dict[str, Any]:
    project = http.api("POST", "v1/training_projects", {"training_project": {"name": "clock"}})
    project_id = project.json()["training_project"]["id"]
    artifact = {"s3_bucket": sandbox.state.s3.bucket, "s3_key": local_key}
    reply = http.api(
        "POST",
        f"v1/training_projects/{project_id}/jobs",
        job_body(
            artifact,
            runtime={
                "start_commands": ["python train.py"],
                "environment_variables": {
                    "MODEL_ID": "m/x",
                    "RUNTIME_CONFIG": '{"hyperparameters": {"lora_rank": 32}}',
                },
                "artifacts": [artifact],
            },
        ),
    )
    assert reply.status_code == 200, reply.text
    job: dict[str, Any] = reply.json()["training_job"]
    return job


def _put(sandbox: Sandbox, s3: LocalS3, key: str) -> None:
    sandbox.state.s3.ensure_bucket()
    s3.client().put_object(Bucket=sandbox.state.s3.bucket, Key=key, Body=b"x")


def test_status_steps_on_a_fake_clock(
    clocked_sandbox: Sandbox, clock: FakeClock, local_s3: LocalS3
) -> None:
    http = Http(clocked_sandbox.url, API_KEY)
    _put(clocked_sandbox, local_s3, "clock/a.tgz")
    job = _create(http, clocked_sandbox, "clock/a.tgz")
    created = job["created_at"]
    path = f"v1/training_projects/{job['training_project_id']}/jobs/{job['id']}"

    def read() -> dict[str, Any]:
        got: dict[str, Any] = http.api("GET", path).json()["training_job"]
        return got

    def checkpoints() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = http.api("GET", f"{path}/checkpoints").json()["checkpoints"]
        return found

    clock.advance(9.9)
    assert read()["current_status"] == "TRAINING_JOB_CREATED"
    clock.advance(0.101)  # timestamps are unique, so created_at is a few µs past the clock
    deploying = read()
    assert deploying["current_status"] == "TRAINING_JOB_DEPLOYING"
    # Stamped at the step boundary, not at the time of the read.
    assert deploying["updated_at"] == _plus(created, 10)
    assert deploying["created_at"] == job["created_at"]

    clock.advance(25)  # t = 35 s: running since 20, a checkpoint at 30
    running = read()
    assert running["current_status"] == "TRAINING_JOB_RUNNING"
    assert running["updated_at"] == _plus(created, 20)
    [mid] = checkpoints()
    assert mid["created_at"] == _plus(created, 30)
    assert mid["lora_adapter_config"]["r"] == 32

    clock.advance(5)  # t = 40 s
    done = read()
    assert done["current_status"] == "TRAINING_JOB_COMPLETED"
    assert done["updated_at"] == _plus(created, 40)
    assert [c["created_at"] for c in checkpoints()] == [_plus(created, 30), _plus(created, 40)]

    clock.advance(1000)
    assert read() == done  # terminal: nothing moves any more


def test_pausing_the_clock_does_not_replay_the_past(
    clocked_sandbox: Sandbox, clock: FakeClock, local_s3: LocalS3
) -> None:
    http = Http(clocked_sandbox.url, API_KEY)
    _put(clocked_sandbox, local_s3, "clock/b.tgz")
    job = _create(http, clocked_sandbox, "clock/b.tgz")
    path = f"v1/training_projects/{job['training_project_id']}/jobs/{job['id']}"
    http.control("POST", "config", {"step_seconds": 0})
    clock.advance(100)
    assert http.api("GET", path).json()["training_job"]["current_status"] == (
        "TRAINING_JOB_CREATED"
    )
    http.control("POST", "config", {"step_seconds": 10})
    clock.advance(9)
    assert http.api("GET", path).json()["training_job"]["current_status"] == (
        "TRAINING_JOB_CREATED"
    )
    clock.advance(1.001)
    assert http.api("GET", path).json()["training_job"]["current_status"] == (
        "TRAINING_JOB_DEPLOYING"
    )


def test_forced_status_restarts_the_clock_from_there(
    clocked_sandbox: Sandbox, clock: FakeClock, local_s3: LocalS3
) -> None:
    http = Http(clocked_sandbox.url, API_KEY)
    _put(clocked_sandbox, local_s3, "clock/c.tgz")
    job = _create(http, clocked_sandbox, "clock/c.tgz")
    path = f"v1/training_projects/{job['training_project_id']}/jobs/{job['id']}"
    clock.advance(5)
    clocked_sandbox.set_status(job["id"], "TRAINING_JOB_RUNNING")
    clock.advance(9)
    assert http.api("GET", f"{path}/checkpoints").json()["checkpoints"] == []
    clock.advance(1.001)
    assert len(http.api("GET", f"{path}/checkpoints").json()["checkpoints"]) == 1
    clock.advance(10)
    assert http.api("GET", path).json()["training_job"]["current_status"] == (
        "TRAINING_JOB_COMPLETED"
    )


def test_real_clock_runs_a_job_to_completion(http: Http, make_job: JobFactory) -> None:
    http.control("POST", "config", {"step_seconds": 0.05})
    job = make_job()
    path = f"v1/training_projects/{job['training_project_id']}/jobs/{job['id']}"
    seen: list[str] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status = http.api("GET", path).json()["training_job"]["current_status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == "TRAINING_JOB_COMPLETED":
            break
        time.sleep(0.02)
    order = [
        "TRAINING_JOB_CREATED",
        "TRAINING_JOB_DEPLOYING",
        "TRAINING_JOB_RUNNING",
        "TRAINING_JOB_COMPLETED",
    ]
    assert seen[-1] == "TRAINING_JOB_COMPLETED"
    assert seen == [s for s in order if s in seen]  # never backwards
    checkpoints = http.api("GET", f"{path}/checkpoints").json()["checkpoints"]
    assert len(checkpoints) == 2
