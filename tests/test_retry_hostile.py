"""Retries under hostile callers and racing pollers (issue 27, items 5, 13 and 14).

Everything real on loopback: train_http and poll_jobs under functions-framework, the
sandbox as Baseten (real truss pushes), fake-gcs-server for the shared poll state.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from loopback.functions import FunctionServer
from loopback.servers import LocalGcs
from loopback.webhook_receiver import WebhookReceiver
from sandbox import Sandbox
from tests.test_deployments_poll import of_type, receiver  # noqa: F401 - fixture
from tests.test_poll_e2e import poll
from tests.test_retry_poll import (  # noqa: F401 - fixture
    BODY,
    RetryRig,
    config_of,
    rig_fixture,
)


def test_a_caller_sending_the_retrys_key_cannot_take_the_retry(
    rig: RetryRig,
) -> None:
    """Item 5: the poll's key for a retry is ``retry-<failed job id>``; a caller who sends
    exactly that as its Idempotency-Key (same project) gets a job of its own, and the
    real retry still starts, resumed from the failed job's checkpoint."""
    failed = rig.failed_job(job_name="victim", retry={"max_attempts": 1}, reason="NCCL timeout")
    failed_id = failed["training_job_id"]
    response = requests.post(
        f"{rig.train_http.url}/jobs",
        json={**BODY, "job_name": "squatter"},
        headers={"Idempotency-Key": f"retry-{failed_id}"},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    squatter = response.json()
    assert squatter["training_project_id"] == failed["training_project_id"]
    # The caller's replay still answers the caller's own job.
    again = requests.post(
        f"{rig.train_http.url}/jobs",
        json={**BODY, "job_name": "squatter"},
        headers={"Idempotency-Key": f"retry-{failed_id}"},
        timeout=60,
    )
    assert (
        again.status_code == 200 and again.json()["training_job_id"] == squatter["training_job_id"]
    )

    with rig.poller() as server:
        report = poll(server, {})
        assert report["jobs_failed"] == 0, server.output()[-3000:]
        poll(server, {})
    jobs = rig.sandbox.jobs()
    assert len(jobs) == 3  # the failed job, the caller's, and the real retry
    retry = jobs[2]
    assert retry["job"]["id"] not in (failed_id, squatter["training_job_id"])
    assert config_of(retry)["resume_from"]["training_job_id"] == failed_id
    assert retry["load_checkpoints"]["checkpoints"][0]["training_job_id"] == failed_id
    [retried] = of_type(rig.receiver, "training_job.retried")
    assert retried["data"]["job"]["training_job_id"] == retry["job"]["id"]
    # The caller's job was neither stopped nor taken over.
    caller_job = next(e for e in jobs if e["job"]["id"] == squatter["training_job_id"])
    assert caller_job["job"]["current_status"] != "TRAINING_JOB_STOPPED"
    assert (
        "resume_from" not in config_of(caller_job) or config_of(caller_job)["resume_from"] is None
    )


def _two_polls_at_once(one: FunctionServer, two: FunctionServer) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda server: poll(server, {}), [one, two]))


def _exactly_one_retry(sandbox: Sandbox, receiver: WebhookReceiver, failed_id: str) -> None:  # noqa: F811
    created = sandbox.jobs()[1:]
    # One push, not a duplicate stopped afterwards.
    assert len(created) == 1, [e["job"]["current_status"] for e in created]
    assert created[0]["job"]["current_status"] != "TRAINING_JOB_STOPPED"
    assert config_of(created[0])["resume_from"]["training_job_id"] == failed_id
    retried = of_type(receiver, "training_job.retried")
    assert {e["data"]["job"]["training_job_id"] for e in retried} == {created[0]["job"]["id"]}


