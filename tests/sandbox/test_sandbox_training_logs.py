"""The sandbox's GET logs / metrics: Baseten's shapes and limits; runs unfolding on the clock."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest

from sandbox import Sandbox
from sandbox.conformance import PROBE_HEADER
from sandbox.training_logs import RunShape, plan_run
from tests.sandbox.support import FakeClock, Http, JobFactory

MS = 1_000_000
SECOND = 1_000_000_000
DIGITS = re.compile(r"\d{19}")
LOG_KEYS = {"timestamp", "message", "replica", "request_id", "level"}


def _logs(http: Http, job: dict[str, Any], probe: bool = False, **params: Any) -> Any:
    """GET logs; ``probe`` marks a request meant to be refused (sandbox.conformance)."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    path = f"v1/training_projects/{job['training_project_id']}/jobs/{job['id']}/logs"
    headers = {**http.headers, PROBE_HEADER: "1"} if probe else None
    return http.api("GET", f"{path}?{query}" if query else path, headers=headers)


def _metrics(http: Http, job: dict[str, Any], **params: Any) -> Any:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    path = f"v1/training_projects/{job['training_project_id']}/jobs/{job['id']}/metrics"
    return http.api("GET", f"{path}?{query}" if query else path)


def _metric_records(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from finetune_api.insights.training_metrics import parse_line

    return [record for line in lines if (record := parse_line(line["message"]))]


def test_a_run_unfolds_as_the_clock_passes(
    clocked_sandbox: Sandbox, clock: FakeClock, make_job_on: Any
) -> None:
    http, job = make_job_on(
        clocked_sandbox, hyperparameters={"num_epochs": 2, "validation_split": 0.1}
    )
    span = {"start_epoch_millis": clock.ns // MS - 1000}
    assert _logs(http, job, **span).json() == {"logs": []}
    clock.advance(20)  # DEPLOYING at 10 s, RUNNING at 20 s (runs for 2 x 10 s)
    early = _logs(http, job, direction="asc", **span).json()["logs"]
    assert early and not [r for r in _metric_records(early) if r["type"] == "step"]
    assert all(set(line) == LOG_KEYS and DIGITS.fullmatch(line["timestamp"]) for line in early)
    clock.advance(10)  # half way: the first epoch is done, and its checkpoint
    middle = _metric_records(_logs(http, job, direction="asc", limit=1000, **span).json()["logs"])
    steps = [r for r in middle if r["type"] == "step"]
    assert 0 < len(steps) < 50 and steps[-1]["total_steps"] == 50
    clock.advance(11)  # past the end (created a few microseconds after the clock's start)
    done = _logs(http, job, direction="asc", limit=1000, **span).json()["logs"]
    records = _metric_records(done)
    assert [r["step"] for r in records if r["type"] == "step"] == list(range(1, 51))
    # The base model is evaluated before step 1 (step 0), the tuned one at each epoch's end.
    evals_all = [r for r in records if r["type"] == "eval"]
    assert [(r["model"], r["step"], r["epoch"]) for r in evals_all] == [
        ("base", 0, 0.0),
        ("tuned", 25, 1.0),
        ("tuned", 50, 2.0),
    ]
    assert all(0 < r["eval_mean_token_accuracy"] < 1 for r in evals_all)
    assert records[-1]["type"] == "summary"
    # One final loss (issue 21): the summary states what its own step and eval lines said.
    steps_done = [r for r in records if r["type"] == "step"]
    assert all(0 < r["mean_token_accuracy"] < 1 for r in steps_done)
    evals_done = [r for r in evals_all if r["model"] == "tuned"]
    assert records[-1]["final_loss"] == steps_done[-1]["loss"]
    assert records[-1]["best_eval_loss"] == min(r["eval_loss"] for r in evals_done)
    assert records[-1]["base_eval_loss"] == evals_all[0]["eval_loss"]
    assert records[-1]["eval_loss"] == evals_done[-1]["eval_loss"]
    # Five samples (the default with a validation set), after the last step, before the summary.
    samples = [r for r in records if r["type"] == "sample"]
    assert [r["index"] for r in samples] == [0, 1, 2, 3, 4]
    assert all(isinstance(r[k], str) for r in samples for k in ("prompt", "reference", "base"))
    assert records[-1]["step"] == steps_done[-1]["step"] == 50
    assert any("saved checkpoint-25" in line["message"] for line in done)
    status = http.api("GET", f"v1/training_projects/{job['training_project_id']}/jobs/{job['id']}")
    assert status.json()["training_job"]["current_status"] == "TRAINING_JOB_COMPLETED"
    checkpoints = http.api(
        "GET", f"v1/training_projects/{job['training_project_id']}/jobs/{job['id']}/checkpoints"
    ).json()["checkpoints"]
    assert len(checkpoints) == 2  # one per epoch: running_steps (2) == num_epochs (2)


@pytest.fixture
def make_job_on(local_s3: Any) -> Any:
    """Create a job over HTTP on a given sandbox with RUNTIME_CONFIG hyperparameters."""
    from tests.sandbox.support import API_KEY, job_body

    def _make(sandbox: Sandbox, *, node_count: int = 1, **config: Any) -> tuple[Http, Any]:
        http = Http(sandbox.url, API_KEY)
        blob = http.api("GET", "v1/blobs/credentials/train").json()
        local_s3.client().put_object(Bucket=blob["s3_bucket"], Key=blob["s3_key"], Body=b"x")
        artifact = {"s3_bucket": blob["s3_bucket"], "s3_key": blob["s3_key"]}
        body = job_body(artifact)
        body["training_job"]["compute"]["node_count"] = node_count
        env = body["training_job"]["runtime"]["environment_variables"]
        env["RUNTIME_CONFIG"] = json.dumps(config)
        project = http.api("POST", "v1/training_projects", {"training_project": {"name": "logs"}})
        project_id = project.json()["training_project"]["id"]
        created = http.api("POST", f"v1/training_projects/{project_id}/jobs", body)
        assert created.status_code == 200, created.text
        return http, created.json()["training_job"]

    return _make


def test_replicas_of_a_multi_node_job_share_timestamps(
    clocked_sandbox: Sandbox, clock: FakeClock, make_job_on: Any
) -> None:
    http, job = make_job_on(clocked_sandbox, node_count=3)
    clock.advance(45)
    lines = _logs(
        http, job, direction="asc", limit=1000, start_epoch_millis=0 + clock.ns // MS - 60_000
    ).json()["logs"]
    replicas = {line["replica"] for line in lines}
    assert replicas == {f"{job['id']}-multinode-{n}" for n in range(3)}
    first = [line for line in lines if line["message"].startswith("Starting training")]
    assert len(first) == 3 and len({line["timestamp"] for line in first}) == 1
    metrics = _metrics(http, job).json()
    assert [node["node_id"] for node in metrics["per_node_metrics"]] == sorted(replicas)
    assert metrics["cpu_usage"] == metrics["per_node_metrics"][0]["metrics"]["cpu_usage"]
    assert metrics["gpu_utilization"]["0"] and metrics["cache"] is None
    assert set(metrics["ephemeral_storage"]) == {"usage_bytes", "utilization"}


def test_limits_are_baseten_s(sandbox: Sandbox, http: Http, make_job: JobFactory) -> None:
    job = make_job()
    sandbox.append_logs(job["id"], [f"line {i}" for i in range(600)])
    now_ms = sandbox.state.now_us() // 1000
    assert len(_logs(http, job, end_epoch_millis=now_ms + 1000).json()["logs"]) == 500  # default
    newest = _logs(http, job, limit=2, end_epoch_millis=now_ms + 1000).json()["logs"]
    assert [line["message"] for line in newest] == ["line 599", "line 598"]  # newest first
    for params, word in (
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"direction": "up"}, "direction"),
        ({"min_level": "LOUD"}, "min_level"),
        ({"start_epoch_millis": now_ms - 8 * 86_400_000, "end_epoch_millis": now_ms}, "7 days"),
        ({"start_epoch_millis": now_ms, "end_epoch_millis": now_ms - 1}, "start_epoch_millis"),
    ):
        reply = _logs(http, job, probe=True, **params)
        assert reply.status_code == 400, params
        assert word in reply.json()["message"]


