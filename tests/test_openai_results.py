"""OpenAI's "did it get better" shapes through the unmodified ``openai`` SDK: ``integrations``
on create, ``result_files`` (the results CSV, read by pandas as it comes), checkpoint
``metrics`` with OpenAI's keys, ``metrics`` events; and W&B's own OpenAI integration
(``WandbLogger.sync``) logging one of our jobs in W&B's offline mode."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import openai
import pandas
import pytest

from loopback.functions import FunctionServer
from sandbox import Sandbox
from tests.test_openai_sdk import MODEL, client, world  # noqa: F401 - the module's world
from tests.wandb_runs import offline_records

LINE = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}]}
DATA = ("\n".join(json.dumps(LINE) for _ in range(20)) + "\n").encode()
WANDB = {"type": "wandb", "wandb": {"project": "tuning", "entity": "team", "tags": ["x"]}}
OPENAI_KEYS = {
    "step",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
}


@pytest.fixture(scope="module")
def succeeded(world: tuple[FunctionServer, Sandbox]) -> dict[str, Any]:  # noqa: F811
    """One job with a validation file and W&B, run to success with a checkpoint per epoch."""
    server, sandbox = world
    sdk = client(server)
    train = sdk.files.create(file=("train.jsonl", DATA), purpose="fine-tune").id
    valid = sdk.files.create(file=("valid.jsonl", DATA), purpose="fine-tune").id
    job = sdk.fine_tuning.jobs.create(
        model=MODEL,
        training_file=train,
        validation_file=valid,
        integrations=[WANDB],  # type: ignore[list-item]
        extra_body={"eval_samples": 2},
    )
    baseten_job = job.model_extra["training_job_id"]
    sandbox.set_status(baseten_job, "TRAINING_JOB_RUNNING")
    sandbox.synthesize_logs(baseten_job, steps=50, seconds=120)
    sandbox.add_checkpoint(baseten_job)
    sandbox.set_status(baseten_job, "TRAINING_JOB_COMPLETED")
    rows = sandbox.state.training._logs[baseten_job].rows
    from finetune_api.insights.training_metrics import parse_line

    records = [record for row in rows if (record := parse_line(row[0]))]
    return {"id": job.id, "created": job, "records": records, "baseten_job": baseten_job}


def test_integrations_are_accepted_and_echoed(
    world: tuple[FunctionServer, Sandbox],  # noqa: F811
    succeeded: dict[str, Any],
) -> None:
    _, sandbox = world
    created = succeeded["created"]
    assert [item.model_dump(exclude_none=True) for item in created.integrations] == [WANDB]
    request = next(
        j["request"] for j in sandbox.jobs() if j["job"]["id"] == succeeded["baseten_job"]
    )
    env = request["runtime"]["environment_variables"]
    assert env["WANDB_API_KEY"] == {"name": "wandb_api_key"}
    config = json.loads(env["RUNTIME_CONFIG"])
    assert config["integrations"] == [WANDB] and config["hyperparameters"]["eval_samples"] == 2


def test_result_files_hold_openais_results_csv(
    world: tuple[FunctionServer, Sandbox],  # noqa: F811
    succeeded: dict[str, Any],
) -> None:
    server, _ = world
    sdk = client(server)
    job = sdk.fine_tuning.jobs.retrieve(succeeded["id"])
    assert job.status == "succeeded"
    [file_id] = job.result_files
    found = sdk.files.retrieve(file_id)
    assert found.purpose == "fine-tune-results" and found.status == "processed"
    content = sdk.files.content(file_id).content
    assert found.bytes == len(content)
    frame = pandas.read_csv(io.BytesIO(content))
    assert list(frame.columns) == [
        "step",
        "train_loss",
        "train_accuracy",
        "valid_loss",
        "valid_mean_token_accuracy",
    ]
    steps = [r for r in succeeded["records"] if r["type"] == "step"]
    assert list(frame["step"]) == [r["step"] for r in steps] == list(range(1, 51))
    assert list(frame["train_loss"]) == [r["loss"] for r in steps]
    assert list(frame["train_accuracy"]) == [r["mean_token_accuracy"] for r in steps]
    tuned = [r for r in succeeded["records"] if r["type"] == "eval" and r["model"] == "tuned"]
    valid = frame.dropna(subset=["valid_loss"])
    assert list(valid["step"]) == [r["step"] for r in tuned] == [25, 50]
    assert list(valid["valid_loss"]) == [r["eval_loss"] for r in tuned]
    with pytest.raises(openai.ConflictError):
        sdk.files.delete(file_id)


def test_an_unfinished_or_unknown_jobs_results_file_is_404(
    world: tuple[FunctionServer, Sandbox],  # noqa: F811
    succeeded: dict[str, Any],
) -> None:
    server, _ = world
    sdk = client(server)
    running = sdk.fine_tuning.jobs.create(
        model=MODEL, training_file=succeeded["created"].training_file
    )
    assert running.result_files == []
    project = running.model_extra["training_project_id"]
    baseten_job = running.model_extra["training_job_id"]
    for file_id in (f"file-results-{project}-{baseten_job}", f"file-results-{project}-nosuch42"):
        with pytest.raises(openai.NotFoundError) as caught:
            sdk.files.content(file_id)
        assert "nosuch42" not in str(caught.value.body)
    sdk.fine_tuning.jobs.cancel(running.id)


def test_checkpoint_metrics_have_openais_keys(
    world: tuple[FunctionServer, Sandbox],  # noqa: F811
    succeeded: dict[str, Any],
) -> None:
    server, _ = world
    [checkpoint] = list(client(server).fine_tuning.jobs.checkpoints.list(succeeded["id"]))
    metrics = checkpoint.metrics.model_dump()
    assert set(metrics) == OPENAI_KEYS
    last_step = [r for r in succeeded["records"] if r["type"] == "step"][-1]
    last_eval = [r for r in succeeded["records"] if r["type"] == "eval"][-1]
    assert checkpoint.step_number == metrics["step"] == 50
    assert metrics["train_loss"] == last_step["loss"]
    assert metrics["train_mean_token_accuracy"] == last_step["mean_token_accuracy"]
    # The evaluation at step 50 ran on the whole validation set: full_valid_* as OpenAI's.
    assert metrics["full_valid_loss"] == metrics["valid_loss"] == last_eval["eval_loss"]
    assert metrics["full_valid_mean_token_accuracy"] == last_eval["eval_mean_token_accuracy"]


def test_metrics_events_carry_openais_keys(
    world: tuple[FunctionServer, Sandbox],  # noqa: F811
    succeeded: dict[str, Any],
) -> None:
    server, _ = world
    events = list(client(server).fine_tuning.jobs.list_events(succeeded["id"], limit=100))
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics
    by_step = {e.data["step"]: e.data for e in metrics}
    assert all(d["train_mean_token_accuracy"] is not None for d in by_step.values())
    assert by_step[50]["full_valid_loss"] == by_step[50]["valid_loss"] is not None
    assert "full_valid_loss" not in by_step[49] and by_step[49]["valid_loss"] is not None


@pytest.mark.parametrize(
    ("integrations", "param"),
    [
        ([{"type": "comet", "comet": {"project": "p"}}], "integrations.0.type"),
        ([{"type": "wandb", "wandb": {"entity": "e"}}], "integrations.0.wandb.project"),
        ([WANDB, WANDB], "integrations"),
    ],
)
def test_bad_integrations_are_400_and_create_nothing(
    world: tuple[FunctionServer, Sandbox],  # noqa: F811
    succeeded: dict[str, Any],
    integrations: list[dict[str, Any]],
    param: str,
) -> None:
    server, sandbox = world
    before = len(sandbox.jobs())
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).fine_tuning.jobs.create(
            model=MODEL,
            training_file=succeeded["created"].training_file,
            integrations=integrations,  # type: ignore[arg-type]
        )
    assert param in str(caught.value.body)
    assert len(sandbox.jobs()) == before


@pytest.mark.parametrize("samples", [51, -1, 3])
def test_bad_eval_samples_are_400_naming_it_and_create_nothing(
    world: tuple[FunctionServer, Sandbox],  # noqa: F811
    succeeded: dict[str, Any],
    samples: int,
) -> None:
    server, sandbox = world
    before = len(sandbox.jobs())
    with pytest.raises(openai.BadRequestError) as caught:
        # 3 is in range, but this job has no validation_file to take the prompts from.
        client(server).fine_tuning.jobs.create(
            model=MODEL,
            training_file=succeeded["created"].training_file,
            extra_body={"eval_samples": samples},
        )
    assert caught.value.param == "eval_samples" or "eval_samples" in str(caught.value.body)
    assert len(sandbox.jobs()) == before


def test_wandbs_own_openai_integration_logs_our_job_offline(
    world: tuple[FunctionServer, Sandbox],  # noqa: F811
    succeeded: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, _ = world
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    from wandb.integration.openai.fine_tuning import WandbLogger

    # Offline, wandb.login() cannot verify a login ("Unable to verify login in offline
    # mode") and the integration refuses to start; this is its own "already logged in"
    # flag, as after a real login. Nothing else of the integration is touched.
    monkeypatch.setattr(WandbLogger, "_logged_in", True)

    WandbLogger.sync(
        fine_tune_job_id=succeeded["id"],
        openai_client=client(server),
        project="ours",
        log_datasets=False,
    )
    [run_file] = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    # wandb-core writes the file from its own process: wait for the run's exit record.
    deadline = time.monotonic() + 20
    records = offline_records(run_file)
    while not any(r.WhichOneof("record_type") == "exit" for r in records):
        assert time.monotonic() < deadline, "the offline run never recorded its exit"
        time.sleep(0.2)
        records = offline_records(run_file)
    history = [
        {key(item): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    steps = [r for r in succeeded["records"] if r["type"] == "step"]
    # One W&B step per row of our results CSV, each with our numbers.
    assert [row["_step"] for row in history] == [r["step"] for r in steps]
    assert [row["train_loss"] for row in history] == [r["loss"] for r in steps]
    assert [row["train_accuracy"] for row in history] == [r["mean_token_accuracy"] for r in steps]
    tuned = [r for r in succeeded["records"] if r["type"] == "eval" and r["model"] == "tuned"]
    assert [(row["_step"], row["valid_loss"]) for row in history if "valid_loss" in row] == [
        (r["step"], r["eval_loss"]) for r in tuned
    ]
    updates = [
        (key(item), json.loads(item.value_json))
        for r in records
        if r.WhichOneof("record_type") == "summary"
        for item in r.summary.update
    ]
    assert ("status", "succeeded") in updates  # the integration's "logged it all" mark
    config = {
        key(item): item.value_json
        for r in records
        if r.WhichOneof("record_type") == "config"
        for item in r.config.update
    }
    [results] = client(server).fine_tuning.jobs.retrieve(succeeded["id"]).result_files
    assert json.loads(config["result_files"]) == results
    assert any(r.WhichOneof("record_type") == "artifact" for r in records)


def key(item: Any) -> str:
    return str(item.key or "/".join(item.nested_key))
