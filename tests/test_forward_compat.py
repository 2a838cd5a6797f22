"""A newer Baseten: unknown fields on every object, unknown statuses. Nothing of ours breaks.

The sandbox's ``forward_compat`` mode adds a field this client has never seen
to every object it answers and passes jobs through an unknown status
(``TRAINING_JOB_PREEMPTED``) on their way to running; a forced unknown terminal
status is tried too. Every route of train_http, the poller (a real
functions-framework process) and the Python API are driven through it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

import finetune_api
from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from loopback.webhook_receiver import WebhookReceiver
from sandbox import Sandbox
from tests.test_http_routes import submit
from tests.test_poll_e2e import SECRET, poll, poller
from tests.test_python_api import DATASET, MODEL
from tests.test_python_api import configured as configured

UNKNOWN_DONE = "TRAINING_JOB_ARCHIVED"  # a terminal-sounding status nobody knows yet


@pytest.fixture
def newer(sandbox: Sandbox) -> Sandbox:
    sandbox.configure(forward_compat=True)
    return sandbox


def test_every_route_works_against_a_newer_baseten(
    train_http: FunctionServer, newer: Sandbox
) -> None:
    job = submit(train_http, job_name="fc")
    project_id, job_id = job["training_project_id"], job["training_job_id"]
    assert job["status"] == "created"
    path = f"{train_http.url}/jobs/{project_id}/{job_id}"
    newer.advance(job_id, steps=2)  # DEPLOYING, then the unknown PREEMPTED
    found = requests.get(path, timeout=30)
    assert found.status_code == 200 and found.json()["status"] == "preempted"
    newer.advance(job_id, steps=2)  # RUNNING, a checkpoint
    found = requests.get(path, timeout=30).json()
    assert found["status"] == "running" and len(found["checkpoints"]) == 1
    checkpoints = requests.get(f"{path}/checkpoints", timeout=30)
    assert checkpoints.status_code == 200 and len(checkpoints.json()["data"]) == 1
    listed = requests.get(f"{train_http.url}/jobs", params={"project_id": project_id}, timeout=30)
    assert listed.status_code == 200 and [j["training_job_id"] for j in listed.json()["data"]] == [
        job_id
    ]
    everywhere = requests.get(f"{train_http.url}/jobs", timeout=30)
    assert everywhere.status_code == 200 and len(everywhere.json()["data"]) == 1
    stopped = requests.post(f"{path}/stop", timeout=30)
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    newer.set_status(job_id, UNKNOWN_DONE)
    odd = requests.get(path, timeout=30)
    assert odd.status_code == 200 and odd.json()["status"] == "archived"


def test_the_poller_reports_unknown_statuses(
    newer: Sandbox,
    secret_manager: FakeSecretManager,
    tmp_path: Path,
) -> None:
    [job_id] = newer.seed()["job_ids"]
    with (
        WebhookReceiver(SECRET) as receiver,
        poller(newer, secret_manager, tmp_path, receiver.url) as server,
    ):
        first = poll(server, {})
        newer.advance(job_id, steps=2)  # DEPLOYING, PREEMPTED
        second = poll(server, {})
        newer.set_status(job_id, UNKNOWN_DONE)
        third = poll(server, {})
    assert first["jobs_checked"] == second["jobs_checked"] == third["jobs_checked"] == 1
    assert second["events"] >= 1 and third["events"] >= 1
    assert first["webhooks_failed"] == second["webhooks_failed"] == third["webhooks_failed"] == 0
    types = {event["type"] for event in receiver.unique_events.values()}
    assert {
        "training_job.preempted",
        f"training_job.{UNKNOWN_DONE.removeprefix('TRAINING_JOB_').lower()}",
    } <= types
    assert receiver.rejections == [] and all(a.verified for a in receiver.attempts)


def test_the_python_api_against_a_newer_baseten(configured: Sandbox) -> None:
    configured.configure(forward_compat=True)
    job = finetune_api.handle_training_request(DATASET, MODEL, "fc-project", job_name="fc-run")
    assert job["status"] == "created" and job["training_project_name"] == "fc-project"
    again = finetune_api.handle_training_request(
        DATASET, MODEL, "fc-project", idempotency_key="fc-1"
    )
    replay = finetune_api.handle_training_request(
        DATASET, MODEL, "fc-project", idempotency_key="fc-1"
    )
    assert replay["training_job_id"] == again["training_job_id"] and replay["idempotent_replay"]
