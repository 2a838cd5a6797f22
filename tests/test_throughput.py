"""insights/throughput.py: earlier jobs' FT_METRICS step rates, read with bounded requests."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from finetune_api.core.errors import UpstreamUnavailableError
from finetune_api.insights.throughput import (
    MAX_JOBS,
    MeasuredThroughput,
    model_of,
    no_published_price,
    step_rate,
)
from finetune_api.jobs.estimate import RuleCounter, Tally, estimate

NOW_NS = 1_800_000_000 * 10**9


def step(rate: float | None, number: int = 1) -> str:
    record = {"type": "step", "step": number, "total_steps": 9, "tokens_per_second": rate}
    return "2026-01-01 00:00:00,000 INFO [rank 0] train: FT_METRICS " + json.dumps(record)


def job(job_id: str, project: str, gpu: str = "H100", count: int = 1) -> dict[str, Any]:
    return {
        "id": job_id,
        "training_project_id": f"p-{project}",
        "training_project": {"id": f"p-{project}", "name": project},
        "current_status": "TRAINING_JOB_COMPLETED",
        "created_at": "2027-01-15T08:00:00Z",
        "updated_at": "2027-01-15T09:00:00Z",
        "instance_type": {"gpu_type": gpu, "gpu_count": count},
        "node_count": 1,
    }


class FakeBaseten:
    def __init__(self, jobs: list[dict[str, Any]], logs: dict[str, tuple[str, list[str]]]) -> None:
        self.jobs = jobs
        self.logs = logs  # job id -> (model, step lines)
        self.searches = 0
        self.log_reads: list[tuple[str, str]] = []
        self.fail = False

    @contextlib.contextmanager
    def stream_search_jobs(self, **_: Any) -> Iterator[Iterator[dict[str, Any]]]:
        self.searches += 1
        if self.fail:
            raise UpstreamUnavailableError("Baseten is down")
        yield iter(self.jobs)

    def get_logs(self, project_id: str, job_id: str, **query: Any) -> list[dict[str, Any]]:
        self.log_reads.append((job_id, query["direction"]))
        model, steps = self.logs.get(job_id, ("", []))
        start = f"train: model={model} dataset=None device=cuda processes=1 bf16=True"
        lines = [start, *steps] if query["direction"] == "asc" else [*steps, start][::-1]
        base = query["start_ms"] * 10**6
        return [
            {"timestamp": str(base + i), "message": text, "replica": "r0", "level": "INFO"}
            for i, text in enumerate(lines[: query["limit"]])
        ]


def test_line_readers() -> None:
    assert model_of(["noise", "x: model=org/m dataset=d device=cpu"]) == "org/m"
    assert model_of(["model=nothing here"]) is None
    assert step_rate([step(10.0), step(30.0), step(None), step(20.0), "FT_METRICS {bad"]) == 20.0
    assert step_rate(["no metrics"]) is None


def test_median_rate_of_the_models_jobs_on_that_accelerator() -> None:
    jobs = [
        job("a", "ft-org-m"),
        job("b", "ft-org-m", gpu="A100"),  # another accelerator: never read
        job("c", "ft-org-m", count=2),  # another GPU count: never read
        job("d", "ft-org-m"),
        job("e", "ft-org-m"),
    ]
    logs = {
        "a": ("org/m", [step(1000.0), step(1100.0), step(900.0)]),
        "d": ("org/m", [step(2000.0)]),
        "e": ("org/m", [step(1500.0)]),
    }
    client = FakeBaseten(jobs, logs)
    rate, basis = MeasuredThroughput(client, clock_ns=lambda: NOW_NS)("org/m", "h100", 1)
    assert rate == 1500.0  # median of 1000, 2000, 1500
    assert "3 completed job(s) of org/m on 1x h100 (a, d, e)" in basis
    assert {job_id for job_id, _ in client.log_reads} == {"a", "d", "e"}


def test_reads_are_bounded_and_each_job_is_read_once() -> None:
    # 30 newer jobs of other models on the same accelerator, then one of ours in its own project.
    jobs = [job(f"o{i}", "team-shared") for i in range(30)] + [job("mine", "ft-org-m")]
    logs: dict[str, tuple[str, list[str]]] = {
        f"o{i}": ("org/other", [step(5.0)]) for i in range(30)
    }
    logs["mine"] = ("org/m", [step(700.0)])
    client = FakeBaseten(jobs, logs)
    measure = MeasuredThroughput(client, clock_ns=lambda: NOW_NS)
    rate, _ = measure("org/m", "H100", 1)
    # The job in the model's default project is tried first, however old.
    assert rate == 700.0
    assert client.searches == 1 and len(client.log_reads) <= 2 * MAX_JOBS
    first = len(client.log_reads)
    # Another model: at most MAX_JOBS more jobs read; those already read cost nothing.
    rate, reason = measure("org/none", "H100", 1)
    assert rate is None and "no throughput measured yet for org/none" in reason
    assert client.searches == 2 and len(client.log_reads) - first <= MAX_JOBS
    again = len(client.log_reads)
    rate, _ = measure("org/m", "H100", 1)
    # Jobs read before cost nothing; a few more older ones are looked at (at most MAX_JOBS).
    assert rate == 700.0 and 0 < len(client.log_reads) - again <= MAX_JOBS
    assert len({job_id for job_id, _ in client.log_reads}) == len(client.log_reads) - 1


def test_prefix_scope_and_baseten_down() -> None:
    client = FakeBaseten([job("x", "other-team-ft")], {"x": ("org/m", [step(10.0)])})
    rate, _ = MeasuredThroughput(client, prefix="ours-", clock_ns=lambda: NOW_NS)(
        "org/m", "H100", 1
    )
    assert rate is None and client.log_reads == []
    client.fail = True
    rate, reason = MeasuredThroughput(client, clock_ns=lambda: NOW_NS)("org/m", "H100", 1)
    assert rate is None and "could not be read (upstream_unavailable)" in reason


def test_estimate_gives_gpu_hours_but_never_a_price() -> None:
    tally = Tally(16, RuleCounter())
    for text in ("a" * 40, "b" * 80):
        tally({"text": text})
    answer = estimate(
        tally,
        num_epochs=2,
        model_id="org/m",
        accelerator="H100",
        gpu_count=2,
        throughput=lambda *_: (1000.0, "measured"),
        price=no_published_price,
    )
    assert answer["tokens"] == 30 and answer["trained_tokens"] == 60
    assert answer["examples_over_max_seq_length"] == 1
    assert answer["gpu_hours"] == float(f"{60 / 1000 / 3600 * 2:.4g}")
    assert answer["cost_usd"] is None and answer["cost_basis"].startswith("measured; no price")


def test_a_request_without_an_accelerator_is_estimated_on_the_templates_default() -> None:
    import ast
    from pathlib import Path

    from finetune_api.jobs.service import DEFAULT_ACCELERATOR

    config = Path(__file__).resolve().parents[1] / "training_template" / "config.py"
    found = [
        node.value.value
        for node in ast.parse(config.read_text()).body
        if isinstance(node, ast.Assign)
        and any(getattr(t, "id", None) == "DEFAULT_ACCELERATOR" for t in node.targets)
        and isinstance(node.value, ast.Constant)
    ]
    assert found == [DEFAULT_ACCELERATOR]
