"""poll_jobs end to end: a real functions-framework process, the sandbox, a verifying receiver."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from loopback.webhook_receiver import WebhookReceiver, unused_url
from sandbox import Sandbox
from tests.conftest import API_KEY, function_env

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as server:
        yield server


def poller(
    sandbox: Sandbox, secret_manager: FakeSecretManager, tmp: Path, url: str, **extra: str
) -> FunctionServer:
    env = function_env(
        sandbox,
        secret_manager,
        tmp,
        WEBHOOK_URL=url,
        WEBHOOK_SECRET=SECRET,
        BASETEN_MAX_RETRIES="1",
        POLL_STATE_FILE=str(tmp / "poll-state" / "state.json"),
        **extra,
    )
    return FunctionServer("poll_jobs", env)


def poll(server: FunctionServer, body: Any = None, method: str = "POST") -> dict[str, Any]:
    response = requests.request(method, server.url, json=body, timeout=60)
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def seed(sandbox: Sandbox, jobs: int = 1) -> list[str]:
    ids: list[str] = sandbox.seed(projects=1, jobs_per_project=jobs)["job_ids"]
    return ids


def test_lifecycle_events_are_signed_and_stable(
    sandbox: Sandbox, secret_manager: FakeSecretManager, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    [job_id] = seed(sandbox)
    with poller(sandbox, secret_manager, tmp_path, receiver.url) as server:
        first = poll(server, {})
        assert first["jobs_checked"] == 1 and first["events"] == 1
        sandbox.set_status(job_id, "TRAINING_JOB_RUNNING")
        sandbox.add_checkpoint(job_id)
        poll(server, method="GET")
        sandbox.set_status(job_id, "TRAINING_JOB_COMPLETED")
        last = poll(server, {})
        ids_before = set(receiver.unique_events)
        again = poll(server, {})
        output = server.output()
    assert set(first) >= {
        "since",
        "until",
        "jobs_checked",
        "events",
        "webhooks_delivered",
        "webhooks_failed",
        "duration_ms",
    }
    types = {event["type"] for event in receiver.unique_events.values()}
    assert types == {
        "training_job.created",
        "training_job.running",
        "training_job.checkpoint_created",
        "training_job.completed",
    }
    assert last["webhooks_failed"] == 0 and last["webhooks_delivered"] == last["events"]
    # Polling the same window again finds the same facts but posts none of them again.
    # (The completed job stays in view while inside the window, for deploy on completion.)
    assert again["events"] == 0 and again["jobs_checked"] <= 1
    assert again["state_saved"] and not again["full_sweep"]
    assert set(receiver.unique_events) == ids_before
    assert len(receiver.attempts) == len(ids_before)  # each notice posted once
    assert receiver.rejections == [] and all(a.verified for a in receiver.attempts)
    assert all("." not in event_id for event_id in receiver.unique_events)
    assert API_KEY not in output and SECRET not in output


def test_failed_job_event_carries_the_error(
    sandbox: Sandbox, secret_manager: FakeSecretManager, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    [job_id] = seed(sandbox)
    sandbox.set_status(job_id, "TRAINING_JOB_FAILED", error_message="CUDA out of memory")
    with poller(sandbox, secret_manager, tmp_path, receiver.url) as server:
        poll(server, {})
        output = server.output()
    [failed] = [e for e in receiver.unique_events.values() if e["type"] == "training_job.failed"]
    assert failed["data"]["error_message"] == "CUDA out of memory"
    assert '"severity": "ERROR"' in output and "CUDA out of memory" in output


def test_receiver_500_then_200_is_delivered_after_a_retry(
    sandbox: Sandbox, secret_manager: FakeSecretManager, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    seed(sandbox)
    receiver.respond_with(500, 200)
    with poller(sandbox, secret_manager, tmp_path, receiver.url) as server:
        report = poll(server, {})
    assert report["webhooks_delivered"] == 1 and report["webhooks_failed"] == 0
    [event_id] = receiver.unique_events
    assert [a.status for a in receiver.attempts_for(event_id)] == [500, 200]


def test_receiver_down_still_answers_200_and_counts_failures(
    sandbox: Sandbox, secret_manager: FakeSecretManager, tmp_path: Path
) -> None:
    seed(sandbox, jobs=2)
    with poller(
        sandbox, secret_manager, tmp_path, unused_url(), WEBHOOK_MAX_ATTEMPTS="2"
    ) as server:
        report = poll(server, {})
    assert report["events"] == 2 and report["webhooks_failed"] == 2
    assert report["webhooks_delivered"] == 0


def test_checkpoints_503_on_one_job_spares_the_others(
    sandbox: Sandbox, secret_manager: FakeSecretManager, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    broken, healthy = seed(sandbox, jobs=2)
    for job_id in (broken, healthy):
        sandbox.set_status(job_id, "TRAINING_JOB_RUNNING")
        sandbox.add_checkpoint(job_id)
    sandbox.add_fault(method="GET", path=rf"jobs/{broken}/checkpoints$", status=503)
    with poller(sandbox, secret_manager, tmp_path, receiver.url) as server:
        report = poll(server, {})
    assert report["jobs_failed"] == 1
    checkpoints = [
        e for e in receiver.unique_events.values() if e["type"].endswith("checkpoint_created")
    ]
    assert [e["data"]["training_job_id"] for e in checkpoints] == [healthy]
    statuses = {
        e["data"]["training_job_id"]
        for e in receiver.unique_events.values()
        if e["type"] == "training_job.running"
    }
    assert statuses == {broken, healthy}


def test_since_replays_a_window_and_bad_since_is_400(
    sandbox: Sandbox, secret_manager: FakeSecretManager, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    seed(sandbox)
    env = {"POLL_LOOKBACK_SECONDS": "1"}
    with poller(sandbox, secret_manager, tmp_path, receiver.url, **env) as server:
        time.sleep(1.2)
        missed = poll(server, {})  # the change is older than the 1 s lookback
        replay = poll(server, {"since": "2020-01-01T00:00:00Z"})
        future = requests.post(server.url, json={"since": "2999-01-01T00:00:00Z"}, timeout=30)
        bad = requests.post(server.url, json={"since": "yesterday"}, timeout=30)
        unknown = requests.post(server.url, json={"from": "2020-01-01T00:00:00Z"}, timeout=30)
    assert missed["events"] == 0
    assert replay["events"] == 1 and replay["since"].startswith("2020-01-01T00:00:00")
    for response in (future, bad, unknown):
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request"


def test_empty_poll_and_api_keys(
    sandbox: Sandbox, secret_manager: FakeSecretManager, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    with poller(
        sandbox, secret_manager, tmp_path, receiver.url, API_KEYS="poll-key-123456"
    ) as server:
        denied = requests.post(server.url, json={}, timeout=30)
        allowed = requests.post(
            server.url, json={}, headers={"X-Api-Key": "poll-key-123456"}, timeout=30
        )
        health = requests.get(f"{server.url}/healthz", timeout=30)
    assert denied.status_code == 401
    assert allowed.status_code == 200 and allowed.json()["jobs_checked"] == 0
    assert health.status_code == 200


OUT_OF_RANGE_SINCE = [
    "0001-01-01T00:00:00+01:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-01:00",
    "1969-12-31T23:59:59Z",
    "2026-13-01T00:00:00Z",
    "\uff12\uff10\uff12\uff16-01-01T00:00:00Z",  # full-width digits
]


def test_out_of_range_since_is_400(
    sandbox: Sandbox, secret_manager: FakeSecretManager, tmp_path: Path
) -> None:
    """Issue 12: dates near year 1 or 9999 answered 500 (OverflowError)."""
    with poller(sandbox, secret_manager, tmp_path, unused_url()) as server:
        answers = [
            requests.post(server.url, json={"since": since}, timeout=30)
            for since in OUT_OF_RANGE_SINCE
        ]
        output = server.output()
    for since, response in zip(OUT_OF_RANGE_SINCE, answers, strict=True):
        assert response.status_code == 400, (since, response.text)
        assert response.json()["error"]["type"] == "invalid_request"
    assert "Traceback" not in output and sandbox.stats()["requests"] == 0
