"""``GET /jobs/{p}/{j}/evaluation`` and ``…/checkpoints/{c}/files`` under functions-framework,
against the sandbox (its synthetic run prints the template's "Did it get better?" lines) and
moto (where the sandbox keeps checkpoint files); and every bad ``integrations`` /
``eval_samples`` on ``POST /jobs``: a 400 naming the field, nothing created at Baseten."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
import requests

from finetune_api.insights.schemas import EvaluationAnswer
from finetune_api.insights.training_metrics import parse_line
from finetune_api.jobs.checkpoint_files import CheckpointFilePage
from loopback.functions import FunctionServer
from sandbox import Sandbox

VALID = {"dataset_id": "HuggingFaceH4/Multilingual-Thinking", "model_id": "Qwen/Qwen3-0.6B"}
LOGS_ROUTE = "GET /v1/training_projects/<project_id>/jobs/<job_id>/logs"


def submit(server: FunctionServer, **extra: Any) -> dict[str, Any]:
    response = requests.post(f"{server.url}/jobs", json={**VALID, **extra}, timeout=60)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def path(job: dict[str, Any]) -> str:
    return f"/jobs/{job['training_project_id']}/{job['training_job_id']}"


def get(server: FunctionServer, route: str, **params: Any) -> requests.Response:
    return requests.get(f"{server.url}{route}", params=params, timeout=60)


def finished_run(sandbox: Sandbox, job: dict[str, Any], **spec: Any) -> list[dict[str, Any]]:
    """A whole synthetic run, the job completed; the run's metrics records."""
    job_id = job["training_job_id"]
    sandbox.synthesize_logs(job_id, steps=50, seconds=120, **spec)
    sandbox.set_status(job_id, "TRAINING_JOB_COMPLETED")
    lines = sandbox.state.training._logs[job_id].rows
    return [record for row in lines if (record := parse_line(row[0]))]


def logs_requests(sandbox: Sandbox) -> int:
    return int(sandbox.stats()["by_route"].get(LOGS_ROUTE, 0))


# -- the evaluation ----------------------------------------------------------------------


