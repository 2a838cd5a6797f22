"""Retry on failure, end to end: a submit with retry.max_attempts, poll_jobs under
functions-framework resuming failed jobs through the real truss push into the sandbox, the
job's request read back through Baseten's download operation, and a verifying receiver."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from loopback.webhook_receiver import WebhookReceiver
from sandbox import Sandbox
from tests.test_deployments_poll import of_type, receiver  # noqa: F401 - fixture
from tests.test_poll_e2e import poll, poller

BODY = {"dataset_id": "HuggingFaceH4/Multilingual-Thinking", "model_id": "openai/gpt-oss-20b"}
FAILED = "TRAINING_JOB_FAILED"


def submit(server: FunctionServer, **extra: Any) -> dict[str, Any]:
    response = requests.post(f"{server.url}/jobs", json={**BODY, **extra}, timeout=60)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def config_of(entry: dict[str, Any]) -> dict[str, Any]:
    env = entry["request"]["runtime"]["environment_variables"]
    config: dict[str, Any] = json.loads(env["RUNTIME_CONFIG"])
    return config


@dataclass(frozen=True)
class RetryRig:
    """What every retry test drives: train_http, the sandbox as Baseten, the secret
    store, the verifying webhook receiver and the test's own folder (poll state)."""

    train_http: FunctionServer
    sandbox: Sandbox
    secret_manager: FakeSecretManager
    receiver: WebhookReceiver
    tmp_path: Path

    def submit(self, **extra: Any) -> dict[str, Any]:
        return submit(self.train_http, **extra)

    def failed_job(
        self, reason: str = "boom", checkpoints: int = 1, **extra: Any
    ) -> dict[str, Any]:
        """A job submitted with ``extra``, given ``checkpoints`` checkpoints, then failed."""
        job = self.submit(**extra)
        for _ in range(checkpoints):
            self.sandbox.add_checkpoint(job["training_job_id"])
        self.sandbox.set_status(job["training_job_id"], FAILED, reason)
        return job

    def poller(self, state: str = "", **extra: str) -> FunctionServer:
        """poll_jobs wired to the sandbox and the receiver, its state in ``tmp_path/state``."""
        return poller(
            self.sandbox, self.secret_manager, self.tmp_path / state, self.receiver.url, **extra
        )


@pytest.fixture(name="rig")
def rig_fixture(
    train_http: FunctionServer,
    sandbox: Sandbox,
    secret_manager: FakeSecretManager,
    receiver: WebhookReceiver,  # noqa: F811
    tmp_path: Path,
) -> RetryRig:
    return RetryRig(train_http, sandbox, secret_manager, receiver, tmp_path)


