"""Every request rule of the CONTRACT, checked on the schema alone."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_api.core.errors import InvalidRequestError
from finetune_api.core.schemas import (
    baseten_job_name,
    job_from_baseten,
    method_hyperparameters,
    parse_job_name,
    parse_training_request,
    short_status,
    split_job_name,
)
from finetune_api.core.settings import load_settings
from finetune_api.jobs.service import check_idempotency_key, default_job_name, default_project_name

SETTINGS = load_settings(allowed_accelerators="H100,L4", max_gpus_per_node=4, max_nodes=2)
VALID = {"dataset_id": "HuggingFaceH4/Multilingual-Thinking", "model_id": "openai/gpt-oss-20b"}


def reject(body: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        parse_training_request(body, SETTINGS)
    return caught.value


def locations(error: InvalidRequestError) -> set[str]:
    return {detail["location"] for detail in error.details or []}


@pytest.mark.parametrize(
    "good", ["a", "owner/name", "A.b_c-d/x.y", "x" * 96, "a/" + "b" * 96, "1-2.3_4"]
)
def test_valid_repo_ids(good: str) -> None:
    assert parse_training_request({**VALID, "dataset_id": good}, SETTINGS).dataset_id == good


@pytest.mark.parametrize(
    "bad",
    [
        "../x",
        "a/b/c",
        "a b",
        "a\nb",
        "a\n",
        "x" * 97,
        "a--b",
        "-a",
        "a-",
        ".a",
        "a.",
        "a..b",
        "",
        "/a",
        "a/",
        "a/-b",
        "ä",
    ],
)
@pytest.mark.parametrize("field", ["dataset_id", "model_id"])
def test_invalid_repo_ids(field: str, bad: str) -> None:
    error = reject({**VALID, field: bad})
    assert locations(error) == {field}
    assert bad not in error.message or bad == ""


@pytest.mark.parametrize("bad", ["", "-x", ".x", "a b", "x" * 65, "a/b", "name\n"])
@pytest.mark.parametrize("field", ["project_name", "job_name"])
def test_invalid_names(field: str, bad: str) -> None:
    assert locations(reject({**VALID, field: bad})) == {field}


def test_job_name_may_not_look_like_an_idempotency_suffix() -> None:
    assert locations(reject({**VALID, "job_name": "x-ik-0123456789abcdef0123"})) == {"job_name"}


def test_missing_fields_each_reported() -> None:
    assert locations(reject({})) == {"dataset_id", "model_id"}


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({**VALID, "dataset_id": 5}, "dataset_id"),
        ({**VALID, "hyperparameters": {"num_epochs": "3"}}, "hyperparameters.num_epochs"),
        ({**VALID, "hyperparameters": {"num_epochs": True}}, "hyperparameters.num_epochs"),
        ({**VALID, "hyperparameters": {"learning_rate": "0.1"}}, "hyperparameters.learning_rate"),
        ({**VALID, "hyperparameters": []}, "hyperparameters"),
        ({**VALID, "compute": "H100"}, "compute"),
        ({**VALID, "compute": {"gpu_count": 1.5}}, "compute.gpu_count"),
        ({**VALID, "surprise": 1}, "surprise"),
        ({**VALID, "hyperparameters": {"momentum": 0.9}}, "hyperparameters.momentum"),
        ({**VALID, "compute": {"cpu": 4}}, "compute.cpu"),
    ],
)
def test_wrong_types_and_unknown_fields(body: dict[str, Any], where: str) -> None:
    assert locations(reject(body)) == {where}


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("learning_rate", 0),
        ("learning_rate", 1.5),
        ("num_epochs", 0),
        ("num_epochs", 101),
        ("batch_size", 1025),
        ("gradient_accumulation_steps", 0),
        ("max_seq_length", 15),
        ("max_seq_length", 131073),
        ("lora_rank", 513),
        ("lora_alpha", 4097),
        ("lora_dropout", 1.0),
        ("lora_dropout", -0.1),
        ("seed", -1),
    ],
)
def test_hyperparameters_out_of_range(name: str, bad: float) -> None:
    error = reject({**VALID, "hyperparameters": {name: bad}})
    assert locations(error) == {f"hyperparameters.{name}"}


@pytest.mark.parametrize(
    ("compute", "where", "reason"),
    [
        ({"accelerator": "T4"}, "compute.accelerator", "must be one of H100, L4"),
        ({"gpu_count": 5}, "compute.gpu_count", "MAX_GPUS_PER_NODE"),
        ({"gpu_count": 0}, "compute.gpu_count", "greater than or equal to 1"),
        ({"node_count": 3}, "compute.node_count", "MAX_NODES"),
    ],
)
def test_compute_guards(compute: dict[str, Any], where: str, reason: str) -> None:
    error = reject({**VALID, "compute": compute})
    assert error.details == [{"location": where, "reason": error.details[0]["reason"]}]
    assert reason in error.details[0]["reason"]


@pytest.mark.parametrize("body", [[], "x", 1, None, True])
def test_not_an_object(body: Any) -> None:
    assert "JSON object" in reject(body).message


def test_defaults_filled() -> None:
    request = parse_training_request(
        {**VALID, "compute": {"gpu_count": 4, "node_count": 2}}, SETTINGS
    )
    assert request.hyperparameters.lora_rank == 16
    assert request.compute.gpu_count == 4 and request.compute.accelerator is None


def test_derived_names() -> None:
    from datetime import UTC, datetime

    assert default_project_name("openai/gpt-oss-20b") == "ft-openai-gpt-oss-20b"
    assert len(default_project_name("o/" + "x" * 96)) == 64
    assert default_job_name("openai/gpt-oss-20b", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == (
        "gpt-oss-20b-20260102-030405"
    )


@pytest.mark.parametrize("key", ["", "a b", "é", "x" * 256, "tab\t"])
def test_bad_idempotency_keys(key: str) -> None:
    with pytest.raises(InvalidRequestError, match="Idempotency-Key"):
        check_idempotency_key(key)


def test_job_conversion_and_status_forms() -> None:
    job = job_from_baseten(
        {
            "id": "j1",
            "name": "run-ik-0123456789abcdef0123",
            "current_status": "TRAINING_JOB_DEPLOY_FAILED",
            "training_project": {"id": "p1", "name": "proj"},
            "error_message": "boom",
        },
        "https://app.baseten.co",
    )
    assert job.status == "deploy_failed" and job.job_name == "run"
    assert job.dashboard_url == "https://app.baseten.co/training/p1/logs/j1"
    assert short_status("TRAINING_JOB_PREEMPTED") == "preempted"
    assert split_job_name("plain") == ("plain", None)


@pytest.mark.parametrize("method", ["supervised", "dpo"])
@pytest.mark.parametrize("digest", [None, "0123456789abcdef0123"])
@pytest.mark.parametrize("name", ["run", "my-dpo", "a--b", "x-ik-1"])
def test_the_baseten_job_name_carries_the_method_and_round_trips(
    name: str, digest: str | None, method: str
) -> None:
    full = baseten_job_name(name, method, digest)
    assert parse_job_name(full) == (name, digest, method)
    assert split_job_name(full) == (name, digest)
    job = job_from_baseten({"id": "j", "name": full, "training_project_id": "p"}, "https://x")
    assert job.method == method and job.job_name == name


def test_jobs_made_before_methods_are_supervised() -> None:
    assert parse_job_name("gpt-oss-20b-20261127-060000")[2] == "supervised"
    assert parse_job_name(None) == (None, None, "supervised")
    assert job_from_baseten({"id": "j", "training_project_id": "p"}, "https://x").method == (
        "supervised"
    )


def test_method_hyperparameters_fill_each_methods_defaults() -> None:
    plain = method_hyperparameters(parse_training_request(VALID, SETTINGS))
    assert (plain["train_on_inputs"], plain["dpo_beta"]) == (False, None)
    dpo = method_hyperparameters(parse_training_request({**VALID, "method": "dpo"}, SETTINGS))
    assert (dpo["train_on_inputs"], dpo["dpo_beta"]) == (None, 0.1)
    inputs = parse_training_request(
        {**VALID, "hyperparameters": {"train_on_inputs": True}}, SETTINGS
    )
    assert method_hyperparameters(inputs)["train_on_inputs"] is True
    # Both method errors and a schema-level one are reported together.
    error = reject(
        {
            "model_id": "m",
            "method": "dpo",
            "hyperparameters": {"train_on_inputs": True},
        }
    )
    assert locations(error) == {"hyperparameters.train_on_inputs", "dataset_id"}
    assert "mine--dpo" not in reject({**VALID, "job_name": "mine--dpo"}).message
    assert locations(reject({**VALID, "job_name": "mine--dpo"})) == {"job_name"}


def test_keyed_locks_serialize_one_key_and_forget_it_afterwards() -> None:
    import threading
    import time

    from finetune_api.jobs.service import KeyedLocks

    locks = KeyedLocks()
    inside: list[int] = []
    overlaps: list[bool] = []

    def work(index: int) -> None:
        with locks.hold("same-key"):
            overlaps.append(bool(inside))
            inside.append(index)
            time.sleep(0.01)
            inside.remove(index)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [False] * 8
    assert len(locks) == 0