def test_two_polls_sharing_the_local_state_file_retry_one_failure_once(
    rig: RetryRig,
) -> None:
    """Item 13, local state: two poll_jobs processes on one POLL_STATE_FILE."""
    job = rig.failed_job(retry={"max_attempts": 1})
    failed_id = job["training_job_id"]
    rig.sandbox.configure(create_delay_ms=400)  # were both to push, the pushes would overlap
    with (
        rig.poller() as one,
        rig.poller() as two,
    ):
        reports = _two_polls_at_once(one, two)
        assert all(r["jobs_failed"] == 0 for r in reports), one.output()[-2000:]
        _two_polls_at_once(one, two)  # and again: still one
    _exactly_one_retry(rig.sandbox, rig.receiver, failed_id)
    claim = rig.tmp_path / "poll-state" / "state.json.claims" / f"retry-{failed_id}.json"
    record = json.loads(claim.read_text())
    assert record["state"] == "started"
    assert record["job"]["training_job_id"] == rig.sandbox.jobs()[1]["job"]["id"]


@pytest.fixture(scope="module")
def gcs() -> Iterator[LocalGcs]:
    with LocalGcs() as server:
        yield server


def test_two_polls_sharing_a_cloud_storage_state_retry_one_failure_once(
    rig: RetryRig,
    gcs: LocalGcs,
) -> None:
    """Item 13, Cloud Storage: two poll_jobs processes on one POLL_STATE_BUCKET
    (fake-gcs-server enforces ifGenerationMatch=0 like Cloud Storage)."""
    bucket = f"state-{rig.tmp_path.name[-20:].lower().replace('_', '-')}"
    gcs.client().create_bucket(bucket)
    job = rig.failed_job(retry={"max_attempts": 1})
    failed_id = job["training_job_id"]
    rig.sandbox.configure(create_delay_ms=400)
    shared = {"POLL_STATE_BUCKET": bucket, "STORAGE_EMULATOR_HOST": gcs.host}
    with (
        rig.poller("a", **shared) as one,
        rig.poller("b", **shared) as two,
    ):
        reports = _two_polls_at_once(one, two)
        assert all(r["jobs_failed"] == 0 for r in reports), one.output()[-2000:]
        _two_polls_at_once(one, two)
    _exactly_one_retry(rig.sandbox, rig.receiver, failed_id)
    blob = gcs.client().bucket(bucket).blob(f"poll-state.json.claims/retry-{failed_id}.json")
    assert json.loads(blob.download_as_bytes())["state"] == "started"


def test_a_retry_refused_for_good_is_not_tried_again_on_every_poll(
    rig: RetryRig,
) -> None:
    """Item 14: a retry that cannot succeed (here: the job's accelerator is no longer
    allowed, so the resumed request is a 400) is attempted once; the verdict is kept
    beside the poll state, and later polls, while the failure stays in the lookback
    window, neither try again nor count it as a failure."""
    job = rig.failed_job(retry={"max_attempts": 3}, compute={"accelerator": "H100"})
    failed_id = job["training_job_id"]
    with rig.poller(ALLOWED_ACCELERATORS="A10G") as server:
        first = poll(server, {})
        assert first["jobs_failed"] == 1
        before = Counter(rig.sandbox.stats()["by_route"])
        later = [poll(server, {}) for _ in range(3)]
        spent = Counter(rig.sandbox.stats()["by_route"]) - before
        output = server.output()
    assert [r["jobs_failed"] for r in later] == [0, 0, 0]
    assert output.count("a failed job cannot be retried as it stands") == 1
    assert "could not retry a failed job" not in output
    # Nothing was created at Baseten, then or later; later polls did not even list
    # the failed job's checkpoints for a retry (the poll reads them for events only).
    assert len(rig.sandbox.jobs()) == 1
    assert spent["POST /v1/training_projects/<project_id>/jobs"] == 0
    assert of_type(rig.receiver, "training_job.retried") == []
    claim = rig.tmp_path / "poll-state" / "state.json.claims" / f"retry-{failed_id}.json"
    record = json.loads(claim.read_text())
    assert record["state"] == "refused" and "accelerator" in record["reason"]
    # A new instance (same state) does not try either.
    with rig.poller(ALLOWED_ACCELERATORS="A10G") as other:
        assert poll(other, {})["jobs_failed"] == 0
        assert "cannot be retried" not in other.output()
    assert len(rig.sandbox.jobs()) == 1
