"""Read, list and stop routes of train_http, and API-key protection, end to end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from sandbox import Sandbox
from tests.conftest import function_env

VALID = {"dataset_id": "HuggingFaceH4/Multilingual-Thinking", "model_id": "openai/gpt-oss-20b"}


def submit(server: FunctionServer, **extra: Any) -> dict[str, Any]:
    response = requests.post(f"{server.url}/jobs", json={**VALID, **extra}, timeout=60)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def test_get_job_with_checkpoints(train_http: FunctionServer, sandbox: Sandbox) -> None:
    job = submit(train_http, hyperparameters={"lora_rank": 8})
    sandbox.set_status(job["training_job_id"], "TRAINING_JOB_RUNNING")
    checkpoint = sandbox.add_checkpoint(job["training_job_id"])
    path = f"{train_http.url}/jobs/{job['training_project_id']}/{job['training_job_id']}"
    found = requests.get(path, timeout=30).json()
    assert found["status"] == "running" and found["training_job_id"] == job["training_job_id"]
    [listed] = found["checkpoints"]
    assert listed["checkpoint_id"] == checkpoint["checkpoint_id"]
    assert listed["base_model"] == VALID["model_id"]
    assert set(listed) == {
        "checkpoint_id",
        "checkpoint_type",
        "base_model",
        "size_bytes",
        "created_at",
        "lora_adapter_config",
    }
    only = requests.get(f"{path}/checkpoints", timeout=30).json()
    assert only == {"data": found["checkpoints"]}


def test_unknown_job_and_project_are_404(train_http: FunctionServer, sandbox: Sandbox) -> None:
    job = submit(train_http)
    for path in (f"{job['training_project_id']}/nosuchjob", "nosuchproject/nosuchjob"):
        response = requests.get(f"{train_http.url}/jobs/{path}", timeout=30)
        assert response.status_code == 404 and response.json()["error"]["type"] == "not_found"
    response = requests.get(
        f"{train_http.url}/jobs", params={"project_id": "nosuchproject"}, timeout=30
    )
    assert response.status_code == 404


def test_stop_moves_the_job_to_stopped(train_http: FunctionServer, sandbox: Sandbox) -> None:
    job = submit(train_http)
    path = f"{train_http.url}/jobs/{job['training_project_id']}/{job['training_job_id']}"
    before = sandbox.stats()["requests"]
    stopped = requests.post(f"{path}/stop", timeout=30)
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert stopped.json()["training_project_name"] == job["training_project_name"]
    assert sandbox.stats()["requests"] - before == 2  # read, stop
    assert sandbox.jobs()[0]["job"]["current_status"] == "TRAINING_JOB_STOPPED"
    # Stopping again is harmless: the job is already terminal.
    again = requests.post(f"{path}/stop", timeout=30)
    assert again.status_code == 200 and again.json()["status"] == "stopped"


def test_list_filters_by_status_and_honours_limit(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    jobs = [submit(train_http, project_name="listing", job_name=f"run-{i}") for i in range(5)]
    project = jobs[0]["training_project_id"]
    sandbox.set_status(jobs[1]["training_job_id"], "TRAINING_JOB_RUNNING")
    sandbox.set_status(jobs[3]["training_job_id"], "TRAINING_JOB_FAILED", error_message="oom")
    url = f"{train_http.url}/jobs"

    everything = requests.get(url, params={"project_id": project}, timeout=30).json()["data"]
    assert [job["job_name"] for job in everything] == [f"run-{i}" for i in reversed(range(5))]

    two = requests.get(url, params={"project_id": project, "limit": 2}, timeout=30).json()["data"]
    assert [job["job_name"] for job in two] == ["run-4", "run-3"]

    params = [("project_id", project), ("status", "running"), ("status", "TRAINING_JOB_FAILED")]
    filtered = requests.get(url, params=params, timeout=30).json()["data"]
    assert {job["job_name"]: job["status"] for job in filtered} == {
        "run-1": "running",
        "run-3": "failed",
    }
    assert [job["error_message"] for job in filtered if job["status"] == "failed"] == ["oom"]


@pytest.mark.parametrize(
    "params",
    [
        {"project_id": "p", "limit": "0"},
        {"project_id": "p", "limit": "101"},
        {"project_id": "p", "limit": "x"},
        {"project_id": "p", "bogus": "1"},
    ],
)
def test_list_rejects_bad_queries(
    train_http: FunctionServer, sandbox: Sandbox, params: dict[str, str]
) -> None:
    response = requests.get(f"{train_http.url}/jobs", params=params, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request"
    assert sandbox.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("fault", "status", "error_type"),
    [
        ({"status": 503}, 502, "upstream_error"),
        ({"status": 429, "retry_after": 1}, 503, "upstream_unavailable"),
    ],
)
def test_baseten_failures_on_reads(
    train_http: FunctionServer,
    sandbox: Sandbox,
    fault: dict[str, Any],
    status: int,
    error_type: str,
) -> None:
    job = submit(train_http)
    sandbox.add_fault(method="GET", path=r"v1/training_projects/.*", **fault)
    path = f"{train_http.url}/jobs/{job['training_project_id']}/{job['training_job_id']}"
    response = requests.get(path, timeout=60)
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == error_type
    if status == 503:
        assert int(response.headers["Retry-After"]) >= 1


@pytest.fixture(scope="module")
def protected(
    sandbox_server: Sandbox,
    secret_manager: FakeSecretManager,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FunctionServer]:
    tmp = tmp_path_factory.mktemp("protected")
    env = function_env(
        sandbox_server, secret_manager, tmp, API_KEYS="old-key-123456,new-key-654321"
    )
    with FunctionServer("train_http", env) as server:
        yield server


@pytest.mark.parametrize("headers", [{}, {"X-Api-Key": "wrong-key-000000"}, {"X-Api-Key": ""}])
@pytest.mark.parametrize("route", ["/jobs", "/openapi.json", "/jobs/p/j"])
def test_api_key_missing_or_wrong_is_401(
    protected: FunctionServer, sandbox: Sandbox, headers: dict[str, str], route: str
) -> None:
    response = requests.get(f"{protected.url}{route}", headers=headers, timeout=30)
    assert response.status_code == 401 and response.json()["error"]["type"] == "unauthorized"
    response = requests.post(f"{protected.url}/jobs", json=VALID, headers=headers, timeout=30)
    assert response.status_code == 401
    assert sandbox.stats()["requests"] == 0
    assert "old-key-123456" not in response.text


@pytest.mark.parametrize("key", ["old-key-123456", "new-key-654321"])
def test_either_configured_key_is_accepted(
    protected: FunctionServer, sandbox: Sandbox, key: str
) -> None:
    response = requests.post(
        f"{protected.url}/jobs", json=VALID, headers={"X-Api-Key": key}, timeout=60
    )
    assert response.status_code == 201, response.text
    assert key not in protected.output()


def test_healthz_stays_open(protected: FunctionServer) -> None:
    assert requests.get(f"{protected.url}/healthz", timeout=10).status_code == 200


def test_api_keys_from_secret_manager(
    sandbox: Sandbox, secret_manager: FakeSecretManager, tmp_path: Path
) -> None:
    secret_manager.add("test-project", "api-keys", "sm-key-abcdef")
    env = function_env(sandbox, secret_manager, tmp_path, API_KEYS_SECRET_ID="api-keys")
    with FunctionServer("train_http", env) as server:
        assert requests.get(f"{server.url}/openapi.json", timeout=30).status_code == 401
        ok = requests.get(
            f"{server.url}/openapi.json", headers={"X-Api-Key": "sm-key-abcdef"}, timeout=30
        )
        assert ok.status_code == 200


def test_list_without_project_spans_every_project(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    first = submit(train_http, project_name="alpha")
    second = submit(train_http, project_name="beta")
    sandbox.set_status(second["training_job_id"], "TRAINING_JOB_RUNNING")
    url = f"{train_http.url}/jobs"
    everything = requests.get(url, timeout=30).json()["data"]
    assert [job["training_job_id"] for job in everything] == [
        second["training_job_id"],
        first["training_job_id"],
    ]
    running = requests.get(url, params={"status": "running"}, timeout=30).json()["data"]
    assert [job["training_project_name"] for job in running] == ["beta"]
    assert requests.get(url, params={"limit": 1}, timeout=30).json()["data"] == everything[:1]
