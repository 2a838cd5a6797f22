"""PROJECT_NAME_PREFIX: read, list and stop only this service's projects (opt-in)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from finetune_api.core.errors import ConfigurationError
from finetune_api.core.settings import load_settings
from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from sandbox import Sandbox
from tests.conftest import function_env

VALID = {"dataset_id": "HuggingFaceH4/Multilingual-Thinking", "model_id": "openai/gpt-oss-20b"}
PREFIX = "svc-"


@pytest.fixture(scope="module")
def scoped_server(
    sandbox_server: Sandbox,
    secret_manager: FakeSecretManager,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FunctionServer]:
    env = function_env(
        sandbox_server,
        secret_manager,
        tmp_path_factory.mktemp("scoped"),
        PROJECT_NAME_PREFIX=PREFIX,
    )
    with FunctionServer("train_http", env) as server:
        yield server


@pytest.fixture
def scoped(scoped_server: FunctionServer, sandbox: Sandbox) -> FunctionServer:
    return scoped_server


def test_jobs_outside_the_prefix_are_invisible_and_unstoppable(
    scoped: FunctionServer, sandbox: Sandbox
) -> None:
    [foreign] = sandbox.seed(projects=1, jobs_per_project=1, name_prefix="other")["projects"]
    foreign_job = foreign["job_ids"][0]
    mine = requests.post(f"{scoped.url}/jobs", json={**VALID, "project_name": "svc-a"}, timeout=60)
    assert mine.status_code == 201, mine.text
    own = mine.json()

    listed = requests.get(f"{scoped.url}/jobs", timeout=30).json()["data"]
    assert [job["training_job_id"] for job in listed] == [own["training_job_id"]]
    # A project outside the prefix is listed as one that does not exist.
    by_project = requests.get(
        f"{scoped.url}/jobs", params={"project_id": foreign["id"]}, timeout=30
    )
    unknown = requests.get(f"{scoped.url}/jobs", params={"project_id": "nosuchproject"}, timeout=30)
    assert by_project.status_code == unknown.status_code == 404
    assert by_project.json() == unknown.json()

    base = f"{scoped.url}/jobs/{foreign['id']}/{foreign_job}"
    for method, url in [("GET", base), ("GET", f"{base}/checkpoints"), ("POST", f"{base}/stop")]:
        response = requests.request(method, url, timeout=30)
        assert response.status_code == 404, (url, response.text)
        assert response.json()["error"] == {
            "type": "not_found",
            "message": "training job not found on Baseten",
        }
    statuses = {item["job"]["id"]: item["job"]["current_status"] for item in sandbox.jobs()}
    assert statuses[foreign_job] == "TRAINING_JOB_CREATED"  # never stopped

    own_url = f"{scoped.url}/jobs/{own['training_project_id']}/{own['training_job_id']}"
    assert requests.get(f"{own_url}/logs", timeout=30).status_code == 200
    assert requests.get(f"{own_url}/metrics", timeout=30).status_code == 200
    assert requests.get(own_url, timeout=30).status_code == 200
    assert requests.get(f"{own_url}/checkpoints", timeout=30).status_code == 200
    stopped = requests.post(f"{own_url}/stop", timeout=30)
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"


def test_logs_metrics_and_deploys_of_jobs_outside_the_prefix_are_not_found(
    scoped: FunctionServer, sandbox: Sandbox
) -> None:
    # A completed foreign job with a checkpoint: only the prefix stands between it and a deploy.
    [foreign] = sandbox.seed(
        projects=1,
        jobs_per_project=1,
        name_prefix="other",
        status="TRAINING_JOB_COMPLETED",
        checkpoints_per_job=1,
    )["projects"]
    base = f"{scoped.url}/jobs/{foreign['id']}/{foreign['job_ids'][0]}"
    for method, url in [
        ("GET", f"{base}/logs"),
        ("GET", f"{base}/metrics"),
        ("GET", f"{base}/metrics?format=svg"),
        ("GET", f"{base}/evaluation"),
        ("GET", f"{base}/checkpoints/checkpoint-1/files"),
        ("POST", f"{base}/deployments"),
    ]:
        response = requests.request(method, url, timeout=30)
        assert response.status_code == 404, (url, response.text)
        assert response.json()["error"] == {
            "type": "not_found",
            "message": "training job not found on Baseten",
        }
    assert sandbox.state.deployments.mutations == 0
    assert sandbox.state.deployments.all()["deployments"] == []


def test_deployments_of_jobs_outside_the_prefix_cannot_be_read_or_deactivated(
    scoped: FunctionServer, train_http: FunctionServer, sandbox: Sandbox
) -> None:
    def completed(prefix: str) -> str:
        [project] = sandbox.seed(
            projects=1,
            jobs_per_project=1,
            name_prefix=prefix,
            status="TRAINING_JOB_COMPLETED",
            checkpoints_per_job=1,
        )["projects"]
        return f"/jobs/{project['id']}/{project['job_ids'][0]}/deployments"

    # Deployed by an instance without the setting, then asked of one with it.
    foreign = requests.post(f"{train_http.url}{completed('other')}", timeout=60)
    assert foreign.status_code == 202, foreign.text
    path = f"/deployments/{foreign.json()['model_id']}/{foreign.json()['deployment_id']}"
    for method, url in [("GET", path), ("POST", f"{path}/deactivate")]:
        response = requests.request(method, f"{scoped.url}{url}", timeout=30)
        assert response.status_code == 404, (url, response.text)
        assert response.json()["error"] == {
            "type": "not_found",
            "message": "deployment not found on Baseten",
        }
    [kept] = sandbox.state.deployments.all()["deployments"]
    assert kept["status"] != "INACTIVE"  # the deactivate never reached Baseten

    own = requests.post(f"{scoped.url}{completed('svc-own')}", timeout=60)
    assert own.status_code == 202, own.text
    own_path = f"/deployments/{own.json()['model_id']}/{own.json()['deployment_id']}"
    assert requests.get(f"{scoped.url}{own_path}", timeout=30).json() == own.json()
    assert requests.post(f"{scoped.url}{own_path}/deactivate", timeout=30).status_code == 200


def test_submissions_stay_inside_the_prefix(scoped: FunctionServer, sandbox: Sandbox) -> None:
    outside = requests.post(
        f"{scoped.url}/jobs", json={**VALID, "project_name": "other"}, timeout=30
    )
    assert outside.status_code == 400
    assert outside.json()["error"]["details"] == [
        {"location": "project_name", "reason": "must start with svc- (PROJECT_NAME_PREFIX)"}
    ]
    assert sandbox.jobs() == []
    default = requests.post(f"{scoped.url}/jobs", json=VALID, timeout=60)
    assert default.status_code == 201, default.text
    assert default.json()["training_project_name"] == "svc-ft-openai-gpt-oss-20b"


@pytest.mark.parametrize("value", ["-svc", "svc/", "x" * 64, "a b"])
def test_a_malformed_prefix_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigurationError, match="PROJECT_NAME_PREFIX"):
        load_settings({"PROJECT_NAME_PREFIX": value})


def test_without_the_setting_every_project_is_visible(
    train_http: FunctionServer, sandbox: Sandbox, tmp_path: Path
) -> None:
    [foreign] = sandbox.seed(projects=1, jobs_per_project=1, name_prefix="other")["projects"]
    response = requests.get(
        f"{train_http.url}/jobs/{foreign['id']}/{foreign['job_ids'][0]}", timeout=30
    )
    assert response.status_code == 200
