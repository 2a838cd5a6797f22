"""The OpenAI mapping without any server: create bodies, statuses, names and ids, errors."""

from __future__ import annotations

import json

import pytest

from finetune_api.compat.jobs import UnsupportedMethodError, openai_status, training_request_body
from finetune_api.compat.models import model_name, parse_model_name
from finetune_api.core.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    UpstreamError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
)
from finetune_api.edge.openai_routes import openai_error
from finetune_api.jobs.index import openai_job_id, parse_job_id


@pytest.mark.parametrize(
    ("baseten", "openai"),
    [
        ("TRAINING_JOB_CREATED", "queued"),
        ("TRAINING_JOB_PENDING", "queued"),
        ("TRAINING_JOB_QUEUED", "queued"),
        ("TRAINING_JOB_DEPLOYING", "running"),
        ("TRAINING_JOB_RUNNING", "running"),
        ("TRAINING_JOB_PREEMPTED", "running"),  # unknown: still moving
        ("TRAINING_JOB_COMPLETED", "succeeded"),
        ("TRAINING_JOB_FAILED", "failed"),
        ("TRAINING_JOB_DEPLOY_FAILED", "failed"),
        ("TRAINING_JOB_STOPPED", "cancelled"),
    ],
)
def test_status_mapping(baseten: str, openai: str) -> None:
    assert openai_status(baseten) == openai


def test_create_body_maps_onto_our_request() -> None:
    ours, labels = training_request_body(
        {
            "model": "Qwen/Qwen3-0.6B",
            "training_file": "file-abc",
            "validation_file": "gs://b/v.jsonl",
            "method": {
                "type": "supervised",
                "supervised": {
                    "hyperparameters": {
                        "n_epochs": 3,
                        "batch_size": "auto",
                        "learning_rate_multiplier": 0.5,
                    }
                },
            },
            "seed": 9,
            "suffix": "bot",
            "metadata": {"a": "b"},
            "compute": {"accelerator": "H100"},
            "lora": {"rank": 8, "alpha": 16},
            "deploy": {"on_completion": True},
        }
    )
    assert ours == {
        "model_id": "Qwen/Qwen3-0.6B",
        "training_file": "file-abc",
        "validation_file": "gs://b/v.jsonl",
        "hyperparameters": {
            "num_epochs": 3,
            "learning_rate": pytest.approx(1e-4),
            "seed": 9,
            "lora_rank": 8,
            "lora_alpha": 16,
        },
        "compute": {"accelerator": "H100"},
        "deploy": {"on_completion": True, "model_name": "bot"},
    }
    assert labels == {"metadata": {"a": "b"}, "suffix": "bot"}
    hub, _ = training_request_body({"model": "m", "training_file": "hf://owner/data"})
    assert hub == {"model_id": "m", "dataset_id": "owner/data"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"method": {"type": "reinforcement"}}, "method.type"),
        ({"method": {"type": "rlhf"}}, "method.type"),
        ({"method": "dpo"}, "method"),
        ({"method": {"type": "dpo", "supervised": {}}}, "method"),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": "big"}}}},
            "method.dpo.hyperparameters.beta",
        ),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 1}}}},
            "method.supervised.hyperparameters",
        ),
        (
            {"hyperparameters": {"n_epochs": 2}, "method": {"type": "dpo"}},
            "hyperparameters",
        ),
        ({"hyperparameters": {"n_epochs": "many"}}, "hyperparameters.n_epochs"),
        (
            {"hyperparameters": {"learning_rate_multiplier": 0}},
            "hyperparameters.learning_rate_multiplier",
        ),
        (
            {
                "hyperparameters": {"n_epochs": 1},
                "method": {
                    "type": "supervised",
                    "supervised": {"hyperparameters": {"n_epochs": 2}},
                },
            },
            "hyperparameters",
        ),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"suffix": "has space"}, "suffix"),
        ({"seed": True}, "seed"),
        # A list's entries are checked by the shared schema (tests/test_openai_results.py).
        ({"integrations": {"type": "wandb"}}, "integrations"),
        ({"model": None}, "model"),
        ({"training_file": None}, "training_file"),
    ],
)
def test_bad_create_bodies_name_the_parameter(body: dict[str, object], param: str) -> None:
    full = {"model": "m", "training_file": "file-x", **body}
    with pytest.raises(InvalidRequestError) as caught:
        training_request_body(full)
    assert caught.value.details and caught.value.details[0]["location"] == param
    for value in body.values():
        if isinstance(value, str):
            assert value not in caught.value.message