def test_min_level_drops_lines_without_a_level(
    sandbox: Sandbox, http: Http, make_job: JobFactory
) -> None:
    job = make_job()
    sandbox.append_logs(
        job["id"],
        ["no level here", "2026-01-01 INFO train: fine", {"message": "bad", "level": "ERROR"}],
    )
    now_ms = sandbox.state.now_us() // 1000 + 1000
    every = _logs(http, job, end_epoch_millis=now_ms, direction="asc").json()["logs"]
    assert [line["level"] for line in every] == [None, "INFO", "ERROR"]
    info = _logs(http, job, end_epoch_millis=now_ms, min_level="INFO", direction="asc").json()
    assert [line["message"] for line in info["logs"]] == ["2026-01-01 INFO train: fine", "bad"]


def test_truss_reads_logs_and_metrics_through_the_deprecated_post_forms(
    sandbox: Sandbox, truss_api: Any, make_job: JobFactory
) -> None:
    job = make_job()
    sandbox.append_logs(job["id"], ["first", "second"])
    now_ms = sandbox.state.now_us() // 1000 + 1000
    logs = truss_api.get_training_job_logs(
        job["training_project_id"], job["id"], now_ms - 60_000, now_ms
    )
    assert [line["message"] for line in logs] == [
        "first",
        "second",
    ]  # truss reverses to oldest-first
    metrics = truss_api.get_training_job_metrics(job["training_project_id"], job["id"])
    assert metrics["training_job"]["id"] == job["id"]


