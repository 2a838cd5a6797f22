"""POST /jobs/{project_id}/{job_id}/resume end to end: train_http under functions-framework,
the real truss push into the sandbox (which checks and records load_checkpoint_config), and
the resumed job's request read back through Baseten's download operation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from sandbox import Sandbox
from tests.conftest import function_env

BODY = {
    "dataset_id": "HuggingFaceH4/Multilingual-Thinking",
    "model_id": "openai/gpt-oss-20b",
    "job_name": "support-bot",
    "hyperparameters": {"learning_rate": 0.0001, "num_epochs": 2, "lora_rank": 8},
    "compute": {"accelerator": "H100", "gpu_count": 2},
}
FAILED = "TRAINING_JOB_FAILED"


def submit(server: FunctionServer, **extra: Any) -> dict[str, Any]:
    response = requests.post(f"{server.url}/jobs", json={**BODY, **extra}, timeout=60)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def resume(
    server: FunctionServer, job: dict[str, Any], body: Any = None, **headers: str
) -> requests.Response:
    url = f"{server.url}/jobs/{job['training_project_id']}/{job['training_job_id']}/resume"
    return requests.post(url, json=body, headers=headers, timeout=60)


def failed_with_checkpoints(
    server: FunctionServer, sandbox: Sandbox, checkpoints: int = 2, **extra: Any
) -> dict[str, Any]:
    job = submit(server, **extra)
    for _ in range(checkpoints):
        sandbox.add_checkpoint(job["training_job_id"])
    sandbox.set_status(job["training_job_id"], FAILED, "CUDA error: an illegal memory access")
    return job


def runtime_config(entry: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(
        entry["request"]["runtime"]["environment_variables"]["RUNTIME_CONFIG"]
    )
    return config


def test_resume_continues_from_the_newest_checkpoint_with_the_jobs_own_request(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    job = failed_with_checkpoints(train_http, sandbox)
    response = resume(train_http, job, {"hyperparameters": {"num_epochs": 4}})
    assert response.status_code == 201, response.text
    new = response.json()
    assert new["training_project_id"] == job["training_project_id"]
    assert new["training_job_id"] != job["training_job_id"]
    assert new["job_name"] == "support-bot" and new["idempotent_replay"] is False
    assert new["resumed_from"] == {
        "training_project_id": job["training_project_id"],
        "training_job_id": job["training_job_id"],
        "checkpoint_id": "checkpoint-2",
    }

    [_, entry] = sandbox.jobs()
    assert entry["job"]["id"] == new["training_job_id"]
    # What Baseten receives: truss's LoadCheckpointConfig, in the spec's shape.
    assert entry["request"]["runtime"]["load_checkpoint_config"] == {
        "enabled": True,
        "checkpoints": [
            {
                "typ": "baseten_named_checkpoint",
                "checkpoint_name": "checkpoint-2",
                "job_id": job["training_job_id"],
            }
        ],
        "download_folder": "/tmp/loaded_checkpoints",
    }
    # What the sandbox (as Baseten) would load before train.py starts.
    assert entry["load_checkpoints"]["checkpoints"] == [
        {
            "typ": "baseten_named_checkpoint",
            "training_project_id": job["training_project_id"],
            "training_job_id": job["training_job_id"],
            "checkpoint_id": "checkpoint-2",
            "path": "/tmp/loaded_checkpoints/rank-0/checkpoint-2",
            "resolved": True,
        }
    ]
    config = runtime_config(entry)
    assert config["resume_from"] == new["resumed_from"]
    assert config["dataset_id"] == BODY["dataset_id"] and config["model_id"] == BODY["model_id"]
    # The override replaced one field; the job's own others stayed.
    assert config["hyperparameters"]["num_epochs"] == 4
    assert config["hyperparameters"]["learning_rate"] == 0.0001
    assert config["hyperparameters"]["lora_rank"] == 8
    assert config["compute"]["gpu_count"] == 2
    assert entry["request"]["compute"]["accelerator"] == {"accelerator": "H100", "count": 2}


def test_resume_from_a_named_checkpoint_with_compute_and_name_overrides(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    job = failed_with_checkpoints(train_http, sandbox)
    body = {"checkpoint_id": "checkpoint-1", "compute": {"gpu_count": 4}, "job_name": "again"}
    response = resume(train_http, job, body)
    assert response.status_code == 201, response.text
    assert response.json()["resumed_from"]["checkpoint_id"] == "checkpoint-1"
    assert response.json()["job_name"] == "again"
    entry = sandbox.jobs()[-1]
    assert entry["load_checkpoints"]["checkpoints"][0]["checkpoint_id"] == "checkpoint-1"
    assert entry["request"]["compute"]["accelerator"] == {"accelerator": "H100", "count": 4}


def test_a_stopped_or_completed_job_can_be_resumed_too(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    job = submit(train_http)
    sandbox.add_checkpoint(job["training_job_id"])
    sandbox.set_status(job["training_job_id"], "TRAINING_JOB_COMPLETED")
    response = resume(train_http, job, {"hyperparameters": {"num_epochs": 3}})
    assert response.status_code == 201, response.text


def test_a_resumed_job_keeps_its_wandb_integration_and_samples(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    wandb = {"type": "wandb", "wandb": {"project": "support"}}
    job = failed_with_checkpoints(
        train_http,
        sandbox,
        integrations=[wandb],
        hyperparameters={**BODY["hyperparameters"], "validation_split": 0.1, "eval_samples": 7},
    )
    response = resume(train_http, job)
    assert response.status_code == 201, response.text
    resumed = next(
        j for j in sandbox.jobs() if j["job"]["id"] == response.json()["training_job_id"]
    )
    config = runtime_config(resumed)
    assert config["integrations"] == [wandb] and config["hyperparameters"]["eval_samples"] == 7
    env = resumed["request"]["runtime"]["environment_variables"]
    assert env["WANDB_API_KEY"] == {"name": "wandb_api_key"}


def test_idempotency_key_replays_the_same_resumed_job(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    job = failed_with_checkpoints(train_http, sandbox)
    first = resume(train_http, job, None, **{"Idempotency-Key": "resume-1"})
    assert first.status_code == 201, first.text
    again = resume(train_http, job, None, **{"Idempotency-Key": "resume-1"})
    assert again.status_code == 200, again.text
    assert again.json()["training_job_id"] == first.json()["training_job_id"]
    assert again.json()["idempotent_replay"] is True
    assert again.json()["resumed_from"] == first.json()["resumed_from"]
    assert len(sandbox.jobs()) == 2 and creates(sandbox) == 2
    bad_key = resume(train_http, job, None, **{"Idempotency-Key": "has space"})
    assert bad_key.status_code == 400
    assert bad_key.json()["error"]["type"] == "invalid_request"
    assert len(sandbox.jobs()) == 2 and creates(sandbox) == 2


# -- bad input: a clear error, and no Baseten job created --------------------------------


CREATE = "POST /v1/training_projects/<project_id>/jobs"


def creates(sandbox: Sandbox) -> int:
    """Create-job calls Baseten received (refused ones too)."""
    count: int = sandbox.stats()["by_route"].get(CREATE, 0)
    return count


def test_resuming_a_running_job_is_a_conflict(train_http: FunctionServer, sandbox: Sandbox) -> None:
    job = submit(train_http)
    sandbox.add_checkpoint(job["training_job_id"])
    sandbox.set_status(job["training_job_id"], "TRAINING_JOB_RUNNING")
    response = resume(train_http, job)
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["type"] == "conflict"
    assert error["message"].startswith("the training job is running;")
    assert len(sandbox.jobs()) == 1 and creates(sandbox) == 1


def test_resuming_a_job_without_checkpoints_is_a_conflict(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    job = failed_with_checkpoints(train_http, sandbox, checkpoints=0)
    response = resume(train_http, job)
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error == {
        "type": "conflict",
        "message": "the training job has no checkpoint to resume from",
    }
    assert len(sandbox.jobs()) == 1 and creates(sandbox) == 1


def test_an_unknown_checkpoint_or_job_is_404_with_a_fixed_message(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    job = failed_with_checkpoints(train_http, sandbox)
    response = resume(train_http, job, {"checkpoint_id": "checkpoint-<script>99"})
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error == {"type": "not_found", "message": "checkpoint not found for this training job"}
    assert "99" not in response.text
    unknown = {**job, "training_job_id": "zzz9999"}
    response = resume(train_http, unknown)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"
    assert "zzz9999" not in response.text
    assert len(sandbox.jobs()) == 1 and creates(sandbox) == 1


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"hyperparameters": {"num_epochs": 0}}, "hyperparameters.num_epochs"),
        ({"hyperparameters": {"learning_rate": "fast"}}, "hyperparameters.learning_rate"),
        ({"hyperparameters": {"epochs": 3}}, "hyperparameters.epochs"),
        ({"compute": {"accelerator": "TPU"}}, "compute.accelerator"),
        ({"compute": {"gpu_count": 0}}, "compute.gpu_count"),
        ({"job_name": "has space"}, "job_name"),
        ({"job_name": "x-ik-0123456789abcdef0123"}, "job_name"),
        ({"checkpoint_id": ""}, "checkpoint_id"),
        ({"model_id": "other/model"}, "model_id"),
        ([1], "body"),
    ],
)
def test_overrides_that_fail_validation_are_400_before_baseten_is_asked(
    train_http: FunctionServer, sandbox: Sandbox, body: Any, location: str
) -> None:
    job = failed_with_checkpoints(train_http, sandbox)
    requests_before = sandbox.stats()["requests"]
    response = resume(train_http, job, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    if location != "body":
        assert location in [d["location"] for d in error["details"]]
    assert len(sandbox.jobs()) == 1
    assert sandbox.stats()["requests"] == requests_before  # refused before any Baseten call


@pytest.mark.parametrize(
    "retry",
    [
        {"max_attempts": 0},
        {"max_attempts": 6},
        {"max_attempts": "3"},
        {},
        {"max_attempts": 2, "x": 1},
        3,
    ],
)
def test_retry_max_attempts_outside_1_to_5_is_refused_on_submit(
    train_http: FunctionServer, sandbox: Sandbox, retry: Any
) -> None:
    response = requests.post(f"{train_http.url}/jobs", json={**BODY, "retry": retry}, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert any(d["location"].startswith("retry") for d in error["details"])
    assert sandbox.jobs() == [] and sandbox.stats()["requests"] == 0


def test_retry_travels_in_the_jobs_runtime_config(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    submit(train_http, retry={"max_attempts": 5})
    [entry] = sandbox.jobs()
    config = runtime_config(entry)
    assert config["retry"] == {"max_attempts": 5}
    assert entry["request"]["runtime"]["load_checkpoint_config"] is None


@pytest.fixture(scope="module")
def scoped_server(
    sandbox_server: Sandbox,
    secret_manager: FakeSecretManager,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FunctionServer]:
    env = function_env(
        sandbox_server,
        secret_manager,
        tmp_path_factory.mktemp("scoped-resume"),
        PROJECT_NAME_PREFIX="svc-",
    )
    with FunctionServer("train_http", env) as server:
        yield server


def test_a_job_outside_project_name_prefix_cannot_be_resumed(
    train_http: FunctionServer, scoped_server: FunctionServer, sandbox: Sandbox
) -> None:
    foreign = failed_with_checkpoints(train_http, sandbox, project_name="other-team")
    response = resume(scoped_server, foreign)
    assert response.status_code == 404, response.text
    assert response.json()["error"] == {
        "type": "not_found",
        "message": "training job not found on Baseten",
    }
    assert foreign["training_job_id"] not in response.text
    assert len(sandbox.jobs()) == 1 and creates(sandbox) == 1
    # Inside the prefix it works.
    own = failed_with_checkpoints(train_http, sandbox, project_name="svc-team")
    assert resume(scoped_server, own).status_code == 201


def test_openapi_documents_resume_retry_and_their_events(train_http: FunctionServer) -> None:
    from openapi_spec_validator import validate

    document = requests.get(f"{train_http.url}/openapi.json", timeout=10).json()
    validate(document)
    operation = document["paths"]["/jobs/{project_id}/{job_id}/resume"]["post"]
    assert set(operation["responses"]) >= {"201", "200", "400", "404", "409", "422", "502", "503"}
    assert "Idempotency-Key" in [p["name"] for p in operation["parameters"]]
    schemas = document["components"]["schemas"]
    assert set(schemas["ResumeRequest"]["properties"]) == {
        "checkpoint_id",
        "hyperparameters",
        "compute",
        "job_name",
    }
    assert "resumed_from" not in schemas["Job"]["properties"]  # the Job stays as it was
    assert "resumed_from" in schemas["ResumedJob"]["required"]
    retry = schemas["RetryPolicy"]["properties"]["max_attempts"]
    assert (retry["minimum"], retry["maximum"]) == (1, 5)
    assert "retry" in schemas["TrainingRequest"]["properties"]
    assert set(document["webhooks"]) == {"training_job.failed", "training_job.retried"}
    assert set(schemas["RetriedEventData"]["properties"]) == {
        "failed_job",
        "job",
        "attempt",
        "max_attempts",
    }


def test_a_job_on_an_uploaded_file_resumes_on_the_same_checked_bytes(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    chat = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    data = (json.dumps(chat) + "\n").encode() * 4
    file = requests.post(
        f"{train_http.url}/files",
        files={"file": ("c.jsonl", data)},
        data={"purpose": "fine-tune"},
        timeout=30,
    ).json()
    body = {"training_file": file["id"], "model_id": BODY["model_id"]}
    response = requests.post(f"{train_http.url}/jobs", json=body, timeout=60)
    assert response.status_code == 201, response.text
    job = response.json()
    sandbox.add_checkpoint(job["training_job_id"])
    sandbox.set_status(job["training_job_id"], FAILED, "preempted")
    resumed = resume(train_http, job)
    assert resumed.status_code == 201, resumed.text
    first, second = (runtime_config(entry) for entry in sandbox.jobs())
    assert second["dataset_id"] is None
    assert second["training_file"]["source"] == file["id"]
    assert second["training_file"]["sha256"] == first["training_file"]["sha256"] == file["sha256"]
    # While the resumed job runs, its File cannot be deleted (409 naming that job).
    new_job = resumed.json()["training_job_id"]
    held = requests.delete(f"{train_http.url}/files/{file['id']}", timeout=10)
    assert held.status_code == 409 and new_job in held.json()["error"]["message"]
    sandbox.set_status(new_job, FAILED, "preempted")
    assert requests.delete(f"{train_http.url}/files/{file['id']}", timeout=10).status_code == 200
    # Once the File is gone, a resume is refused like a submit, and creates nothing.
    gone = resume(train_http, job)
    assert gone.status_code == 400 and "no such File" in gone.json()["error"]["message"]
    assert len(sandbox.jobs()) == 2