def test_failed_job_is_retried_once_per_failure_until_no_attempts_are_left(
    rig: RetryRig,
) -> None:
    first = rig.failed_job(
        job_name="flaky", retry={"max_attempts": 2}, reason="NCCL timeout", checkpoints=2
    )
    first_id, project_id = first["training_job_id"], first["training_project_id"]
    with rig.poller("a") as server:
        # Two polls at once on one instance: one new job, one retried event id.
        with ThreadPoolExecutor(2) as pool:
            reports = list(pool.map(lambda _: poll(server, {}), range(2)))
        assert all(report["jobs_failed"] == 0 for report in reports), server.output()[-3000:]
        jobs = rig.sandbox.jobs()
        assert len(jobs) == 2
        second = jobs[1]
        second_id = second["job"]["id"]
        assert second["project"]["id"] == project_id
        assert second["load_checkpoints"]["checkpoints"][0]["training_job_id"] == first_id
        assert second["load_checkpoints"]["checkpoints"][0]["checkpoint_id"] == "checkpoint-2"
        assert config_of(second)["resume_from"] == {
            "training_project_id": project_id,
            "training_job_id": first_id,
            "checkpoint_id": "checkpoint-2",
        }
        assert config_of(second)["attempt"] == 1
        assert config_of(second)["retry"] == {"max_attempts": 2}

        [failed] = of_type(rig.receiver, "training_job.failed")
        assert failed["data"]["training_job_id"] == first_id
        assert failed["data"]["retry"] == {
            "attempts_used": 0,
            "max_attempts": 2,
            "attempts_left": 2,
            "will_retry": True,
        }
        [retried] = of_type(rig.receiver, "training_job.retried")
        assert retried["id"] == f"evt_{first_id}_retried"
        data = retried["data"]
        # data.team: every event says whose (no team configured: "default").
        assert set(data) == {"failed_job", "job", "attempt", "max_attempts", "team"}
        assert data["team"] == "default"
        assert data["attempt"] == 1 and data["max_attempts"] == 2
        assert data["failed_job"]["training_job_id"] == first_id
        assert data["failed_job"]["status"] == "failed"
        assert data["job"]["training_job_id"] == second_id
        assert data["job"]["job_name"] == "flaky"
        assert data["job"]["resumed_from"]["training_job_id"] == first_id

        # Polling again changes nothing.
        poll(server, {})
        assert len(rig.sandbox.jobs()) == 2

        # The retry fails too, before any checkpoint: it starts again from the start.
        rig.sandbox.set_status(second_id, FAILED, "NCCL timeout")
        poll(server, {})
        jobs = rig.sandbox.jobs()
        assert len(jobs) == 3
        third = jobs[2]
        third_id = third["job"]["id"]
        assert third["request"]["runtime"]["load_checkpoint_config"] is None
        assert third["load_checkpoints"] is None
        assert config_of(third)["resume_from"] == {
            "training_project_id": project_id,
            "training_job_id": second_id,
            "checkpoint_id": None,
        }
        assert config_of(third)["attempt"] == 2
        retries = sorted(
            of_type(rig.receiver, "training_job.retried"), key=lambda e: e["data"]["attempt"]
        )
        assert [e["data"]["attempt"] for e in retries] == [1, 2]
        assert retries[1]["data"]["job"]["resumed_from"]["checkpoint_id"] is None

        # The last attempt fails: no attempts are left, and nothing new starts.
        rig.sandbox.set_status(third_id, FAILED, "NCCL timeout")
        poll(server, {})
        poll(server, {})
        assert len(rig.sandbox.jobs()) == 3
        last = [
            e
            for e in of_type(rig.receiver, "training_job.failed")
            if e["data"]["training_job_id"] == third_id
        ]
        assert last[0]["data"]["retry"] == {
            "attempts_used": 2,
            "max_attempts": 2,
            "attempts_left": 0,
            "will_retry": False,
        }
        ids = set(rig.receiver.unique_events)
    # Another instance (a cold start, its own poll state) sees every failure again and
    # starts nothing: each retry is found by its key.
    with rig.poller("b") as other:
        poll(other, {})
        output = other.output()
    assert len(rig.sandbox.jobs()) == 3
    assert set(rig.receiver.unique_events) == ids
    # Nothing was stopped: no duplicate was ever created.
    assert [e["job"]["current_status"] for e in rig.sandbox.jobs()] == [FAILED] * 3
    assert rig.receiver.rejections == []
    assert '"severity": "ERROR"' in output  # failed events are logged at ERROR


def test_a_stopped_job_or_one_without_retry_is_not_retried(
    rig: RetryRig,
) -> None:
    stopped = rig.submit(retry={"max_attempts": 3})
    plain = rig.submit()
    rig.sandbox.add_checkpoint(stopped["training_job_id"])
    rig.sandbox.set_status(stopped["training_job_id"], "TRAINING_JOB_STOPPED")
    rig.sandbox.set_status(plain["training_job_id"], FAILED, "boom")
    with rig.poller() as server:
        report = poll(server, {})
    assert report["jobs_failed"] == 0
    assert len(rig.sandbox.jobs()) == 2
    assert of_type(rig.receiver, "training_job.retried") == []
    [failed] = of_type(rig.receiver, "training_job.failed")
    assert "retry" not in failed["data"]


