"""Bounded metrics, poison lines, plain chart text, progress further back (issue 21).

Items 1 (the range clamped to the job's life, Baseten requests capped), 2 (the
cache bounded by bytes), 5 (an unreadable FT_METRICS line skipped and counted,
never a 500), 6 (``$…$`` in a name is text, not mathtext), 16 and 17 (the
completed event's summary and ``progress`` found behind long tails) and the
service half of 18 (one final loss).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from finetune_api.core.errors import InvalidRequestError
from finetune_api.core.settings import Settings
from finetune_api.insights import job_insights
from finetune_api.insights.job_insights import JobInsights, metrics_query
from finetune_api.insights.training_metrics import format_line, parse_series
from finetune_api.jobs.service import JobService
from finetune_api.notify.webhooks import DeliveryResult
from finetune_api.polling.poller import poll
from sandbox import Sandbox
from tests.poll_fixtures import (  # noqa: F401 - fixtures
    API_KEY,
    baseten_fixture,
    baseten_server_fixture,
    make_client,
    make_settings,
)

S = 1_000_000_000
LOGS_ROUTE = "GET /v1/training_projects/<project_id>/jobs/<job_id>/logs"


@pytest.fixture
def settings(baseten: Sandbox) -> Settings:
    return make_settings(baseten, baseten_max_retries=0, baseten_api_key=API_KEY)


@pytest.fixture
def insights(settings: Settings) -> Iterator[JobInsights]:
    client = make_client(settings)
    yield JobInsights(settings, client)
    client.close()


def seed(sb: Sandbox, status: str = "TRAINING_JOB_COMPLETED") -> tuple[str, str]:
    seeded = sb.seed(status=status)
    return seeded["projects"][0]["id"], seeded["job_ids"][0]


def log_requests(sb: Sandbox) -> int:
    return int(sb.stats()["by_route"].get(LOGS_ROUTE, 0))


def step_line(step: int, total: int, loss: float) -> str:
    record = {"type": "step", "step": step, "total_steps": total, "epoch": step / total}
    record |= {"loss": loss, "learning_rate": 1e-4, "grad_norm": 1.0, "tokens_per_second": 1e3}
    return "INFO train: " + format_line(record)


# -- 1: the range and the requests ---------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"since": "1970-01-01T00:00:00Z"},
        {"until": "9999-12-31T23:59:59Z"},
        {"since": "1970-01-01T00:00:00Z", "until": "9999-12-31T23:59:59Z"},
    ],
)
def test_a_huge_range_is_clamped_to_the_jobs_life(
    baseten: Sandbox, insights: JobInsights, params: dict[str, str]
) -> None:
    project_id, job_id = seed(baseten)
    baseten.append_logs(job_id, [step_line(i, 5, 2.0 - i / 10) for i in range(1, 6)])
    time.sleep(0.01)
    before = log_requests(baseten)
    answer = insights.metrics(project_id, job_id, metrics_query(params))
    # Before: one request per 7-day window since 1970 (about 2,977), or to 9999.
    assert log_requests(baseten) - before <= 2
    assert answer["training"]["points"]["steps"] == 5
    assert answer["training"]["summary"]["step"] == 5


def test_a_range_outside_the_jobs_life_reads_nothing(
    baseten: Sandbox, insights: JobInsights
) -> None:
    project_id, job_id = seed(baseten)
    before = baseten.stats()["requests"]
    answer = insights.metrics(project_id, job_id, metrics_query({"until": "1971-01-01T00:00:00Z"}))
    assert answer["training"] is None and answer["system"] == {"nodes": []}
    assert baseten.stats()["requests"] - before == 1  # the job read only


def test_baseten_requests_per_metrics_call_are_capped(
    baseten: Sandbox, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_insights, "MAX_METRICS_REQUESTS", 3)
    project_id, job_id = seed(baseten)
    baseten.append_logs(job_id, [f"line {i}" for i in range(4500)])
    time.sleep(0.01)
    client = make_client(settings)
    insights = JobInsights(settings, client)
    before = log_requests(baseten)
    with pytest.raises(InvalidRequestError) as caught:
        insights.metrics(project_id, job_id, metrics_query({}))
    assert "3 Baseten requests" in caught.value.message
    assert [d["location"] for d in caught.value.details or []] == ["query.since", "query.until"]
    assert log_requests(baseten) - before <= 3
    client.close()


# -- 2: the cache ------------------------------------------------------------------------


def test_the_metrics_cache_is_bounded_by_bytes(
    baseten: Sandbox, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    project_id, job_id = seed(baseten)
    baseten.synthesize_logs(job_id, steps=100, seconds=60)
    client = make_client(settings)
    insights = JobInsights(settings, client)
    one = len(json.dumps(insights.metrics(project_id, job_id, metrics_query({"points": "100"}))))
    monkeypatch.setattr(job_insights, "CACHE_BYTES", 8 * one)
    insights = JobInsights(settings, client)
    for points in range(70, 100):  # a caller multiplying entries, one per points value
        insights.metrics(project_id, job_id, metrics_query({"points": str(points)}))
        assert insights.cache_bytes() <= 8 * one
    # Still a cache: the newest answer is served again without reading the log.
    before = log_requests(baseten)
    insights.metrics(project_id, job_id, metrics_query({"points": "99"}))
    assert log_requests(baseten) == before
    # And what it hands out is a copy: a caller changing it changes nothing kept.
    answer = insights.metrics(project_id, job_id, metrics_query({"points": "99"}))
    answer["training"]["steps"].clear()
    again = insights.metrics(project_id, job_id, metrics_query({"points": "99"}))
    assert again["training"]["steps"]
    client.close()


# -- 5: poison lines -------------------------------------------------------------------


POISON = [
    'FT_METRICS {"type":"step","step":99999999999999999999}',
    'FT_METRICS {"type":"step","step":1,"total_steps":99999999999999999999999}',
    "FT_METRICS " + "[" * 20_000,
    'FT_METRICS {"type":"step","step":2,"loss":' + "9" * 400 + "}",
    'columns: [\'FT_METRICS {"type": "step", "step": -1}\']',
    "FT_METRICS {not json",
]


def test_poison_metrics_lines_are_skipped_and_counted(
    baseten: Sandbox, settings: Settings, insights: JobInsights
) -> None:
    project_id, job_id = seed(baseten)
    baseten.append_logs(job_id, [step_line(1, 3, 2.0), *POISON, step_line(3, 3, 1.0)])
    time.sleep(0.01)
    answer = insights.metrics(project_id, job_id, metrics_query({}))
    training = answer["training"]
    assert [s["step"] for s in training["steps"]] == [1, 2, 3]
    assert training["points"]["skipped_lines"] == 5
    assert training["summary"]["total_steps"] == 3 and training["summary"]["latest_loss"] == 1.0
    service = JobService(
        settings, make_client(settings), pusher=lambda _: {}, progress=insights.progress
    )
    job = service.get(project_id, job_id)
    assert job.progress is not None and job.progress.step == 3
    svg = insights.metrics(project_id, job_id, metrics_query({"format": "svg"}))
    assert svg["training"]["points"]["skipped_lines"] == 5


def test_a_huge_loss_is_no_number_rather_than_an_error() -> None:
    series = parse_series([(1, POISON[3])])
    assert len(series) == 1 and series.latest_loss() is None


# -- 6: chart text ---------------------------------------------------------------------


def test_chart_text_is_plain_text() -> None:
    from finetune_api.insights.chart import render_svg

    name = r"run $\frac{1}{$ cost $5 and $x^2$"
    answer = {
        "training_job_id": "j1",
        "job_name": name,
        "status": "running",
        "training": None,
        "system": {
            "nodes": [
                {
                    "node_id": r"$\undefined{node}$",
                    "gpu_utilization": {
                        "0": [
                            {"timestamp": "2026-01-01T00:00:00Z", "value": 0.5},
                            {"timestamp": "2026-01-01T00:01:00Z", "value": 0.6},
                        ]
                    },
                }
            ]
        },
    }
    svg = render_svg(answer)
    assert r"$\frac{1}{$ cost $5 and $x^2$" in svg.replace("&#x27;", "'")
    assert r"$\undefined{node}$ GPU 0" in svg


# -- 16, 17, 18: behind a long tail ----------------------------------------------------


def _tail(count: int) -> list[str]:
    return [f"Uploading checkpoint shard: {i}/{count} |#####     |" for i in range(count)]


class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def emit(self, event: Any) -> DeliveryResult:
        self.events.append(event)
        return DeliveryResult(event.id, delivered=False, failed=False)


def test_the_completed_summary_is_found_behind_a_long_tail(
    baseten: Sandbox, settings: Settings, insights: JobInsights
) -> None:
    project_id, job_id = seed(baseten)
    now = time.time_ns()
    lines = [step_line(i, 40, 2.0 - i / 40) for i in range(1, 41)]
    # The template's summary line disagreeing with the last step: the step wins.
    summary = {"type": "summary", "step": 40, "total_steps": 40, "final_loss": 9.9}
    lines.append("INFO train: " + format_line(summary | {"runtime_seconds": 12.0}))
    # More than 100 lines after the last step line (checkpoint upload progress bars).
    lines += _tail(2500)
    baseten.append_logs(
        job_id,
        [{"message": m, "timestamp": now - 30 * S + i * 10_000} for i, m in enumerate(lines)],
    )
    sink = Recorder()
    before = log_requests(baseten)
    poll(settings, make_client(settings), sink, None, explain=insights.event_details)
    assert log_requests(baseten) - before <= job_insights.MAX_METRICS_REQUESTS
    [event] = [e for e in sink.events if e.type == "training_job.completed"]
    got = event.data["summary"]
    assert got["steps"] == 40 and got["total_steps"] == 40
    assert got["final_loss"] == pytest.approx(1.0)
    metrics = insights.metrics(project_id, job_id, metrics_query({}))
    assert metrics["training"]["summary"]["latest_loss"] == got["final_loss"]


def test_progress_looks_further_back_within_its_request_bound(
    baseten: Sandbox, settings: Settings, insights: JobInsights
) -> None:
    project_id, job_id = seed(baseten, "TRAINING_JOB_RUNNING")
    now = time.time_ns()
    baseten.append_logs(
        job_id,
        [
            {"message": step_line(i, 40, 2.0 - i / 100), "timestamp": now - (60 - i) * S}
            for i in range(1, 11)
        ]
        + [
            {"message": m, "timestamp": now - 40 * S + i * 10_000}
            for i, m in enumerate(_tail(1500))
        ],
    )
    service = JobService(
        settings, make_client(settings), pusher=lambda _: {}, progress=insights.progress
    )
    before = log_requests(baseten)
    job = service.get(project_id, job_id)
    used = log_requests(baseten) - before
    assert job.progress is not None and job.progress.step == 10
    assert job.progress.latest_loss == pytest.approx(1.9)
    assert used <= job_insights.PROGRESS_MAX_REQUESTS
    # A tail longer than the bound: progress is null, and the bound holds.
    now = time.time_ns()
    baseten.append_logs(
        job_id,
        [
            {"message": m, "timestamp": now - 20 * S + i * 1000}
            for i, m in enumerate(_tail(job_insights.PROGRESS_MAX_REQUESTS * 1000))
        ],
    )
    before = log_requests(baseten)
    assert service.get(project_id, job_id).progress is None
    assert log_requests(baseten) - before <= job_insights.PROGRESS_MAX_REQUESTS