def test_a_failed_run_ends_in_its_traceback_and_a_stopped_one_in_sigterm(
    clocked_sandbox: Sandbox, clock: FakeClock, make_job_on: Any
) -> None:
    http, failing = make_job_on(clocked_sandbox)
    _, stopping = make_job_on(clocked_sandbox)
    clock.advance(25)
    clocked_sandbox.set_status(
        failing["id"], "TRAINING_JOB_FAILED", error_message="CUDA out of memory"
    )
    http.api(
        "POST",
        f"v1/training_projects/{stopping['training_project_id']}/jobs/{stopping['id']}/stop",
        {},
    )
    clock.advance(60)
    start = {"start_epoch_millis": clock.ns // MS - 120_000, "limit": 1000, "direction": "asc"}
    failed = _logs(http, failing, **start).json()["logs"]
    assert failed[-1]["level"] == "ERROR" and "CUDA out of memory" in failed[-1]["message"]
    assert not [r for r in _metric_records(failed) if r["type"] == "summary"]
    stopped = _logs(http, stopping, **start).json()["logs"]
    assert "SIGTERM" in stopped[-1]["message"]


def test_plan_run_writes_the_template_format() -> None:
    shape = RunShape(
        epochs=3,
        steps_per_epoch=4,
        nodes=2,
        gpus=8,
        learning_rate=1e-4,
        validation=True,
        model="m",
        dataset="d",
    )
    lines = plan_run("job1234", shape, 10 * SECOND, 70 * SECOND)
    assert [ns for ns, _ in lines] == sorted(ns for ns, _ in lines)
    records = _metric_records([{"message": row[0]} for _, row in lines])
    assert [r["step"] for r in records if r["type"] == "step"] == list(range(1, 13))
    assert [r["step"] for r in records if r["type"] == "eval"] == [0, 4, 8, 12]
    assert [r["model"] for r in records if r["type"] == "eval"] == ["base"] + ["tuned"] * 3
    # eval_samples not given: no samples (the request's default is resolved by the service).
    assert not [r for r in records if r["type"] == "sample"]
    assert max(r["learning_rate"] for r in records if r["type"] == "step") == pytest.approx(1e-4)
    assert all(r["tokens_per_second"] > 16 * 3000 for r in records if r["type"] == "step")
    assert not any(key.startswith("rewards/") for r in records for key in r)


def test_a_dpo_run_prints_trls_rewards_on_every_step() -> None:
    shape = RunShape(2, 5, 1, 1, 1e-4, False, "m", "d", method="dpo")
    lines = plan_run("job-dpo", shape, 0, 60 * SECOND)
    steps = [
        r for r in _metric_records([{"message": row[0]} for _, row in lines]) if r["type"] == "step"
    ]
    rewards = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
    assert len(steps) == 10 and all(isinstance(r[k], float) for r in steps for k in rewards)
    for r in steps:  # DPO's sigmoid loss of the margin: ln 2 at no preference, then less
        assert r["loss"] == pytest.approx(math.log1p(math.exp(-r["rewards/margins"])), abs=1e-3)
    assert steps[-1]["rewards/margins"] > 1.5 > steps[0]["rewards/margins"]
    assert all(0 <= r["rewards/accuracies"] <= 1 for r in steps)
    assert steps[-1]["loss"] < steps[0]["loss"]


def test_check_answers_off_skips_the_spec_check_of_answers(
    sandbox: Sandbox, http: Http, make_job: JobFactory
) -> None:
    from sandbox.conformance import LEDGER

    job = make_job()
    before = LEDGER.snapshot()["answers_validated"]
    assert _logs(http, job).status_code == 200
    checked = LEDGER.snapshot()["answers_validated"]
    assert checked == before + 1
    sandbox.configure(check_answers=False)
    assert _logs(http, job).status_code == 200
    assert LEDGER.snapshot()["answers_validated"] == checked
