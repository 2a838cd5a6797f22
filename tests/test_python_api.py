"""The Python API (handle_training_request) in-process, and the FastAPI example over it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import finetune_api
from finetune_api import runtime
from loopback.servers import LocalS3
from sandbox import Sandbox
from tests.conftest import API_KEY

DATASET, MODEL = "HuggingFaceH4/Multilingual-Thinking", "openai/gpt-oss-20b"


@pytest.fixture
def configured(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Sandbox]:
    monkeypatch.setenv("BASETEN_API_KEY", API_KEY)
    monkeypatch.setenv("BASETEN_REMOTE_URL", sandbox.url)
    monkeypatch.setenv("BASETEN_API_URL", sandbox.url)
    monkeypatch.setenv("BASETEN_TIMEOUT_SECONDS", "5")
    runtime.reset()
    yield sandbox
    runtime.reset()


def test_valid_call_returns_the_job(configured: Sandbox, s3: LocalS3) -> None:
    job = finetune_api.handle_training_request(
        DATASET, MODEL, "api-project", job_name="api-run", hyperparameters={"num_epochs": 2}
    )
    json.dumps(job)  # plain JSON-able
    assert job["training_project_name"] == "api-project" and job["job_name"] == "api-run"
    assert job["status"] == "created" and job["idempotent_replay"] is False
    [recorded] = configured.jobs()
    assert recorded["job"]["id"] == job["training_job_id"]
    config = json.loads(recorded["request"]["runtime"]["environment_variables"]["RUNTIME_CONFIG"])
    assert config["hyperparameters"]["num_epochs"] == 2


def test_integrations_through_the_python_api(configured: Sandbox) -> None:
    wandb = {"type": "wandb", "wandb": {"project": "p"}}
    finetune_api.handle_training_request(DATASET, MODEL, integrations=[wandb])
    [recorded] = configured.jobs()
    env = recorded["request"]["runtime"]["environment_variables"]
    assert env["WANDB_API_KEY"] == {"name": "wandb_api_key"}
    assert json.loads(env["RUNTIME_CONFIG"])["integrations"] == [wandb]


def test_idempotency_key_replays(configured: Sandbox) -> None:
    first = finetune_api.handle_training_request(DATASET, MODEL, idempotency_key="order-7")
    second = finetune_api.handle_training_request(DATASET, MODEL, idempotency_key="order-7")
    assert second["training_job_id"] == first["training_job_id"]
    assert (first["idempotent_replay"], second["idempotent_replay"]) == (False, True)
    assert len(configured.jobs()) == 1


def test_custom_template_dir(configured: Sandbox, tmp_path: Path) -> None:
    template = tmp_path / "template"
    template.mkdir()
    source = Path(__file__).resolve().parent.parent / "training_template" / "config.py"
    (template / "config.py").write_text(source.read_text())
    (template / "marker.txt").write_text("custom")
    finetune_api.handle_training_request(DATASET, MODEL, training_template_dir=template)
    assert len(configured.jobs()) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "status"),
    [
        ({"dataset_id": "../x"}, finetune_api.InvalidRequestError, 400),
        ({"model_id": "a b"}, finetune_api.InvalidRequestError, 400),
        ({"project_name": "-bad"}, finetune_api.InvalidRequestError, 400),
        ({"hyperparameters": {"lora_rank": 0}}, finetune_api.InvalidRequestError, 400),
        ({"hyperparameters": {"unknown": 1}}, finetune_api.InvalidRequestError, 400),
        ({"compute": {"gpu_count": 99}}, finetune_api.InvalidRequestError, 400),
        ({"integrations": [{"type": "wandb", "wandb": {}}]}, finetune_api.InvalidRequestError, 400),
        ({"hyperparameters": {"eval_samples": 1}}, finetune_api.InvalidRequestError, 400),
        ({"idempotency_key": "has space"}, finetune_api.InvalidRequestError, 400),
        ({"method": "rl"}, finetune_api.InvalidRequestError, 400),
        ({"hyperparameters": {"dpo_beta": 0.2}}, finetune_api.InvalidRequestError, 400),
        (
            {"method": "dpo", "hyperparameters": {"train_on_inputs": False}},
            finetune_api.InvalidRequestError,
            400,
        ),
        ({"training_template_dir": "/nonexistent"}, finetune_api.ConfigurationError, 500),
    ],
)
def test_bad_arguments_raise_contract_errors(
    configured: Sandbox, kwargs: dict[str, Any], error: type[finetune_api.ServiceError], status: int
) -> None:
    arguments: dict[str, Any] = {"dataset_id": DATASET, "model_id": MODEL, **kwargs}
    with pytest.raises(error) as caught:
        finetune_api.handle_training_request(**arguments)
    assert caught.value.status == status
    assert caught.value.body["error"]["type"] == (
        "internal" if status == 500 else "invalid_request"
    )
    assert configured.jobs() == []


def test_upstream_errors_raise_their_types(configured: Sandbox) -> None:
    configured.add_fault(
        method="POST",
        path=r"v1/training_projects/[^/]+/jobs$",
        status=400,
        body={"code": "VALIDATION_ERROR", "message": "bad accelerator"},
    )
    with pytest.raises(finetune_api.UpstreamRejectedError) as caught:
        finetune_api.handle_training_request(DATASET, MODEL)
    assert caught.value.status == 422 and "bad accelerator" in caught.value.message
    configured.clear_faults()
    configured.add_fault(
        method="POST", path=r"v1/training_projects/[^/]+/jobs$", status=429, retry_after=3
    )
    with pytest.raises(finetune_api.UpstreamUnavailableError) as unavailable:
        finetune_api.handle_training_request(DATASET, MODEL)
    assert unavailable.value.headers == {"Retry-After": "3"}


def test_fastapi_example(configured: Sandbox) -> None:
    from fastapi.testclient import TestClient

    from examples.fastapi_app import app

    client = TestClient(app)
    created = client.post(
        "/train", json={"dataset_id": DATASET, "model_id": MODEL, "hyperparameters": {"seed": 3}}
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["training_job_id"] == configured.jobs()[0]["job"]["id"]
    assert body["dashboard_url"].endswith(f"/logs/{body['training_job_id']}")

    bad = client.post("/train", json={"dataset_id": "a--b", "model_id": MODEL})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request"
    assert bad.json()["error"]["details"][0]["location"] == "dataset_id"

    configured.add_fault(method="POST", path=r"v1/training_projects/[^/]+/jobs$", status=503)
    failed = client.post("/train", json={"dataset_id": DATASET, "model_id": MODEL})
    assert failed.status_code == 502 and failed.json()["error"]["type"] == "upstream_error"
    assert len(configured.jobs()) == 1


def test_each_submission_is_validated_once(
    configured: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finetune_api import api
    from finetune_api.core import schemas

    validations: list[Any] = []
    original = schemas.TrainingRequest.model_validate.__func__  # type: ignore[attr-defined]

    def counting(cls: Any, *args: Any, **kwargs: Any) -> Any:
        validations.append(args[0])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(schemas.TrainingRequest, "model_validate", classmethod(counting))
    finetune_api.handle_training_request(DATASET, MODEL, idempotency_key="once-a")
    assert len(validations) == 1
    api.submit_body({"dataset_id": DATASET, "model_id": MODEL}, idempotency_key="once-b")
    assert len(validations) == 2
    assert len(configured.jobs()) == 2


def test_logs_and_metrics_functions_raise_the_same_exceptions(configured: Sandbox) -> None:
    seeded = configured.seed(status="TRAINING_JOB_COMPLETED")
    project_id, job_id = seeded["projects"][0]["id"], seeded["job_ids"][0]
    configured.synthesize_logs(job_id, steps=60, seconds=30)
    page = finetune_api.job_logs(project_id, job_id, limit=10, order="desc")
    assert len(page["data"]) == 10 and page["has_more"] is True
    answer = finetune_api.job_metrics(project_id, job_id, points=20)
    assert answer["training"]["summary"]["step"] == 60
    assert finetune_api.job_metrics_svg(project_id, job_id).startswith("<?xml")
    with pytest.raises(finetune_api.InvalidRequestError) as caught:
        finetune_api.job_logs(project_id, job_id, limit=5000)
    assert caught.value.status == 400 and caught.value.body["error"]["details"] == [
        {"location": "limit", "reason": "must be an integer from 1 to 1000"}
    ]
    with pytest.raises(finetune_api.NotFoundError):
        finetune_api.job_metrics(project_id, "nosuchjob")


def test_evaluation_and_checkpoint_files_functions(configured: Sandbox, s3: LocalS3) -> None:
    job = finetune_api.handle_training_request(
        DATASET, MODEL, hyperparameters={"validation_split": 0.1, "eval_samples": 1}
    )
    project_id, job_id = job["training_project_id"], job["training_job_id"]
    configured.synthesize_logs(job_id, steps=50, seconds=30)
    checkpoint = configured.add_checkpoint(job_id)["checkpoint_id"]
    configured.set_status(job_id, "TRAINING_JOB_COMPLETED")
    answer = finetune_api.job_evaluation(project_id, job_id)
    assert answer["change"]["eval_loss"] < 0 and len(answer["samples"]) == 1
    page = finetune_api.checkpoint_files(project_id, job_id, checkpoint, limit=2)
    assert len(page["data"]) == 2 and page["has_more"] is True
    rest = finetune_api.checkpoint_files(project_id, job_id, checkpoint, cursor=page["next_cursor"])
    assert [f["relative_file_name"] for f in rest["data"]] == [f"{checkpoint}/trainer_state.json"]
    with pytest.raises(finetune_api.NotFoundError):
        finetune_api.checkpoint_files(project_id, job_id, "checkpoint-99")
    with pytest.raises(finetune_api.NotFoundError):
        finetune_api.job_evaluation(project_id, "nosuchjob")


def test_a_training_file_through_the_python_api(
    configured: Sandbox, s3: LocalS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import io

    monkeypatch.setenv("FILES_DIR", str(tmp_path / "files"))
    runtime.reset()
    chat = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    data = (json.dumps(chat) + "\n").encode() * 3
    file = runtime.get_services().files.upload("c.jsonl", io.BytesIO(data), "fine-tune")
    job = finetune_api.handle_training_request(None, MODEL, training_file=file["id"])
    [recorded] = configured.jobs()
    assert recorded["job"]["id"] == job["training_job_id"]
    env = recorded["request"]["runtime"]["environment_variables"]
    assert json.loads(env["RUNTIME_CONFIG"])["training_file"]["sha256"] == file["sha256"]
    with pytest.raises(finetune_api.InvalidRequestError) as refused:
        finetune_api.handle_training_request(DATASET, MODEL, training_file=file["id"])
    assert "exactly one of dataset_id and training_file" in str(refused.value.body)
    assert len(configured.jobs()) == 1


def test_method_dpo_through_the_python_api(
    configured: Sandbox, s3: LocalS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import io

    monkeypatch.setenv("FILES_DIR", str(tmp_path / "files"))
    runtime.reset()
    files = runtime.get_services().files
    pair = {
        "input": {"messages": [{"role": "user", "content": "a"}]},
        "preferred_output": [{"role": "assistant", "content": "b"}],
        "non_preferred_output": [{"role": "assistant", "content": "c"}],
    }
    chat = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    pairs = files.upload("p.jsonl", io.BytesIO((json.dumps(pair) + "\n").encode() * 3), "fine-tune")
    chats = files.upload("c.jsonl", io.BytesIO((json.dumps(chat) + "\n").encode() * 3), "fine-tune")
    assert pairs["validation"]["format"] == "preference"
    job = finetune_api.handle_training_request(
        None, MODEL, training_file=pairs["id"], method="dpo", hyperparameters={"dpo_beta": 0.2}
    )
    assert job["method"] == "dpo"
    [recorded] = configured.jobs()
    config = json.loads(recorded["request"]["runtime"]["environment_variables"]["RUNTIME_CONFIG"])
    assert config["method"] == "dpo" and config["hyperparameters"]["dpo_beta"] == 0.2
    for method, file in ((None, pairs), ("dpo", chats)):
        with pytest.raises(finetune_api.InvalidRequestError) as refused:
            finetune_api.handle_training_request(
                None, MODEL, training_file=file["id"], method=method
            )
        assert refused.value.body["error"]["details"][0]["location"] == "training_file"
    assert len(configured.jobs()) == 1


def test_team_acts_as_that_team(
    configured: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from finetune_api.core.errors import InvalidRequestError, NotFoundError

    monkeypatch.setenv("TEAMS", "alpha,beta")
    monkeypatch.setenv("ADMIN_TEAM", "beta")
    monkeypatch.setenv("FILES_DIR", str(tmp_path / "files"))
    monkeypatch.setenv("TEAM_LIMITS", '{"alpha": {"max_active_jobs": 1}}')
    runtime.reset()
    job = finetune_api.handle_training_request(DATASET, MODEL, team="alpha")
    assert job["training_project_name"].startswith("alpha-")
    ids = (job["training_project_id"], job["training_job_id"])
    # alpha reads its own; nobody else but the admin (beta) does.
    assert finetune_api.job_logs(*ids, team="alpha")["data"] == []
    assert finetune_api.job_logs(*ids, team="beta")["data"] == []
    monkeypatch.setenv("ADMIN_TEAM", "")
    runtime.reset()
    with pytest.raises(NotFoundError):
        finetune_api.job_logs(*ids, team="beta")
    with pytest.raises(InvalidRequestError):
        finetune_api.handle_training_request(DATASET, MODEL, project_name="beta-x", team="alpha")
    from finetune_api.core.errors import QuotaExceededError

    with pytest.raises(QuotaExceededError) as raised:
        finetune_api.handle_training_request(DATASET, MODEL, team="alpha")
    assert raised.value.status == 429
    assert len(configured.jobs()) == 1
    with pytest.raises(InvalidRequestError):
        finetune_api.handle_training_request(DATASET, MODEL, team="Not A Team")
