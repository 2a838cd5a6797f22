"""The Python API's deploy/read/deactivate functions in-process, with the same exceptions."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import finetune_api
from finetune_api import runtime
from sandbox import Sandbox
from tests.conftest import API_KEY


@pytest.fixture
def configured(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    monkeypatch.setenv("BASETEN_API_KEY", API_KEY)
    monkeypatch.setenv("BASETEN_REMOTE_URL", sandbox.url)
    monkeypatch.setenv("BASETEN_API_URL", sandbox.url)
    monkeypatch.setenv("BASETEN_INFERENCE_URL", sandbox.url + "/model-{model_id}")
    monkeypatch.setenv("BASETEN_TIMEOUT_SECONDS", "5")
    monkeypatch.setenv("ALLOWED_ACCELERATORS", "A10G,L4")
    runtime.reset()
    yield sandbox
    runtime.reset()


def _job(sandbox: Sandbox, status: str = "TRAINING_JOB_COMPLETED") -> tuple[str, str]:
    seeded = sandbox.seed(status=status, checkpoints_per_job=1)
    return seeded["projects"][0]["id"], seeded["job_ids"][0]


def test_deploy_read_deactivate(configured: Sandbox) -> None:
    project_id, job_id = _job(configured)
    created = finetune_api.deploy_checkpoint(project_id, job_id, model_name="api-bot")
    assert created["status"] == "building" and created["idempotent_replay"] is False
    [recorded] = configured.state.deployments.all()["deployments"]
    # The first allowed accelerator is the default.
    assert recorded["request"]["instance_type_id"] == "A10G:1"
    again = finetune_api.deploy_checkpoint(project_id, job_id, model_name="api-bot")
    assert again["idempotent_replay"] is True
    assert again["deployment_id"] == created["deployment_id"]
    read = finetune_api.get_deployment(created["model_id"], created["deployment_id"])
    assert read == created
    stopped = finetune_api.deactivate_deployment(created["model_id"], created["deployment_id"])
    assert stopped["status"] == "inactive"
    dry = finetune_api.deploy_checkpoint(project_id, job_id, model_name="other", dry_run=True)
    assert dry["status"] == "dry_run" and configured.state.deployments.mutations == 1


def test_the_same_exceptions(configured: Sandbox) -> None:
    project_id, job_id = _job(configured, status="TRAINING_JOB_RUNNING")
    with pytest.raises(finetune_api.ConflictError) as conflict:
        finetune_api.deploy_checkpoint(project_id, job_id)
    assert conflict.value.status == 409 and conflict.value.body["error"]["type"] == "conflict"
    done_project, done_job = _job(configured)
    with pytest.raises(finetune_api.NotFoundError):
        finetune_api.deploy_checkpoint(done_project, done_job, checkpoint_id="nope")
    with pytest.raises(finetune_api.InvalidRequestError) as invalid:
        finetune_api.deploy_checkpoint(done_project, done_job, compute={"accelerator": "H100"})
    assert invalid.value.details == [
        {"location": "compute.accelerator", "reason": "must be one of A10G, L4"}
    ]
    with pytest.raises(finetune_api.NotFoundError):
        finetune_api.get_deployment("nomodel", "nodeployment")
    configured.add_fault(path="^graphql/$", status=503)
    with pytest.raises(finetune_api.UpstreamError) as upstream:
        finetune_api.deploy_checkpoint(done_project, done_job)
    assert API_KEY not in str(upstream.value) and API_KEY not in str(upstream.value.body)
    assert configured.state.deployments.mutations == 0
