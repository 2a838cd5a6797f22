"""train.py's own FT_METRICS lines, served by the sandbox as a job's log, become the metrics answer.

A real CPU run of the template on the tiny model (with validation_split, so it
evaluates at each epoch's end); its stdout is appended to a sandbox job's log
exactly as printed, and the service's Python API reads it back through
Baseten's GET logs operation. Nothing here writes the line format by hand.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from template_helpers import EXAMPLE_RUNTIME_CONFIG, RunTrain, TrainRun, sentence, write_jsonl

from sandbox import Sandbox

pytestmark = pytest.mark.usefixtures("training_stack")

API_KEY = "bt-template-metrics-key-0123456789"
HP = {
    "learning_rate": 0.01,
    "num_epochs": 2,
    "batch_size": 2,
    "gradient_accumulation_steps": 3,
    "max_seq_length": 8,
    "lora_rank": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "seed": 7,
    "validation_split": 0.25,
}


@pytest.fixture(scope="module")
def run(
    run_train: RunTrain, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> TrainRun:
    rows = [{"text": sentence(i)} for i in range(24)]
    dataset = write_jsonl(tmp_path_factory.mktemp("metrics-data") / "train.jsonl", rows)
    config = {
        **EXAMPLE_RUNTIME_CONFIG,
        "dataset_id": str(dataset),
        "model_id": str(tiny_model),
        "hyperparameters": HP,
    }
    done = run_train(DATASET_ID=str(dataset), MODEL_ID=str(tiny_model), RUNTIME_CONFIG=config)
    assert done.returncode == 0, done.describe()
    return done


@pytest.fixture
def served(run: TrainRun, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """A finished sandbox job whose log is the run's stdout; the service pointed at it."""
    from finetune_api import runtime

    with Sandbox(api_key=API_KEY) as sandbox:
        seeded = requests.post(
            f"{sandbox.url}/_sandbox/seed", json={"status": "TRAINING_JOB_COMPLETED"}, timeout=10
        ).json()
        project_id, job_id = seeded["projects"][0]["id"], seeded["job_ids"][0]
        lines = run.stdout.splitlines()
        appended = requests.post(
            f"{sandbox.url}/_sandbox/jobs/{job_id}/logs", json={"lines": lines}, timeout=10
        )
        assert appended.status_code == 201, appended.text
        for name, value in {
            "BASETEN_API_KEY": API_KEY,
            "BASETEN_API_URL": sandbox.url,
            "BASETEN_REMOTE_URL": sandbox.url,
        }.items():
            monkeypatch.setenv(name, value)
        runtime.reset()
        try:
            yield project_id, job_id
        finally:
            runtime.reset()


def test_the_run_prints_one_line_per_step_one_per_evaluation_and_a_summary(run: TrainRun) -> None:
    records = run.metrics
    steps = [r for r in records if r["type"] == "step"]
    [base, *evals] = [r for r in records if r["type"] == "eval"]
    [summary] = [r for r in records if r["type"] == "summary"]
    # 24 examples, 6 held out: 18 / batch 2 = 9 batches / 3 = 3 steps per epoch, 2 epochs.
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert {r["total_steps"] for r in steps} == {6}
    for record in steps:
        assert set(record) >= {"epoch", "loss", "learning_rate", "grad_norm", "tokens_per_second"}
        assert math.isfinite(record["loss"]) and record["learning_rate"] >= 0
        assert record["grad_norm"] is not None and record["grad_norm"] > 0
    assert max(r["learning_rate"] for r in steps) == pytest.approx(HP["learning_rate"], rel=0.2)
    # The base model before the first step, then the tuned one at each epoch's end.
    assert (base["model"], base["step"], base["epoch"]) == ("base", 0, 0.0)
    assert [(r["model"], r["step"], r["epoch"]) for r in evals] == [
        ("tuned", 3, 1.0),
        ("tuned", 6, 2.0),
    ]
    assert all(math.isfinite(r["eval_loss"]) for r in [base, *evals])
    assert summary["step"] == 6 and summary["final_loss"] == steps[-1]["loss"]
    assert summary["best_eval_loss"] == min(r["eval_loss"] for r in evals)
    assert (summary["base_eval_loss"], summary["eval_loss"]) == (
        base["eval_loss"],
        evals[-1]["eval_loss"],
    )
    assert run.summary["global_step"] == 6


def test_the_served_lines_are_the_metrics_answer(run: TrainRun, served: tuple[str, str]) -> None:
    from finetune_api import job_metrics

    project_id, job_id = served
    answer = job_metrics(project_id, job_id)
    steps = [r for r in run.metrics if r["type"] == "step"]
    evals = [r for r in run.metrics if r["type"] == "eval" and r["model"] == "tuned"]
    training = answer["training"]
    assert [s["step"] for s in training["steps"]] == [r["step"] for r in steps]
    assert [s["loss"] for s in training["steps"]] == [r["loss"] for r in steps]
    assert [s["learning_rate"] for s in training["steps"]] == [r["learning_rate"] for r in steps]
    # The tuned model's evaluations (the base model's, at step 0, is the evaluation
    # route's business; a service that predates it lists it here too).
    tuned = [e["eval_loss"] for e in training["evaluations"] if e["step"] > 0]
    assert tuned == [r["eval_loss"] for r in evals]
    assert training["summary"] == {
        "step": 6,
        "total_steps": 6,
        "percent": 100.0,
        "epoch": steps[-1]["epoch"],
        "latest_loss": steps[-1]["loss"],
        "eta_seconds": 0.0,  # completed
        "best_eval_loss": min(r["eval_loss"] for r in evals),
        "tokens_per_second": training["summary"]["tokens_per_second"],
    }
    assert training["summary"]["tokens_per_second"] > 0
    assert answer["status"] == "completed"


def test_the_chart_holds_the_run(run: TrainRun, served: tuple[str, str]) -> None:
    from finetune_api import job_metrics, job_metrics_svg

    evaluations = job_metrics(*served)["training"]["evaluations"]
    svg = job_metrics_svg(*served)
    root = ET.fromstring(svg)  # noqa: S314 - the SVG our own code just drew
    ns = {"svg": "http://www.w3.org/2000/svg"}
    groups = {g.get("id"): g for g in root.iter("{http://www.w3.org/2000/svg}g")}
    steps = [r for r in run.metrics if r["type"] == "step"]
    for gid, expected in (
        ("loss", len(steps)),
        ("eval_loss", len(evaluations)),
        ("learning_rate", len(steps)),
    ):
        path = groups[gid].find("svg:path", ns)
        assert path is not None, gid
        vertices = re.findall(r"[ML]\s*(-?[\d.]+)\s+(-?[\d.]+)", path.get("d", ""))
        assert len(vertices) == expected, gid
    # The lowest loss is drawn lowest (SVG y grows downwards).
    loss_path = groups["loss"].find("svg:path", ns)
    assert loss_path is not None
    ys = [
        float(y) for _, y in re.findall(r"[ML]\s*(-?[\d.]+)\s+(-?[\d.]+)", loss_path.get("d", ""))
    ]
    losses = [r["loss"] for r in steps]
    assert ys.index(max(ys)) == losses.index(min(losses))
    assert "completed" in svg


def test_the_log_reads_back_line_for_line(run: TrainRun, served: tuple[str, str]) -> None:
    from finetune_api import job_logs

    lines: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = job_logs(*served, limit=7, cursor=cursor) if cursor else job_logs(*served, limit=7)
        lines += page["data"]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert [line["message"] for line in lines] == run.stdout.splitlines()
    assert cursor is None  # a finished job: nothing more will come
