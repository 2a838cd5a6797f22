"""Deploying a checkpoint end to end: train_http under functions-framework, the sandbox behind it.

Every rule of the deployments routes: defaults, spend guards, 202/200 replay,
409 conflict, 404s, dry_run, Idempotency-Key, read and deactivate, bad input
(a clear 400 and no Baseten mutation), Baseten faults mapped per CONTRACT,
concurrent duplicates across two instances, and the API key never in any output.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from sandbox import Sandbox
from tests.conftest import API_KEY, function_env

DEPLOYMENT_FIELDS = {
    "model_id",
    "deployment_id",
    "model_name",
    "status",
    "training_project_id",
    "training_job_id",
    "checkpoint_id",
    "predict_url",
    "dashboard_url",
    "created_at",
    "idempotent_replay",
}


def completed_job(sandbox: Sandbox, checkpoints: int = 2, **seed: Any) -> tuple[str, str]:
    seeded = sandbox.seed(
        status=seed.pop("status", "TRAINING_JOB_COMPLETED"), checkpoints_per_job=checkpoints
    )
    return seeded["projects"][0]["id"], seeded["job_ids"][0]


def deploy(
    server: FunctionServer, project_id: str, job_id: str, body: Any = None, **kwargs: Any
) -> requests.Response:
    return requests.post(
        f"{server.url}/jobs/{project_id}/{job_id}/deployments", json=body, timeout=60, **kwargs
    )


def deployments_of(sandbox: Sandbox) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = sandbox.state.deployments.all()["deployments"]
    return listed


def mutations(sandbox: Sandbox) -> int:
    return int(sandbox.state.deployments.mutations)


def graphql_calls(sandbox: Sandbox) -> int:
    return int(sandbox.stats()["by_route"].get("POST /graphql/", 0))


def test_defaults_answer_202_and_a_replay_200(train_http: FunctionServer, sandbox: Sandbox) -> None:
    project_id, job_id = completed_job(sandbox)
    response = deploy(train_http, project_id, job_id)
    assert response.status_code == 202, response.text
    created = response.json()
    assert set(created) == DEPLOYMENT_FIELDS
    assert created["status"] == "building" and created["idempotent_replay"] is False
    assert created["checkpoint_id"] == "checkpoint-2"  # the newest (final) LoRA checkpoint
    assert created["model_name"] == f"ft-{job_id}"  # seeded jobs have no name
    assert (created["training_project_id"], created["training_job_id"]) == (project_id, job_id)
    model_id, deployment_id = created["model_id"], created["deployment_id"]
    assert created["predict_url"] == (
        f"{sandbox.url}/model-{model_id}/deployment/{deployment_id}/sync/v1/chat/completions"
    )
    assert created["dashboard_url"] == f"{sandbox.url}/models/{model_id}/logs/{deployment_id}"

    [recorded] = deployments_of(sandbox)
    assert recorded["name"] == f"ft.{project_id}.{job_id}.checkpoint-2"
    request = recorded["request"]
    assert request["instance_type_id"] == "H100:1"  # one GPU of the first allowed accelerator
    assert request["inference_stack"]["environment_variables"] == [
        {"name": "HF_TOKEN", "value": "hf_access_token", "is_secret_reference": True}
    ]
    assert request["weights_sources"][0]["b10_training_checkpoint_weights_source"] == {
        "checkpoint": {"training_job_id": job_id, "checkpoint_name": "checkpoint-2"}
    }

    again = deploy(train_http, project_id, job_id, {})
    assert again.status_code == 200, again.text
    assert again.json() == {**created, "idempotent_replay": True, "status": "building"}
    assert mutations(sandbox) == 1 and len(deployments_of(sandbox)) == 1


def test_explicit_checkpoint_model_name_and_compute(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    project_id, job_id = completed_job(sandbox)
    body = {
        "checkpoint_id": "checkpoint-1",
        "model_name": "support-bot.v1",
        "compute": {"accelerator": "A10G", "gpu_count": 2},
    }
    response = deploy(train_http, project_id, job_id, body)
    assert response.status_code == 202, response.text
    assert response.json()["model_name"] == "support-bot.v1"
    assert response.json()["checkpoint_id"] == "checkpoint-1"
    [recorded] = deployments_of(sandbox)
    assert recorded["request"]["instance_type_id"] == "A10G:2"
    assert recorded["request"]["metadata"] == {"oracle_name": "support-bot.v1"}
    # Another checkpoint under the same model name is another deployment of that model.
    other = deploy(train_http, project_id, job_id, {**body, "checkpoint_id": "checkpoint-2"})
    assert other.status_code == 202 and other.json()["model_id"] == response.json()["model_id"]
    assert other.json()["deployment_id"] != response.json()["deployment_id"]


def test_idempotency_key(train_http: FunctionServer, sandbox: Sandbox) -> None:
    project_id, job_id = completed_job(sandbox)
    headers = {"Idempotency-Key": "deploy-once-42"}
    first = deploy(train_http, project_id, job_id, headers=headers)
    second = deploy(train_http, project_id, job_id, headers=headers)
    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json()["deployment_id"] == first.json()["deployment_id"]
    assert second.json()["idempotent_replay"] is True
    bad = deploy(train_http, project_id, job_id, headers={"Idempotency-Key": "x" * 256})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request"
    assert mutations(sandbox) == 1


def test_conflict_and_not_found(train_http: FunctionServer, sandbox: Sandbox) -> None:
    running_project, running_job = completed_job(sandbox, status="TRAINING_JOB_RUNNING")
    response = deploy(train_http, running_project, running_job)
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "conflict"
    assert "running" in response.json()["error"]["message"]

    empty_project, empty_job = completed_job(sandbox, checkpoints=0)
    response = deploy(train_http, empty_project, empty_job)
    assert response.status_code == 409 and "no LoRA checkpoint" in response.text

    project_id, job_id = completed_job(sandbox)
    response = deploy(train_http, project_id, job_id, {"checkpoint_id": "checkpoint-99"})
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found"
    # A fixed message: the caller's checkpoint_id is never echoed (issue 21).
    assert response.json()["error"]["message"] == "checkpoint not found in the training job"
    assert deploy(train_http, project_id, "nosuchjob").status_code == 404
    assert graphql_calls(sandbox) == 0 and mutations(sandbox) == 0


def test_dry_run_validates_and_creates_nothing(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    project_id, job_id = completed_job(sandbox)
    response = deploy(train_http, project_id, job_id, {"dry_run": True})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["status"] == "dry_run" and result["deployment_id"] is None
    assert result["checkpoint_id"] == "checkpoint-2"
    # The mutation with dry_run (and the instance types, unless this instance cached them).
    assert graphql_calls(sandbox) in (1, 2)
    assert mutations(sandbox) == 0 and deployments_of(sandbox) == []
    # Baseten's refusal of a dry run is passed on.
    sandbox.add_fault(
        path="^graphql/$",
        status=200,
        count=1,
        body={"data": None, "errors": [{"message": "quota exceeded for H100"}]},
    )
    refused = deploy(train_http, project_id, job_id, {"dry_run": True})
    assert refused.status_code == 422
    assert refused.json()["error"]["type"] == "upstream_rejected"
    assert "quota exceeded for H100" in refused.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"checkpoint": "checkpoint-1"}, "checkpoint"),
        ({"compute": {"accelerator": "B200"}}, "compute.accelerator"),
        ({"compute": {"gpu_count": 9}}, "compute.gpu_count"),
        ({"compute": {"gpu_count": "2"}}, "compute.gpu_count"),
        ({"compute": {"node_count": 2}}, "compute.node_count"),
        ({"model_name": "my model!"}, "model_name"),
        ({"model_name": "-starts-with-dash"}, "model_name"),
        ({"model_name": "x" * 65}, "model_name"),
        ({"dry_run": "yes"}, "dry_run"),
        ({"checkpoint_id": ""}, "checkpoint_id"),
        ([1, 2], None),
    ],
)
def test_bad_input_is_a_clear_400_and_no_mutation(
    train_http: FunctionServer, sandbox: Sandbox, body: Any, location: str | None
) -> None:
    project_id, job_id = completed_job(sandbox)
    before = sandbox.stats()["requests"]
    response = deploy(train_http, project_id, job_id, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    if location is not None:
        assert [d["location"] for d in error["details"]] == [location]
    assert sandbox.stats()["requests"] == before  # Baseten was not even asked
    assert graphql_calls(sandbox) == 0 and deployments_of(sandbox) == []


def test_malformed_bodies(train_http: FunctionServer, sandbox: Sandbox) -> None:
    project_id, job_id = completed_job(sandbox)
    url = f"{train_http.url}/jobs/{project_id}/{job_id}/deployments"
    not_json = requests.post(
        url, data=b"{", headers={"Content-Type": "application/json"}, timeout=30
    )
    assert not_json.status_code == 400
    wrong_type = requests.post(url, data=b"{}", headers={"Content-Type": "text/plain"}, timeout=30)
    assert wrong_type.status_code == 415
    assert requests.get(url, timeout=30).status_code == 405
    assert graphql_calls(sandbox) == 0


def test_read_and_deactivate(train_http: FunctionServer, sandbox: Sandbox) -> None:
    project_id, job_id = completed_job(sandbox)
    created = deploy(train_http, project_id, job_id).json()
    path = f"{train_http.url}/deployments/{created['model_id']}/{created['deployment_id']}"
    read = requests.get(path, timeout=30)
    assert read.status_code == 200
    assert read.json() == created
    sandbox.state.deployments.force_status(created["deployment_id"], {"status": "ACTIVE"})
    assert requests.get(path, timeout=30).json()["status"] == "active"
    stopped = requests.post(f"{path}/deactivate", timeout=30)
    assert stopped.status_code == 200 and stopped.json()["status"] == "inactive"
    assert deployments_of(sandbox)[0]["status"] == "INACTIVE"
    missing = requests.get(f"{train_http.url}/deployments/{created['model_id']}/nope", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    bad_id = requests.get(f"{train_http.url}/deployments/a%20b/c", timeout=30)
    assert bad_id.status_code == 404


@pytest.mark.parametrize(
    ("fault", "status", "error_type"),
    [
        ({"status": 503}, 502, "upstream_error"),
        ({"status": 500}, 502, "upstream_error"),
        ({"status": 429, "retry_after": 7}, 503, "upstream_unavailable"),
        ({"status": 401}, 502, "upstream_error"),
        ({"status": 200, "hang_seconds": 5}, 503, "upstream_unavailable"),
        (
            {"status": 200, "body": {"data": None, "errors": [{"message": "no capacity"}]}},
            422,
            "upstream_rejected",
        ),
    ],
)
def test_graphql_faults_are_mapped_and_create_nothing(
    train_http: FunctionServer,
    sandbox: Sandbox,
    fault: dict[str, Any],
    status: int,
    error_type: str,
) -> None:
    project_id, job_id = completed_job(sandbox)
    sandbox.add_fault(path="^graphql/$", method="POST", **fault)
    response = deploy(train_http, project_id, job_id)
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == error_type
    if status == 503:
        assert int(response.headers["Retry-After"]) >= 1
    assert API_KEY not in response.text
    sandbox.clear_faults()
    assert deployments_of(sandbox) == []
    # The same request succeeds once Baseten recovers.
    assert deploy(train_http, project_id, job_id).status_code == 202
    output = train_http.output()
    assert API_KEY not in output
    # truss's own log line about a failed GraphQL answer is structured like ours.
    truss_lines = [line for line in output.splitlines() if "GraphQL endpoint failed" in line]
    assert all(line.startswith("{") for line in truss_lines)


def test_rest_faults_are_retried_or_mapped(train_http: FunctionServer, sandbox: Sandbox) -> None:
    project_id, job_id = completed_job(sandbox)
    sandbox.add_fault(path="^v1/models$", status=503, count=1)  # retried by the client
    assert deploy(train_http, project_id, job_id).status_code == 202
    sandbox.add_fault(path="^v1/models$", status=429, retry_after=60)
    response = deploy(train_http, project_id, job_id)
    assert response.status_code == 503 and response.headers["Retry-After"] == "60"


def test_rename_failure_deletes_the_unnamed_deployment(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    project_id, job_id = completed_job(sandbox)
    sandbox.add_fault(path="^v1/models/[^/]+/deployments/[^/]+$", method="PATCH", status=503)
    response = deploy(train_http, project_id, job_id)
    assert response.status_code == 502
    assert mutations(sandbox) == 1 and deployments_of(sandbox) == []  # nothing left billing


def test_concurrent_duplicates_across_instances_end_with_one_deployment(
    sandbox: Sandbox, secret_manager: FakeSecretManager, tmp_path: Path
) -> None:
    project_id, job_id = completed_job(sandbox)
    # Slow Baseten down so the requests overlap between lookup and naming.
    sandbox.configure(latency_ms=40)
    servers = [
        FunctionServer("train_http", function_env(sandbox, secret_manager, tmp_path), threads=8)
        for _ in range(2)
    ]
    with servers[0], servers[1]:
        with ThreadPoolExecutor(max_workers=16) as pool:
            futures = [
                pool.submit(deploy, servers[index % 2], project_id, job_id) for index in range(16)
            ]
            responses = [future.result() for future in futures]
        outputs = servers[0].output() + servers[1].output()
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) <= {200, 202}, [r.text for r in responses]
    assert len({r.json()["deployment_id"] for r in responses}) == 1
    live = deployments_of(sandbox)
    assert len(live) == 1 and live[0]["name"] == f"ft.{project_id}.{job_id}.checkpoint-2"
    # Each instance serialises its own duplicates, so at most one extra was created and deleted.
    assert 1 <= mutations(sandbox) <= 2
    assert statuses.count(202) <= 2
    assert API_KEY not in outputs


def test_openapi_documents_the_deployment_routes(train_http: FunctionServer) -> None:
    document = requests.get(f"{train_http.url}/openapi.json", timeout=10).json()
    paths = document["paths"]
    assert set(paths["/jobs/{project_id}/{job_id}/deployments"]["post"]["responses"]) >= {
        "202",
        "200",
        "400",
        "404",
        "409",
        "422",
        "502",
        "503",
    }
    assert "get" in paths["/deployments/{model_id}/{deployment_id}"]
    assert "post" in paths["/deployments/{model_id}/{deployment_id}/deactivate"]
    schemas = document["components"]["schemas"]
    assert set(schemas["Deployment"]["properties"]) == DEPLOYMENT_FIELDS
    assert schemas["DeploymentRequest"]["additionalProperties"] is False
    assert "deploy" in schemas["TrainingRequest"]["properties"]


def test_deploying_a_deactivated_deployment_again_reactivates_it(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    project_id, job_id = completed_job(sandbox)
    created = deploy(train_http, project_id, job_id).json()
    path = f"{train_http.url}/deployments/{created['model_id']}/{created['deployment_id']}"
    assert requests.post(f"{path}/deactivate", timeout=30).json()["status"] == "inactive"
    again = deploy(train_http, project_id, job_id)
    assert again.status_code == 200 and again.json()["idempotent_replay"] is True
    assert again.json()["deployment_id"] == created["deployment_id"]
    assert again.json()["status"] == "deploying"  # coming back up, not a second deployment
    assert mutations(sandbox) == 1 and len(deployments_of(sandbox)) == 1