def test_evaluation_sets_the_base_model_beside_the_tuned_one(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    job = submit(train_http, hyperparameters={"validation_split": 0.1, "eval_samples": 3})
    records = finished_run(sandbox, job)
    evals = [r for r in records if r["type"] == "eval"]
    base = next(r for r in evals if r["model"] == "base")
    tuned = [r for r in evals if r["model"] == "tuned"][-1]
    response = get(train_http, path(job) + "/evaluation")
    assert response.status_code == 200, response.text
    answer = response.json()
    EvaluationAnswer.model_validate(answer)  # what /openapi.json documents
    assert answer["status"] == "completed"
    assert answer["base"] == {
        "step": 0,
        "eval_loss": base["eval_loss"],
        "eval_mean_token_accuracy": base["eval_mean_token_accuracy"],
    }
    assert answer["tuned"]["step"] == tuned["step"] == 50
    assert answer["tuned"]["eval_loss"] == tuned["eval_loss"]
    assert answer["change"]["eval_loss"] == pytest.approx(tuned["eval_loss"] - base["eval_loss"])
    assert answer["change"]["eval_loss"] < 0 < answer["change"]["eval_mean_token_accuracy"]
    # eval_samples: 3 reached the job (runtime_config.json) and came back as three samples.
    assert [s["index"] for s in answer["samples"]] == [0, 1, 2]
    sample = answer["samples"][0]
    assert set(sample) == {"index", "prompt", "reference", "base", "tuned"}
    assert sample["base"] != sample["tuned"]
    assert answer["skipped"] == {"lines": 0, "eval_lines": 0, "sample_lines": 0}


def test_a_finished_jobs_evaluation_is_kept(train_http: FunctionServer, sandbox: Sandbox) -> None:
    job = submit(train_http, hyperparameters={"validation_split": 0.1})
    finished_run(sandbox, job)
    first = get(train_http, path(job) + "/evaluation").json()
    before = logs_requests(sandbox)
    assert get(train_http, path(job) + "/evaluation").json() == first
    assert logs_requests(sandbox) == before  # only the job itself was read again
    assert len(first["samples"]) == 5  # the default with a validation set


def test_reading_the_whole_log_costs_about_one_request_a_page(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    job = submit(train_http, hyperparameters={"validation_split": 0.1})
    job_id = job["training_job_id"]
    made = sandbox.synthesize_logs(job_id, steps=5000, seconds=3600)
    sandbox.set_status(job_id, "TRAINING_JOB_COMPLETED")
    before = logs_requests(sandbox)
    answer = get(train_http, path(job) + "/evaluation").json()
    pages = -(-made["lines"] // 1000)
    # The first page alone, then a few concurrent slices, each ending on a partial page;
    # a page is never asked for twice to top up the lines of its first millisecond.
    assert pages <= logs_requests(sandbox) - before <= pages + 4
    assert answer["tuned"]["step"] == 5000 and answer["evaluations"] == 200


def test_without_a_validation_set_every_member_is_null(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    job = submit(train_http)
    records = finished_run(sandbox, job)
    assert [r for r in records if r["type"] == "step"]
    answer = get(train_http, path(job) + "/evaluation").json()
    assert (answer["base"], answer["tuned"], answer["change"], answer["samples"]) == (None,) * 4
    assert answer["evaluations"] == 0


def test_a_job_that_has_not_got_there_yet_is_null_too(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    job = submit(train_http, hyperparameters={"validation_split": 0.1})
    sandbox.set_status(job["training_job_id"], "TRAINING_JOB_RUNNING")
    answer = get(train_http, path(job) + "/evaluation").json()
    assert answer["status"] == "running"
    assert (answer["tuned"], answer["change"], answer["samples"]) == (None, None, None)


def test_malformed_evaluation_lines_are_skipped_and_said_never_a_500(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    job = submit(train_http, hyperparameters={"validation_split": 0.1})
    job_id = job["training_job_id"]
    sandbox.set_status(job_id, "TRAINING_JOB_RUNNING")
    sandbox.append_logs(
        job_id,
        [
            'FT_METRICS {"type":"eval","step":0,"eval_loss":2.0,"model":"base"}',
            'FT_METRICS {"type":"eval","step":5,"eval_loss":',
            'FT_METRICS {"type":"eval","step":5,"eval_loss":1.0,"model":"other"}',
            'FT_METRICS {"type":"sample","index":"zero","prompt":"p"}',
            'FT_METRICS {"type":"eval","step":6,"eval_loss":1.5,"model":"tuned"}',
        ],
    )
    response = get(train_http, path(job) + "/evaluation")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["skipped"] == {"lines": 3, "eval_lines": 2, "sample_lines": 1}
    assert answer["change"] == {"eval_loss": -0.5, "eval_mean_token_accuracy": None}


def test_unknown_jobs_are_404_with_a_fixed_message(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    job = submit(train_http)
    for route in (
        f"/jobs/{job['training_project_id']}/nosuchjob123/evaluation",
        "/jobs/nosuchproject9/nosuchjob123/evaluation",
    ):
        response = get(train_http, route)
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found"
        assert "nosuch" not in response.text
    bad = get(train_http, path(job) + "/evaluation", points="5")
    assert bad.status_code == 400 and bad.json()["error"]["details"][0]["location"] == (
        "query.points"
    )


def test_the_completed_event_summary_names_both_losses(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    from finetune_api.core.schemas import job_from_baseten
    from finetune_api.insights.job_insights import JobInsights
    from tests.conftest import API_KEY
    from tests.poll_fixtures import make_client, make_settings

    job = submit(train_http, hyperparameters={"validation_split": 0.1})
    records = finished_run(sandbox, job)
    settings = make_settings(sandbox, baseten_max_retries=0)
    client = make_client(settings, api_key=API_KEY)
    raw = client.get_job(job["training_project_id"], job["training_job_id"])
    summary = JobInsights(settings, client).event_details(job_from_baseten(raw, sandbox.url))
    client.close()
    final = next(r for r in records if r["type"] == "summary")
    assert summary["summary"]["base_eval_loss"] == final["base_eval_loss"]
    assert summary["summary"]["eval_loss"] == final["eval_loss"]
    assert summary["summary"]["base_eval_loss"] > summary["summary"]["eval_loss"]


# -- a checkpoint's files ----------------------------------------------------------------


def test_a_checkpoints_files_download_from_the_blob_store(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    job = submit(train_http, hyperparameters={"lora_rank": 8})
    job_id = job["training_job_id"]
    sandbox.set_status(job_id, "TRAINING_JOB_RUNNING")
    first = sandbox.add_checkpoint(job_id)["checkpoint_id"]
    sandbox.add_checkpoint(job_id)
    response = get(train_http, f"{path(job)}/checkpoints/{first}/files")
    assert response.status_code == 200, response.text
    page = response.json()
    CheckpointFilePage.model_validate(page)
    assert page["has_more"] is False and page["next_cursor"] is None
    names = [item["relative_file_name"] for item in page["data"]]
    # That checkpoint's files only (the other one has the same three).
    assert names == [
        f"{first}/adapter_config.json",
        f"{first}/adapter_model.safetensors",
        f"{first}/trainer_state.json",
    ]
    for item in page["data"]:
        downloaded = requests.get(item["url"], timeout=30)
        assert downloaded.status_code == 200
        assert len(downloaded.content) == item["size_bytes"] > 0
        assert item["last_modified"]
        if item["relative_file_name"].endswith("adapter_config.json"):
            config = json.loads(downloaded.content)
            assert config["r"] == 8 and config["base_model_name_or_path"] == VALID["model_id"]
        if item["relative_file_name"].endswith(".safetensors"):
            from safetensors import safe_open

            size = struct.unpack("<Q", downloaded.content[:8])[0]
            header = json.loads(downloaded.content[8 : 8 + size])
            assert header["base_model.model.lora_A.weight"]["shape"] == [8, 8]
            local = sandbox_tmp_file(downloaded.content)
            with safe_open(local, framework="numpy") as tensors:
                assert list(tensors.keys()) == ["base_model.model.lora_A.weight"]
            local.unlink()


def sandbox_tmp_file(data: bytes) -> Any:
    import tempfile
    from pathlib import Path

    with tempfile.NamedTemporaryFile(suffix=".safetensors", delete=False) as handle:
        handle.write(data)
    return Path(handle.name)


def test_checkpoint_files_page_with_a_cursor(train_http: FunctionServer, sandbox: Sandbox) -> None:
    job = submit(train_http)
    job_id = job["training_job_id"]
    sandbox.set_status(job_id, "TRAINING_JOB_RUNNING")
    first = sandbox.add_checkpoint(job_id)["checkpoint_id"]
    second = sandbox.add_checkpoint(job_id)["checkpoint_id"]
    route = f"{path(job)}/checkpoints/{second}/files"
    seen: list[str] = []
    page = get(train_http, route, limit="2").json()
    seen += [item["relative_file_name"] for item in page["data"]]
    assert page["has_more"] is True
    page = get(train_http, route, limit="2", cursor=page["next_cursor"]).json()
    seen += [item["relative_file_name"] for item in page["data"]]
    assert page["has_more"] is False and page["next_cursor"] is None
    assert len(seen) == 3 and all(name.startswith(f"{second}/") for name in seen)
    # A cursor of one checkpoint does not page another's.
    cursor = get(train_http, route, limit="1").json()["next_cursor"]
    other = get(train_http, f"{path(job)}/checkpoints/{first}/files", cursor=cursor)
    assert other.status_code == 400
    assert other.json()["error"]["details"][0]["location"] == "query.cursor"
    for params in ({"limit": "0"}, {"limit": "1001"}, {"cursor": "!!"}, {"page": "1"}):
        assert get(train_http, route, **params).status_code == 400


def test_unknown_job_or_checkpoint_files_are_404_without_the_id(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    job = submit(train_http)
    job_id = job["training_job_id"]
    sandbox.set_status(job_id, "TRAINING_JOB_RUNNING")
    sandbox.add_checkpoint(job_id)
    for route in (
        f"{path(job)}/checkpoints/checkpoint-missing77/files",
        f"/jobs/{job['training_project_id']}/missingjob77/checkpoints/checkpoint-1/files",
    ):
        response = get(train_http, route)
        assert response.status_code == 404, response.text
        assert response.json()["error"]["type"] == "not_found"
        assert "missing77" not in response.text


# -- bad integrations and eval_samples: a 400 naming the field, nothing created ----------


WANDB = {"type": "wandb", "wandb": {"project": "tuning"}}


@pytest.mark.parametrize(
    ("extra", "location"),
    [
        ({"integrations": [{"type": "comet", "comet": {"project": "p"}}]}, "integrations.0.type"),
        ({"integrations": [{"type": "wandb", "wandb": {}}]}, "integrations.0.wandb.project"),
        ({"integrations": [WANDB, WANDB]}, "integrations"),
        ({"integrations": {"type": "wandb"}}, "integrations"),
        ({"integrations": [{"type": "wandb", "wandb": {"project": "p", "x": 1}}]}, None),
        ({"hyperparameters": {"eval_samples": 51, "validation_split": 0.1}}, None),
        ({"hyperparameters": {"eval_samples": -1, "validation_split": 0.1}}, None),
        ({"hyperparameters": {"eval_samples": 2}}, "hyperparameters.eval_samples"),
    ],
)
def test_bad_integrations_and_eval_samples_are_400_and_create_nothing(
    train_http: FunctionServer, sandbox: Sandbox, extra: dict[str, Any], location: str | None
) -> None:
    response = requests.post(f"{train_http.url}/jobs", json={**VALID, **extra}, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    locations = [detail["location"] for detail in error["details"]]
    field = next(iter(extra))
    assert all(place.startswith(field) for place in locations), locations
    if location is not None:
        assert location in locations
    assert sandbox.jobs() == []


def test_wandb_reaches_the_job_as_a_secret_reference_never_a_key(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    wandb = {"type": "wandb", "wandb": {"project": "tuning", "name": "run-1", "tags": ["a"]}}
    submit(train_http, integrations=[wandb], hyperparameters={"validation_split": 0.2})
    [recorded] = sandbox.jobs()
    env = recorded["request"]["runtime"]["environment_variables"]
    assert env["WANDB_API_KEY"] == {"name": "wandb_api_key"}
    config = json.loads(env["RUNTIME_CONFIG"])
    assert config["integrations"] == [wandb]
    assert config["wandb_api_key_secret_name"] == "wandb_api_key"
    assert config["hyperparameters"]["eval_samples"] == 5  # the default with a validation set


def test_without_integrations_the_job_has_no_wandb_key(
    train_http: FunctionServer, sandbox: Sandbox
) -> None:
    submit(train_http, hyperparameters={"eval_samples": 0})
    [recorded] = sandbox.jobs()
    env = recorded["request"]["runtime"]["environment_variables"]
    assert "WANDB_API_KEY" not in env
    config = json.loads(env["RUNTIME_CONFIG"])
    assert config["integrations"] == [] and config["hyperparameters"]["eval_samples"] == 0