def test_poll_cost_per_failed_job(
    rig: RetryRig,
) -> None:
    """What docs/resume.md states: the Baseten calls a failed job adds to the poll."""
    plain = rig.submit()
    retried = rig.submit(retry={"max_attempts": 1})
    for job in (plain, retried):
        rig.sandbox.add_checkpoint(job["training_job_id"])
    # Waiting jobs cost the poll no checkpoint read: the two measured polls differ
    # only by the failed job each one sees.

    def cost(server: FunctionServer, job: dict[str, Any]) -> Counter[str]:
        rig.sandbox.set_status(job["training_job_id"], FAILED, "boom")
        before = Counter(rig.sandbox.stats()["by_route"])
        poll(server, {})
        return Counter(rig.sandbox.stats()["by_route"]) - before

    with rig.poller() as server:
        poll(server, {})  # the state knows both now
        without_retry = cost(server, plain)
        with_retry = cost(server, retried)
    # What any poll pays for a job that just failed: its read (it left the active
    # set), its checkpoints, its log tail; plus the search, the project list and the
    # serving watch's models list. New: one read of the job's own request.
    usual = Counter(
        {
            "POST /v1/training_jobs/search": 1,
            "GET /v1/training_projects": 1,
            "GET /v1/models": 1,
            "GET /v1/training_projects/<project_id>/jobs/<job_id>": 1,
            "GET /v1/training_projects/<project_id>/jobs/<job_id>/checkpoints": 1,
            "GET /v1/training_projects/<project_id>/jobs/<job_id>/logs": 1,
        }
    )
    download = Counter({"GET /v1/training_projects/<project_id>/jobs/<job_id>/download": 1})
    # The other (waiting) job is read for checkpoints while its creation is in the window.
    waiting = Counter({"GET /v1/training_projects/<project_id>/jobs/<job_id>/checkpoints": 1})
    assert without_retry == usual + download + waiting
    # Retrying it (from the checkpoints the poll just read): the key's search before and
    # after the push, and truss's push (project upsert, upload credentials, create); the
    # service's own project upsert happens once per instance and project.
    retry = Counter(
        {
            "POST /v1/training_jobs/search": 2,
            "POST /v1/training_projects": 2,
            "GET /v1/blobs/credentials/<blob_type>": 1,
            "POST /v1/training_projects/<project_id>/jobs": 1,
        }
    )
    assert with_retry == usual + download + retry
    assert len(rig.sandbox.jobs()) == 3


def test_two_instances_polling_at_once_leave_one_live_retry(
    rig: RetryRig,
) -> None:
    """Across instances the key's digest decides, as for submit: a racing duplicate is
    stopped at once and both polls announce the same new job under the same event id."""
    job = rig.failed_job(retry={"max_attempts": 1})
    rig.sandbox.configure(create_delay_ms=400)  # both pushes overlap
    with (
        rig.poller("a") as one,
        rig.poller("b") as two,
        ThreadPoolExecutor(2) as pool,
    ):
        reports = list(pool.map(lambda server: poll(server, {}), [one, two]))
    assert all(report["jobs_failed"] == 0 for report in reports)
    created = rig.sandbox.jobs()[1:]
    live = [e for e in created if e["job"]["current_status"] != "TRAINING_JOB_STOPPED"]
    assert len(live) == 1 and 1 <= len(created) <= 2
    retried = [e for e in rig.receiver.events if e["type"] == "training_job.retried"]
    assert {e["id"] for e in retried} == {f"evt_{job['training_job_id']}_retried"}
    assert {e["data"]["job"]["training_job_id"] for e in retried} == {live[0]["job"]["id"]}


def test_a_retry_baseten_refuses_for_now_is_made_by_the_next_poll(
    rig: RetryRig,
) -> None:
    job = rig.submit(retry={"max_attempts": 1})
    rig.sandbox.add_checkpoint(job["training_job_id"])
    with rig.poller() as server:
        poll(server, {})
        rig.sandbox.set_status(job["training_job_id"], FAILED, "boom")
        rig.sandbox.add_fault(method="POST", path=r"^v1/training_projects/[^/]+/jobs$", status=503)
        first = poll(server, {})
        assert first["jobs_failed"] == 1
        assert len(rig.sandbox.jobs()) == 1
        assert of_type(rig.receiver, "training_job.retried") == []
        rig.sandbox.clear_faults()
        second = poll(server, {})
        assert second["jobs_failed"] == 0
        third = poll(server, {})
        output = server.output()
    assert len(rig.sandbox.jobs()) == 2 and third["jobs_failed"] == 0
    [retried] = of_type(rig.receiver, "training_job.retried")
    assert retried["data"]["job"]["training_job_id"] == rig.sandbox.jobs()[1]["job"]["id"]
    assert "could not retry a failed job; the next poll tries again" in output
