"""POST /jobs end to end: a real functions-framework process, sandbox, moto S3, Secret Manager."""

from __future__ import annotations

import io
import json
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from loopback.servers import LocalS3
from sandbox import Sandbox
from tests.conftest import API_KEY, SECRET_NAME, function_env

VALID = {"dataset_id": "HuggingFaceH4/Multilingual-Thinking", "model_id": "openai/gpt-oss-20b"}


def post(server: FunctionServer, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(f"{server.url}/jobs", json=body, timeout=60, **kwargs)


def env_of(recorded: dict[str, Any]) -> dict[str, Any]:
    env: dict[str, Any] = recorded["request"]["runtime"]["environment_variables"]
    return env


def test_submit_creates_the_requested_job(
    train_http: FunctionServer, sandbox: Sandbox, s3: LocalS3
) -> None:
    body = {
        **VALID,
        "project_name": "recipe",
        "job_name": "first-run",
        "hyperparameters": {"learning_rate": 0.0001, "num_epochs": 3, "lora_rank": 64},
        "compute": {"accelerator": "A100", "gpu_count": 4},
    }
    response = post(train_http, body)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "created" and job["baseten_status"] == "TRAINING_JOB_CREATED"
    assert job["training_project_name"] == "recipe" and job["job_name"] == "first-run"
    assert job["idempotent_replay"] is False
    assert job["dashboard_url"] == (
        f"{sandbox.url}/training/{job['training_project_id']}/logs/{job['training_job_id']}"
    )
    assert set(job) == {
        "training_project_id",
        "training_project_name",
        "training_job_id",
        "job_name",
        "status",
        "baseten_status",
        "error_message",
        "created_at",
        "updated_at",
        "dashboard_url",
        "idempotent_replay",
        "method",
    }
    assert job["method"] == "supervised"

    [recorded] = sandbox.jobs()
    assert recorded["job"]["id"] == job["training_job_id"]
    env = env_of(recorded)
    assert env["DATASET_ID"] == VALID["dataset_id"] and env["MODEL_ID"] == VALID["model_id"]
    assert env["HF_TOKEN"] == {"name": "hf_access_token"}
    config = json.loads(env["RUNTIME_CONFIG"])
    assert config["hyperparameters"] == {
        "learning_rate": 0.0001,
        "num_epochs": 3,
        "batch_size": 4,
        "gradient_accumulation_steps": 4,
        "max_seq_length": 2048,
        "lora_rank": 64,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "seed": 42,
        "validation_split": 0.0,
        "train_on_inputs": False,
        "dpo_beta": None,
        "eval_samples": 0,  # resolved: no validation set, so no samples
    }
    assert config["method"] == "supervised"
    assert recorded["job"]["name"] == "first-run"
    compute = recorded["request"]["compute"]
    assert compute["accelerator"] == {"accelerator": "A100", "count": 4}
    assert compute["node_count"] == 1
    assert recorded["request"]["runtime"]["checkpointing_config"]["enabled"] is True

    # The uploaded archive is the staged template with this request's runtime_config.json.
    [artifact] = recorded["request"]["runtime"]["artifacts"]
    blob = (
        s3.client().get_object(Bucket=artifact["s3_bucket"], Key=artifact["s3_key"])["Body"].read()
    )
    with tarfile.open(fileobj=io.BytesIO(blob)) as archive:
        names = set(archive.getnames())
        assert {"config.py", "train.py", "runtime_config.json"} <= names
        staged = json.load(archive.extractfile("runtime_config.json"))  # type: ignore[arg-type]
    assert staged["dataset_id"] == VALID["dataset_id"]
    assert staged["hyperparameters"]["lora_rank"] == 64
    assert staged["compute"] == {"accelerator": "A100", "gpu_count": 4, "node_count": None}
    assert API_KEY not in train_http.output()


def test_defaults_are_derived_and_documented(train_http: FunctionServer, sandbox: Sandbox) -> None:
    response = post(train_http, VALID)
    assert response.status_code == 201
    job = response.json()
    assert job["training_project_name"] == "ft-openai-gpt-oss-20b"
    assert job["job_name"].startswith("gpt-oss-20b-")
    compute = sandbox.jobs()[0]["request"]["compute"]
    assert compute["accelerator"] == {"accelerator": "H100", "count": 1}


def test_twenty_concurrent_submits_get_their_own_config(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    def submit(index: int) -> dict[str, Any]:
        body = {**VALID, "dataset_id": f"org/data-{index}", "hyperparameters": {"seed": index}}
        response = post(train_http, body)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    with ThreadPoolExecutor(20) as pool:
        jobs = list(pool.map(submit, range(20)))
    assert len({job["training_job_id"] for job in jobs}) == 20
    recorded = sandbox.jobs()
    assert len(recorded) == 20
    for item in recorded:
        env = env_of(item)
        config = json.loads(env["RUNTIME_CONFIG"])
        index = int(env["DATASET_ID"].rsplit("-", 1)[1])
        assert config["dataset_id"] == env["DATASET_ID"]
        assert config["hyperparameters"]["seed"] == index


@pytest.mark.parametrize(
    ("fault", "status", "error_type"),
    [
        ({"status": 500}, 502, "upstream_error"),
        ({"status": 401}, 502, "upstream_error"),
        ({"status": 429, "retry_after": 7}, 503, "upstream_unavailable"),
        (
            {
                "status": 400,
                "body": {"code": "VALIDATION_ERROR", "message": "accelerator sold out"},
            },
            422,
            "upstream_rejected",
        ),
        ({"status": 200, "hang_seconds": 5}, 503, "upstream_unavailable"),
    ],
)
def test_baseten_faults_map_to_contract_errors(
    train_http: FunctionServer,
    sandbox: Sandbox,
    fault: dict[str, Any],
    status: int,
    error_type: str,
) -> None:
    sandbox.add_fault(method="POST", path=r"v1/training_projects/[^/]+/jobs$", **fault)
    started = time.monotonic()
    response = post(train_http, VALID)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type
    if status == 503:
        assert int(response.headers["Retry-After"]) >= 1
    if fault.get("retry_after"):
        assert response.headers["Retry-After"] == "7"
    if error_type == "upstream_rejected":
        assert "accelerator sold out" in error["message"]
        # truss's own print() of the message became a JSON log line: stdout stays JSON.
        assert "Client error: accelerator sold out" not in [
            line for line in train_http.output().splitlines() if not line.startswith("{")
        ]
        assert '"truss: Client error: accelerator sold out"' in train_http.output()
    assert sandbox.jobs() == []
    assert API_KEY not in response.text and API_KEY not in train_http.output()
    # A hung handler answers only when its hang ends; let it finish so the
    # shared sandbox is quiet for the next test.
    time.sleep(max(0.0, fault.get("hang_seconds", 0) + 0.2 - (time.monotonic() - started)))


def test_secret_manager_down_answers_503_within_seconds(sandbox: Sandbox, tmp_path: Path) -> None:
    broken = FakeSecretManager().start()
    broken.failures[SECRET_NAME] = 503
    env = function_env(sandbox, broken, tmp_path, SECRET_TIMEOUT_SECONDS="1")
    try:
        with FunctionServer("train_http", env) as server:
            started = time.monotonic()
            response = post(server, VALID)
            elapsed = time.monotonic() - started
            assert response.status_code == 503
            assert response.json()["error"]["type"] == "secret_unavailable"
            assert int(response.headers["Retry-After"]) >= 1
            assert elapsed < 5
            assert broken.requests, "the real client must have asked the local Secret Manager"
    finally:
        broken.stop()
    assert sandbox.jobs() == [] and list(tmp_path.iterdir()) == []


def test_submit_works_without_git_on_path(
    sandbox: Sandbox, secret_manager: FakeSecretManager, tmp_path: Path
) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    work = tmp_path / "tmp"
    work.mkdir()
    env = function_env(sandbox, secret_manager, work)
    with FunctionServer("train_http", env, path=empty_bin) as server:
        response = post(server, VALID)
        assert response.status_code == 201, response.text + server.output()
    [recorded] = sandbox.jobs()
    assert recorded["request"]["truss_user_env"]["git_info"] is None
    assert list(work.iterdir()) == []