def test_reinforcement_is_refused_with_its_own_code() -> None:
    with pytest.raises(UnsupportedMethodError) as caught:
        training_request_body(
            {"model": "m", "training_file": "file-x", "method": {"type": "reinforcement"}}
        )
    assert caught.value.openai_code == "unsupported_method" and caught.value.status == 400


def test_openai_dpo_method_maps_to_ours() -> None:
    ours, _ = training_request_body(
        {
            "model": "m",
            "training_file": "file-x",
            "method": {
                "type": "dpo",
                "dpo": {
                    "hyperparameters": {
                        "beta": 0.25,
                        "n_epochs": 2,
                        "batch_size": "auto",
                        "learning_rate_multiplier": "auto",
                    }
                },
            },
        }
    )
    assert ours == {
        "model_id": "m",
        "training_file": "file-x",
        "method": "dpo",
        "hyperparameters": {"dpo_beta": 0.25, "num_epochs": 2},
    }
    auto, _ = training_request_body(
        {"model": "m", "training_file": "file-x", "method": {"type": "dpo", "dpo": {}}}
    )
    assert auto == {"model_id": "m", "training_file": "file-x", "method": "dpo"}
    supervised, _ = training_request_body(
        {"model": "m", "training_file": "file-x", "method": {"type": "supervised"}}
    )
    assert "method" not in supervised


def test_ids_and_model_names_round_trip() -> None:
    job_id = openai_job_id("proj1", "job1", "2026-12-01T00:00:00Z")
    assert job_id is not None and parse_job_id(job_id) == ("proj1", "job1")
    later = openai_job_id("proj1", "job2", "2026-12-01T00:00:01Z")
    assert later is not None and later < job_id  # newer sorts first
    assert openai_job_id("p-1", "j", None) is None  # ids that cannot be carried
    for bad in ("ftjob-x", "ftjob-000000000000-a-b-c", "file-1", ""):
        assert parse_job_id(bad) is None
    name = model_name("chatty", "abc123", "dep456")
    assert name == "ft:chatty:abc123:dep456" and parse_model_name(name) == ("abc123", "dep456")
    for bad in ("gpt-4o", "ft:x", "ft:x:a-b:c", None, 3):
        assert parse_model_name(bad) is None


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (
            InvalidRequestError("x", details=[{"location": "body.seed", "reason": "r"}]),
            400,
            "invalid_request_error",
        ),
        (NotFoundError("x"), 404, "invalid_request_error"),
        (ConflictError("x"), 409, "invalid_request_error"),
        (UpstreamRejectedError("x"), 400, "invalid_request_error"),
        (UpstreamRateLimitedError("x", retry_after=2), 429, "rate_limit_error"),
        (UpstreamError("x"), 502, "api_error"),
    ],
)
def test_errors_leave_in_openais_shape(error: Exception, status: int, kind: str) -> None:
    from flask import Flask

    with Flask(__name__).app_context():
        response = openai_error(error)  # type: ignore[arg-type]
    body = json.loads(response.get_data())
    assert response.status_code == status
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == kind
    if status == 400 and isinstance(error, InvalidRequestError):
        assert body["error"]["param"] == "seed"
    if status == 429:
        assert response.headers["Retry-After"] == "2"
