"""DPO jobs through train_http (functions-framework), the sandbox and poll_jobs.

``method`` reaches the job (runtime_config.json and RUNTIME_CONFIG), every Job answer
reports it at no extra Baseten call, its metrics and completed summary carry TRL's
rewards, a resume keeps it, and every mismatch of method, file and hyperparameters is
a 400 naming the field with nothing created at Baseten.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import requests

from finetune_api.insights.schemas import MetricsAnswer
from finetune_api.insights.training_metrics import REWARD_FIELDS
from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from loopback.servers import LocalS3
from loopback.webhook_receiver import WebhookReceiver
from sandbox import Sandbox
from tests.test_poll_e2e import poll, poller, receiver  # noqa: F401 - receiver is a fixture

MODEL = "Qwen/Qwen3-0.6B"
PAIR = {
    "input": {"messages": [{"role": "user", "content": "Where is my order?"}]},
    "preferred_output": [{"role": "assistant", "content": "It ships today."}],
    "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
}
CHAT = {
    "messages": [
        {"role": "user", "content": "Where is my order?"},
        {"role": "assistant", "content": "It ships today."},
    ]
}


def upload(server: FunctionServer, line: dict[str, Any], lines: int = 8) -> str:
    body = (json.dumps(line) + "\n").encode() * lines
    response = requests.post(
        f"{server.url}/files",
        files={"file": ("data.jsonl", body, "application/jsonl")},
        data={"purpose": "fine-tune"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    record: dict[str, Any] = response.json()
    assert record["status"] == "processed", record
    return str(record["id"])


def submit(server: FunctionServer, body: dict[str, Any], **headers: str) -> requests.Response:
    return requests.post(f"{server.url}/jobs", json=body, headers=headers, timeout=60)


def created(server: FunctionServer, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = submit(server, body, **headers)
    assert response.status_code in (200, 201), response.text
    job: dict[str, Any] = response.json()
    return job


def runtime_config(entry: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(
        entry["request"]["runtime"]["environment_variables"]["RUNTIME_CONFIG"]
    )
    return config


def staged_config(s3: LocalS3, entry: dict[str, Any]) -> dict[str, Any]:
    [artifact] = entry["request"]["runtime"]["artifacts"]
    blob = (
        s3.client().get_object(Bucket=artifact["s3_bucket"], Key=artifact["s3_key"])["Body"].read()
    )
    with tarfile.open(fileobj=io.BytesIO(blob)) as archive:
        staged: dict[str, Any] = json.load(archive.extractfile("runtime_config.json"))  # type: ignore[arg-type]
    return staged


def entry_of(sandbox: Sandbox, job_id: str) -> dict[str, Any]:
    return next(item for item in sandbox.jobs() if item["job"]["id"] == job_id)


def test_a_dpo_job_carries_its_method_to_the_job_and_every_answer(
    train_http: FunctionServer, sandbox: Sandbox, s3: LocalS3
) -> None:
    pairs = upload(train_http, PAIR)
    body = {
        "model_id": MODEL,
        "training_file": pairs,
        "job_name": "prefs",
        "method": "dpo",
        "hyperparameters": {"dpo_beta": 0.3, "num_epochs": 2},
    }
    job = created(train_http, body, **{"Idempotency-Key": "dpo-once"})
    assert job["method"] == "dpo" and job["job_name"] == "prefs"
    entry = entry_of(sandbox, job["training_job_id"])
    # The method rides in the Baseten job name, before the idempotency digest.
    assert entry["job"]["name"].startswith("prefs--dpo-ik-")
    for config in (runtime_config(entry), staged_config(s3, entry)):
        assert config["method"] == "dpo"
        assert config["hyperparameters"]["dpo_beta"] == 0.3
        assert config["hyperparameters"]["train_on_inputs"] is None
        assert config["hyperparameters"]["num_epochs"] == 2
        assert config["training_file"]["format"] == "preference"

    # A replay answers the same DPO job.
    again = created(train_http, body, **{"Idempotency-Key": "dpo-once"})
    assert again["training_job_id"] == job["training_job_id"]
    assert again["idempotent_replay"] is True and again["method"] == "dpo"

    # A supervised job beside it, with the defaults filled for its method.
    chats = upload(train_http, CHAT)
    plain = created(train_http, {"model_id": MODEL, "training_file": chats, "job_name": "chats"})
    assert plain["method"] == "supervised"
    plain_config = runtime_config(entry_of(sandbox, plain["training_job_id"]))
    assert plain_config["method"] == "supervised"
    assert plain_config["hyperparameters"]["train_on_inputs"] is False
    assert plain_config["hyperparameters"]["dpo_beta"] is None

    # GET and list report the method at the same Baseten cost for either method.
    costs = {}
    for one in (job, plain):
        before = sandbox.stats()["requests"]
        url = f"{train_http.url}/jobs/{one['training_project_id']}/{one['training_job_id']}"
        got = requests.get(url, timeout=30)
        assert got.status_code == 200, got.text
        assert got.json()["method"] == one["method"]
        costs[one["method"]] = sandbox.stats()["requests"] - before
    assert costs["dpo"] == costs["supervised"]
    listed = requests.get(f"{train_http.url}/jobs", timeout=30).json()["data"]
    methods = {item["training_job_id"]: item["method"] for item in listed}
    assert methods == {job["training_job_id"]: "dpo", plain["training_job_id"]: "supervised"}

    # A Hugging Face dataset's format is unknown here: dpo is allowed (the template reads it).
    hub = created(
        train_http,
        {"model_id": MODEL, "dataset_id": "org/prefs", "method": "dpo"},
    )
    hub_config = runtime_config(entry_of(sandbox, hub["training_job_id"]))
    assert hub["method"] == "dpo" and hub_config["hyperparameters"]["dpo_beta"] == 0.1


@pytest.mark.parametrize(
    ("fields", "location"),
    [
        ({"method": "dpo", "file": "chat"}, "training_file"),
        ({"file": "preference"}, "training_file"),
        ({"method": "dpo", "file": "preference", "validation": "chat"}, "validation_file"),
        ({"file": "chat", "validation": "preference"}, "validation_file"),
        ({"file": "chat", "hyperparameters": {"dpo_beta": 0.2}}, "hyperparameters.dpo_beta"),
        (
            {"method": "dpo", "file": "preference", "hyperparameters": {"train_on_inputs": True}},
            "hyperparameters.train_on_inputs",
        ),
        (
            {"method": "dpo", "file": "preference", "hyperparameters": {"train_on_inputs": False}},
            "hyperparameters.train_on_inputs",
        ),
        ({"method": "dpo", "file": "preference", "hyperparameters": {"dpo_beta": 0}}, None),
        ({"method": "dpo", "file": "preference", "hyperparameters": {"dpo_beta": 10.5}}, None),
        ({"method": "dpo", "file": "preference", "hyperparameters": {"dpo_beta": "1"}}, None),
        ({"file": "chat", "hyperparameters": {"train_on_inputs": "yes"}}, None),
        ({"method": "reinforcement", "file": "chat"}, "method"),
        ({"method": "DPO", "file": "preference"}, "method"),
        ({"file": "chat", "job_name": "mine--dpo"}, "job_name"),
        ({"method": "dpo", "file": "chat", "dry_run": True}, "training_file"),
    ],
)
def test_a_method_that_does_not_fit_is_a_400_naming_the_field(
    train_http: FunctionServer, sandbox: Sandbox, fields: dict[str, Any], location: str | None
) -> None:
    files = {"chat": upload(train_http, CHAT), "preference": upload(train_http, PAIR)}
    body: dict[str, Any] = {"model_id": MODEL, "training_file": files[fields.pop("file")]}
    if "validation" in fields:
        body["validation_file"] = files[fields.pop("validation")]
    body.update(fields)
    location = location or "hyperparameters." + next(iter(fields["hyperparameters"]))
    before = sandbox.stats()["requests"]
    response = submit(train_http, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert location in [detail["location"] for detail in error["details"]]
    assert location in error["message"]
    # Nothing was created, nor even asked of Baseten.
    assert sandbox.jobs() == [] and sandbox.stats()["requests"] == before


def test_dpo_metrics_and_completed_summary_carry_the_rewards(
    train_http: FunctionServer,
    sandbox: Sandbox,
    secret_manager: FakeSecretManager,
    receiver: WebhookReceiver,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    pairs, chats = upload(train_http, PAIR), upload(train_http, CHAT)
    dpo = created(train_http, {"model_id": MODEL, "training_file": pairs, "method": "dpo"})
    plain = created(train_http, {"model_id": MODEL, "training_file": chats})
    with poller(sandbox, secret_manager, tmp_path, receiver.url) as server:
        poll(server, {})
        for job in (dpo, plain):
            # The sandbox prints the run the job's own RUNTIME_CONFIG asks for.
            sandbox.synthesize_logs(job["training_job_id"], steps=30, seconds=60)
            sandbox.set_status(job["training_job_id"], "TRAINING_JOB_COMPLETED")
        poll(server, {})
    answers = {}
    for job in (dpo, plain):
        url = f"{train_http.url}/jobs/{job['training_project_id']}/{job['training_job_id']}/metrics"
        response = requests.get(url, params={"points": 500}, timeout=60)
        assert response.status_code == 200, response.text
        # The answer is what the OpenAPI document says (reward keys included, nothing else).
        MetricsAnswer.model_validate(response.json())
        answers[job["method"]] = response.json()["training"]
        chart = requests.get(url, params={"format": "svg"}, timeout=60)
        assert chart.status_code == 200 and chart.text.lstrip().startswith("<?xml")
    steps = answers["dpo"]["steps"]
    assert len(steps) == 30
    for step in steps:
        assert all(isinstance(step[name], float) for name in REWARD_FIELDS)
        assert step["rewards/margins"] == pytest.approx(
            step["rewards/chosen"] - step["rewards/rejected"], abs=1e-3
        )
    assert steps[-1]["rewards/margins"] > steps[0]["rewards/margins"]
    summary = answers["dpo"]["summary"]
    assert {name: summary[name] for name in REWARD_FIELDS} == {
        name: steps[-1][name] for name in REWARD_FIELDS
    }
    # A supervised job's answers keep their shape: no reward keys at all.
    assert not set(REWARD_FIELDS) & set(answers["supervised"]["steps"][0])
    assert not set(REWARD_FIELDS) & set(answers["supervised"]["summary"])

    completed = {
        event["data"]["training_job_id"]: event["data"]
        for event in receiver.unique_events.values()
        if event["type"] == "training_job.completed"
    }
    dpo_event = completed[dpo["training_job_id"]]
    assert dpo_event["method"] == "dpo"
    assert {name: dpo_event["summary"][name] for name in REWARD_FIELDS} == {
        name: steps[-1][name] for name in REWARD_FIELDS
    }
    plain_event = completed[plain["training_job_id"]]
    assert plain_event["method"] == "supervised"
    assert not set(REWARD_FIELDS) & set(plain_event["summary"])


def test_a_resumed_dpo_job_keeps_its_method_and_beta(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    pairs = upload(train_http, PAIR)
    body = {
        "model_id": MODEL,
        "training_file": pairs,
        "job_name": "prefs",
        "method": "dpo",
        "hyperparameters": {"dpo_beta": 0.4},
    }
    job = created(train_http, body)
    sandbox.add_checkpoint(job["training_job_id"])
    sandbox.set_status(job["training_job_id"], "TRAINING_JOB_FAILED", "CUDA error")
    url = f"{train_http.url}/jobs/{job['training_project_id']}/{job['training_job_id']}/resume"

    # A resume that would train the DPO job on its inputs is refused; nothing is created.
    before = len(sandbox.jobs())
    refused = requests.post(url, json={"hyperparameters": {"train_on_inputs": True}}, timeout=60)
    assert refused.status_code == 400, refused.text
    details = refused.json()["error"]["details"]
    assert "hyperparameters.train_on_inputs" in [d["location"] for d in details]
    assert len(sandbox.jobs()) == before

    response = requests.post(url, json={"hyperparameters": {"num_epochs": 3}}, timeout=60)
    assert response.status_code == 201, response.text
    new = response.json()
    assert new["method"] == "dpo" and new["job_name"] == "prefs"
    entry = entry_of(sandbox, new["training_job_id"])
    assert entry["job"]["name"] == "prefs--dpo"
    config = runtime_config(entry)
    assert config["method"] == "dpo"
    assert config["hyperparameters"]["dpo_beta"] == 0.4
    assert config["hyperparameters"]["num_epochs"] == 3
    assert config["resume_from"]["training_job_id"] == job["training_job_id"]
    assert config["training_file"]["source"] == pairs


def test_the_polls_retry_of_a_failed_dpo_job_is_a_dpo_job(
    train_http: FunctionServer,
    sandbox: Sandbox,
    secret_manager: FakeSecretManager,
    receiver: WebhookReceiver,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    body = {
        "model_id": MODEL,
        "dataset_id": "org/prefs",
        "job_name": "flaky",
        "method": "dpo",
        "hyperparameters": {"dpo_beta": 0.25},
        "retry": {"max_attempts": 1},
    }
    first = created(train_http, body)
    sandbox.add_checkpoint(first["training_job_id"])
    sandbox.set_status(first["training_job_id"], "TRAINING_JOB_FAILED", "NCCL timeout")
    with poller(sandbox, secret_manager, tmp_path, receiver.url) as server:
        poll(server, {})
    [_, second] = sandbox.jobs()
    assert second["job"]["name"].startswith("flaky--dpo-ik-")  # the retry's own key
    config = runtime_config(second)
    assert config["method"] == "dpo" and config["hyperparameters"]["dpo_beta"] == 0.25
    assert config["resume_from"]["training_job_id"] == first["training_job_id"]
    [retried] = [e for e in receiver.unique_events.values() if e["type"] == "training_job.retried"]
    assert retried["data"]["job"]["method"] == "dpo"
    assert retried["data"]["failed_job"]["method"] == "dpo"
