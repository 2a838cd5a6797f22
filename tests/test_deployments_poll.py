"""Deploy on completion and deployment events, end to end: train_http and poll_jobs under
functions-framework, the sandbox, moto S3 (the pushed template is read back through
Baseten's download operation) and a verifying webhook receiver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from loopback.webhook_receiver import WebhookReceiver
from sandbox import Sandbox
from tests.conftest import API_KEY
from tests.test_poll_e2e import SECRET, poll, poller

BODY = {"dataset_id": "HuggingFaceH4/Multilingual-Thinking", "model_id": "openai/gpt-oss-20b"}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as server:
        yield server


def submit(server: FunctionServer, **extra: Any) -> dict[str, Any]:
    response = requests.post(f"{server.url}/jobs", json={**BODY, **extra}, timeout=60)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def finish(sandbox: Sandbox, job_id: str) -> None:
    sandbox.add_checkpoint(job_id)
    sandbox.set_status(job_id, "TRAINING_JOB_COMPLETED")


def of_type(events: WebhookReceiver, kind: str) -> list[dict[str, Any]]:
    return [e for e in events.unique_events.values() if e["type"] == kind]


def test_completed_job_is_deployed_exactly_once_and_watched(
    train_http: FunctionServer,
    sandbox: Sandbox,
    secret_manager: FakeSecretManager,
    receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    job = submit(
        train_http,
        job_name="support-run",
        deploy={"on_completion": True, "compute": {"accelerator": "L4", "gpu_count": 1}},
    )
    plain = submit(train_http, job_name="no-deploy")
    finish(sandbox, job["training_job_id"])
    finish(sandbox, plain["training_job_id"])
    with poller(sandbox, secret_manager, tmp_path / "a", receiver.url) as first:
        report = poll(first, {})
        assert report["deployments_checked"] == 1 and report["deployments_failed"] == 0
        [deployed] = of_type(receiver, "training_job.deployed")
        data = deployed["data"]
        assert data["training_job_id"] == job["training_job_id"]
        assert data["model_name"] == "support-run" and data["checkpoint_id"] == "checkpoint-1"
        assert deployed["id"] == f"evt_{job['training_job_id']}_deployed"
        [building] = of_type(receiver, "deployment.building")
        assert building["data"]["deployment_id"] == data["deployment_id"]
        assert building["id"] == f"evt_{data['deployment_id']}_deployment_building"
        [recorded] = sandbox.state.deployments.all()["deployments"]
        assert recorded["request"]["instance_type_id"] == "L4:1"

        sandbox.state.deployments.force_status(data["deployment_id"], {"status": "ACTIVE"})
        poll(first, {})
        [active] = of_type(receiver, "deployment.active")
        assert active["data"]["status"] == "active"
        assert active["data"]["predict_url"].startswith(sandbox.url)
        ids = set(receiver.unique_events)
        poll(first, {})
        output = first.output()
    # A second instance (a cold start) repeats facts under the same ids, deploys nothing new.
    with poller(sandbox, secret_manager, tmp_path / "b", receiver.url) as second:
        poll(second, {})
        output += second.output()
    assert set(receiver.unique_events) == ids
    assert sandbox.state.deployments.mutations == 1
    assert len(sandbox.state.deployments.all()["deployments"]) == 1
    assert receiver.rejections == []
    assert all("." not in event_id for event_id in receiver.unique_events)
    assert API_KEY not in output and SECRET not in output


def test_failed_auto_deploy_is_reported_and_retried_a_bounded_number_of_times(
    train_http: FunctionServer,
    sandbox: Sandbox,
    secret_manager: FakeSecretManager,
    receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    job = submit(train_http, deploy={"on_completion": True, "model_name": "retry-bot"})
    finish(sandbox, job["training_job_id"])
    sandbox.add_fault(path="^graphql/$", status=503)
    with poller(sandbox, secret_manager, tmp_path, receiver.url, DEPLOY_MAX_ATTEMPTS="2") as server:
        reports = [poll(server, {}) for _ in range(3)]
        failures = of_type(receiver, "training_job.deployment_failed")
        assert [e["data"]["attempt"] for e in failures] == [1, 2]
        assert failures[0]["data"]["reason"]["type"] == "upstream_error"
        assert failures[0]["data"]["max_attempts"] == 2
        assert [r["deployments_failed"] for r in reports] == [1, 1, 0]
        output = server.output()
    assert '"severity": "ERROR"' in output
    # A fresh instance retries once Baseten recovers.
    sandbox.clear_faults()
    with poller(sandbox, secret_manager, tmp_path, receiver.url) as server:
        poll(server, {})
    [deployed] = of_type(receiver, "training_job.deployed")
    assert deployed["data"]["model_name"] == "retry-bot"
    assert sandbox.state.deployments.mutations == 1


def test_deploy_request_is_validated_at_submit(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    for deploy, location in (
        ({"on_completion": True, "compute": {"accelerator": "B200"}}, "deploy.compute.accelerator"),
        ({"on_completion": True, "model_name": "no spaces"}, "deploy.model_name"),
        ({"on_completion": True, "extra": 1}, "deploy.extra"),
        ({"model_name": "x"}, "deploy.on_completion"),
        ({"on_completion": "yes"}, "deploy.on_completion"),
    ):
        response = requests.post(
            f"{train_http.url}/jobs", json={**BODY, "deploy": deploy}, timeout=60
        )
        assert response.status_code == 400, response.text
        assert [d["location"] for d in response.json()["error"]["details"]] == [location]
    assert sandbox.jobs() == []


def test_runtime_config_carries_the_deploy_request(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    import json

    submit(train_http, deploy={"on_completion": True})
    [recorded] = sandbox.jobs()
    env = recorded["request"]["runtime"]["environment_variables"]
    config = json.loads(env["RUNTIME_CONFIG"])
    assert config["deploy"] == {
        "on_completion": True,
        "model_name": None,
        "compute": {"accelerator": None, "gpu_count": 1},
    }


def test_a_deploy_request_the_guards_no_longer_allow_is_reported_not_deployed(
    train_http: FunctionServer,
    sandbox: Sandbox,
    secret_manager: FakeSecretManager,
    receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    job = submit(train_http, deploy={"on_completion": True, "compute": {"accelerator": "A10G"}})
    finish(sandbox, job["training_job_id"])
    # The operator narrowed the spend guards after the job was submitted.
    with poller(
        sandbox, secret_manager, tmp_path, receiver.url, ALLOWED_ACCELERATORS="H100"
    ) as server:
        poll(server, {})
    [failed] = of_type(receiver, "training_job.deployment_failed")
    assert failed["data"]["reason"]["type"] == "invalid_request"
    assert "compute.accelerator" in failed["data"]["reason"]["message"]
    assert sandbox.state.deployments.mutations == 0


def test_a_later_poll_never_undoes_a_deactivation(
    train_http: FunctionServer,
    sandbox: Sandbox,
    secret_manager: FakeSecretManager,
    receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    job = submit(train_http, deploy={"on_completion": True})
    finish(sandbox, job["training_job_id"])
    with poller(sandbox, secret_manager, tmp_path / "a", receiver.url) as first:
        poll(first, {})
    [deployed] = of_type(receiver, "training_job.deployed")
    stopped = requests.post(
        f"{train_http.url}/deployments/{deployed['data']['model_id']}"
        f"/{deployed['data']['deployment_id']}/deactivate",
        timeout=30,
    )
    assert stopped.json()["status"] == "inactive"
    # A cold instance, still inside the completion's window, replays the deploy.
    with poller(sandbox, secret_manager, tmp_path / "b", receiver.url) as second:
        poll(second, {})
    [recorded] = sandbox.state.deployments.all()["deployments"]
    assert recorded["status"] == "INACTIVE"
    assert of_type(receiver, "deployment.inactive")
