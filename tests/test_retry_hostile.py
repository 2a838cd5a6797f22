"""Retries under hostile callers and racing pollers (issue 27, items 5, 13 and 14).

Everything real on loopback: train_http and poll_jobs under functions-framework, the
sandbox as Baseten (real truss pushes), fake-gcs-server for the shared poll state.
"""

from __future__ import annotations

from pathlib import Path

import requests

from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from loopback.webhook_receiver import WebhookReceiver
from sandbox import Sandbox
from tests.test_deployments_poll import of_type, receiver  # noqa: F401 - fixture
from tests.test_poll_e2e import poll, poller
from tests.test_retry_poll import BODY, FAILED, config_of, submit


def test_a_caller_sending_the_retrys_key_cannot_take_the_retry(
    train_http: FunctionServer,
    sandbox: Sandbox,
    secret_manager: FakeSecretManager,
    receiver: WebhookReceiver,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Item 5: the poll's key for a retry is ``retry-<failed job id>``; a caller who sends
    exactly that as its Idempotency-Key (same project) gets a job of its own, and the
    real retry still starts, resumed from the failed job's checkpoint."""
    failed = submit(train_http, job_name="victim", retry={"max_attempts": 1})
    failed_id = failed["training_job_id"]
    sandbox.add_checkpoint(failed_id)
    sandbox.set_status(failed_id, FAILED, "NCCL timeout")
    response = requests.post(
        f"{train_http.url}/jobs",
        json={**BODY, "job_name": "squatter"},
        headers={"Idempotency-Key": f"retry-{failed_id}"},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    squatter = response.json()
    assert squatter["training_project_id"] == failed["training_project_id"]
    # The caller's replay still answers the caller's own job.
    again = requests.post(
        f"{train_http.url}/jobs",
        json={**BODY, "job_name": "squatter"},
        headers={"Idempotency-Key": f"retry-{failed_id}"},
        timeout=60,
    )
    assert (
        again.status_code == 200 and again.json()["training_job_id"] == squatter["training_job_id"]
    )

    with poller(sandbox, secret_manager, tmp_path, receiver.url) as server:
        report = poll(server, {})
        assert report["jobs_failed"] == 0, server.output()[-3000:]
        poll(server, {})
    jobs = sandbox.jobs()
    assert len(jobs) == 3  # the failed job, the caller's, and the real retry
    retry = jobs[2]
    assert retry["job"]["id"] not in (failed_id, squatter["training_job_id"])
    assert config_of(retry)["resume_from"]["training_job_id"] == failed_id
    assert retry["load_checkpoints"]["checkpoints"][0]["training_job_id"] == failed_id
    [retried] = of_type(receiver, "training_job.retried")
    assert retried["data"]["job"]["training_job_id"] == retry["job"]["id"]
    # The caller's job was neither stopped nor taken over.
    caller_job = next(e for e in jobs if e["job"]["id"] == squatter["training_job_id"])
    assert caller_job["job"]["current_status"] != "TRAINING_JOB_STOPPED"
    assert (
        "resume_from" not in config_of(caller_job) or config_of(caller_job)["resume_from"] is None
    )
