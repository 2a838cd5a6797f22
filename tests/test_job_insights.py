"""Logs, metrics, progress and event details against the sandbox's GET logs / metrics.

Paging edge cases (lines sharing a timestamp across pages, quiet gaps longer
than Baseten's 7-day window, interleaved replicas, nanoseconds), bad
parameters, unknown jobs, Baseten's 429/5xx, redaction, downsampling, the
per-instance cache and what each read costs in Baseten requests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from finetune_api.baseten.log_pages import Cursor, Position
from finetune_api.core.errors import (
    InvalidRequestError,
    NotFoundError,
    UpstreamError,
    UpstreamUnavailableError,
)
from finetune_api.core.schemas import job_from_baseten
from finetune_api.core.settings import Settings
from finetune_api.insights.job_insights import JobInsights, log_query, metrics_query
from finetune_api.insights.training_metrics import downsample_indices, format_line
from finetune_api.jobs.service import JobService
from finetune_api.notify.webhooks import DeliveryResult
from finetune_api.polling.poller import poll
from sandbox import Sandbox
from tests.poll_fixtures import (  # noqa: F401 - fixtures
    API_KEY,
    WEBHOOK_SECRET,
    baseten_fixture,
    baseten_server_fixture,
    make_client,
    make_settings,
)

S = 1_000_000_000
DAY = 86_400 * S
LOGS_ROUTE = "GET /v1/training_projects/<project_id>/jobs/<job_id>/logs"
METRICS_ROUTE = "GET /v1/training_projects/<project_id>/jobs/<job_id>/metrics"


def rfc3339(ns: int) -> str:
    from finetune_api.insights.training_metrics import ns_to_rfc3339

    return ns_to_rfc3339(ns)


@pytest.fixture
def settings(baseten: Sandbox) -> Settings:
    # Both secrets come from the settings, as in production, and are known to the scrubber.
    return make_settings(
        baseten, baseten_max_retries=0, baseten_api_key=API_KEY, webhook_secret=WEBHOOK_SECRET
    )


@pytest.fixture
def insights(settings: Settings) -> Iterator[JobInsights]:
    client = make_client(settings)
    yield JobInsights(settings, client)
    client.close()


def seed(sb: Sandbox, status: str = "TRAINING_JOB_COMPLETED") -> tuple[str, str]:
    seeded = sb.seed(status=status)
    return seeded["projects"][0]["id"], seeded["job_ids"][0]


def read_all(
    insights: JobInsights, project_id: str, job_id: str, limit: int, **params: Any
) -> tuple[list[dict[str, Any]], int]:
    """Every line, page by page through next_cursor; and how many pages it took."""
    lines: list[dict[str, Any]] = []
    page = insights.logs(project_id, job_id, log_query({"limit": str(limit), **params}))
    pages = 1
    lines += page["data"]
    while page["has_more"]:
        cursor = page["next_cursor"]
        page = insights.logs(project_id, job_id, log_query({"limit": str(limit), "cursor": cursor}))
        lines += page["data"]
        pages += 1
        assert pages < 1000
    return lines, pages


def logs_requests(sb: Sandbox) -> int:
    return int(sb.stats()["by_route"].get(LOGS_ROUTE, 0))


# -- paging ------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 7, 13, 50])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_lines_sharing_a_timestamp_are_never_skipped_or_repeated(
    baseten: Sandbox, insights: JobInsights, limit: int, order: str
) -> None:
    project_id, job_id = seed(baseten)
    base = time.time_ns() - 10 * S
    lines = [{"message": f"same-ns {i}", "timestamp": base} for i in range(23)]
    lines += [{"message": f"next-ns {i}", "timestamp": base + 1} for i in range(9)]
    lines += [{"message": f"same-ms {i}", "timestamp": base + 500_000} for i in range(5)]
    lines += [{"message": "later", "timestamp": base + 3 * S}]
    baseten.append_logs(job_id, lines)
    read, pages = read_all(
        insights, project_id, job_id, limit, order=order, since=rfc3339(base - S)
    )
    expected = [line["message"] for line in lines]
    if order == "desc":
        # Newest first; lines of one nanosecond keep Baseten's (reversed) order.
        expected = list(reversed(expected))
    assert [line["message"] for line in read] == expected
    assert pages == -(-len(lines) // limit) or pages == -(-len(lines) // limit) + 1


def test_a_quiet_gap_longer_than_the_7_day_window_does_not_end_the_listing(
    baseten: Sandbox, insights: JobInsights
) -> None:
    project_id, job_id = seed(baseten)
    now = time.time_ns()
    stamps = [now - 20 * DAY, now - 20 * DAY + 1, now - 9 * DAY, now - S]
    baseten.append_logs(
        job_id, [{"message": f"line {i}", "timestamp": ns} for i, ns in enumerate(stamps)]
    )
    read, _ = read_all(insights, project_id, job_id, 100, since=rfc3339(now - 21 * DAY))
    assert [line["message"] for line in read] == ["line 0", "line 1", "line 2", "line 3"]
    # Every window Baseten was asked for stayed within 7 days (it answers 400 otherwise),
    # and the empty windows between the lines were read through, not taken as the end.
    assert logs_requests(baseten) >= 4
    assert baseten.stats()["by_status"].get("400", 0) == 0
    newest, _ = read_all(
        insights, project_id, job_id, 2, order="desc", since=rfc3339(now - 21 * DAY)
    )
    assert [line["message"] for line in newest] == ["line 3", "line 2", "line 1", "line 0"]


def test_replicas_of_a_multi_node_job_come_interleaved_in_time_order(
    baseten: Sandbox, insights: JobInsights
) -> None:
    project_id, job_id = seed(baseten)
    made = baseten.synthesize_logs(job_id, steps=300, seconds=120, nodes=3)
    read, _ = read_all(insights, project_id, job_id, 1000)
    assert len(read) == made["lines"]
    assert {line["replica"] for line in read} == {f"{job_id}-multinode-{n}" for n in range(3)}
    stamps = [line["timestamp"] for line in read]
    assert stamps == sorted(stamps)
    # The three replicas' first lines share one timestamp.
    assert stamps[0] == stamps[1] == stamps[2]
    assert read[0]["replica"] != read[1]["replica"]


def test_timestamps_keep_their_nanoseconds(baseten: Sandbox, insights: JobInsights) -> None:
    project_id, job_id = seed(baseten)
    ns = (time.time_ns() // S - 5) * S + 123_456_789
    baseten.append_logs(job_id, [{"message": "precise", "timestamp": ns}])
    page = insights.logs(project_id, job_id, log_query({"since": rfc3339(ns - S)}))
    [line] = page["data"]
    assert line["timestamp"].endswith(".123456789Z")
    assert line["timestamp"] == rfc3339(ns)


def test_a_running_job_hands_out_a_cursor_to_come_back_for_new_lines(
    baseten: Sandbox, insights: JobInsights, settings: Settings
) -> None:
    project_id, job_id = seed(baseten, "TRAINING_JOB_DEPLOYING")
    first = insights.logs(project_id, job_id, log_query({}))
    assert first["has_more"] is False
    assert first["next_cursor"] is not None  # the job can still print
    baseten.append_logs(job_id, ["epoch 1 started", "epoch 1 done"])
    time.sleep(0.01)
    later = insights.logs(project_id, job_id, log_query({"cursor": first["next_cursor"]}))
    assert [line["message"] for line in later["data"]][-2:] == ["epoch 1 started", "epoch 1 done"]
    baseten.set_status(job_id, "TRAINING_JOB_COMPLETED")
    done = insights.logs(project_id, job_id, log_query({"cursor": later["next_cursor"]}))
    assert done["data"] == [] and done["next_cursor"] is None


def test_a_cursor_only_continues_its_own_job(baseten: Sandbox, insights: JobInsights) -> None:
    project_id, job_id = seed(baseten)
    baseten.synthesize_logs(job_id, steps=20, seconds=10)
    _, other_id = seed(baseten)
    page = insights.logs(project_id, job_id, log_query({"limit": "3"}))
    with pytest.raises(InvalidRequestError) as caught:
        insights.logs(project_id, other_id, log_query({"cursor": page["next_cursor"]}))
    assert caught.value.details == [{"location": "query.cursor", "reason": "from another job"}]


def test_level_is_the_minimum_level(baseten: Sandbox, insights: JobInsights) -> None:
    project_id, job_id = seed(baseten)
    baseten.append_logs(
        job_id,
        [
            {"message": "debugging", "level": "DEBUG"},
            {"message": "plain"},
            {"message": "careful", "level": "WARNING"},
            {"message": "broken", "level": "ERROR"},
        ],
    )
    time.sleep(0.01)
    page = insights.logs(project_id, job_id, log_query({"level": "warning"}))
    assert [line["message"] for line in page["data"]] == ["careful", "broken"]
    assert [line["level"] for line in page["data"]] == ["WARNING", "ERROR"]


# -- bad input, unknown jobs, Baseten failures ---------------------------------------------


@pytest.mark.parametrize(
    ("params", "location"),
    [
        ({"limit": "0"}, "query.limit"),
        ({"limit": "1001"}, "query.limit"),
        ({"limit": "ten"}, "query.limit"),
        ({"order": "sideways"}, "query.order"),
        ({"level": "LOUD"}, "query.level"),
        ({"since": "yesterday"}, "query.since"),
        ({"until": "2026-13-01T00:00:00Z"}, "query.until"),
        ({"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "query.since"),
        ({"cursor": "not-a-cursor"}, "query.cursor"),
        (
            {"cursor": Cursor("asc", Position(1), 0, None, None).encode(), "order": "desc"},
            "query.order",
        ),
        ({"page": "2"}, "query.page"),
    ],
)
def test_bad_log_parameters_are_a_400_naming_them(params: dict[str, str], location: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        log_query(params)
    assert caught.value.status == 400
    assert location in [detail["location"] for detail in caught.value.details or []]


@pytest.mark.parametrize(
    ("params", "location"),
    [
        ({"points": "1"}, "query.points"),
        ({"points": "10001"}, "query.points"),
        ({"points": "9" * 5000}, "query.points"),  # past int()'s digit limit: a 400, not a 500
        ({"points": "\u00b2"}, "query.points"),
        ({"format": "png"}, "query.format"),
        ({"since": "2026-01-01"}, "query.since"),
        ({"step": "1"}, "query.step"),
    ],
)
def test_bad_metrics_parameters_are_a_400_naming_them(
    params: dict[str, str], location: str
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        metrics_query(params)
    assert location in [detail["location"] for detail in caught.value.details or []]


def test_unknown_job_is_not_found(baseten: Sandbox, insights: JobInsights) -> None:
    project_id, _ = seed(baseten)
    with pytest.raises(NotFoundError):
        insights.logs(project_id, "nosuchjob", log_query({}))
    with pytest.raises(NotFoundError):
        insights.metrics("nosuchproject", "nosuchjob", metrics_query({}))


@pytest.mark.parametrize(
    ("status", "error", "retry_after"),
    [(429, UpstreamUnavailableError, "7"), (500, UpstreamError, None), (503, UpstreamError, None)],
)
def test_baseten_failures_map_per_contract(
    baseten: Sandbox, insights: JobInsights, status: int, error: type, retry_after: str | None
) -> None:
    project_id, job_id = seed(baseten)
    baseten.add_fault(
        path=r"/logs$", status=status, retry_after=7 if status == 429 else None, count=5
    )
    with pytest.raises(error) as caught:
        insights.logs(project_id, job_id, log_query({}))
    if retry_after is not None:
        assert caught.value.headers["Retry-After"] == retry_after
    if status == 503:
        assert caught.value.type == "upstream_error"  # a 5xx (no Retry-After): 502 upstream_error
    with pytest.raises(error):
        insights.metrics(project_id, job_id, metrics_query({}))


def test_the_baseten_key_and_webhook_secret_come_back_redacted(
    baseten: Sandbox, insights: JobInsights
) -> None:
    project_id, job_id = seed(baseten)
    baseten.append_logs(
        job_id,
        [
            f"export BASETEN_API_KEY={API_KEY}",
            f"webhook secret is {WEBHOOK_SECRET} (oops)",
            "HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz0123",
            "headers: Authorization: Bearer sk-live-0123456789abcdef",
        ],
    )
    time.sleep(0.01)
    page = insights.logs(project_id, job_id, log_query({}))
    text = "\n".join(line["message"] for line in page["data"])
    assert API_KEY not in text and WEBHOOK_SECRET not in text
    assert "hf_abcdefghijklmnopqrstuvwxyz0123" not in text
    assert "sk-live-0123456789abcdef" not in text
    assert text.count("[REDACTED]") == 4
    assert "export BASETEN_API_KEY=[REDACTED]" in text


# -- metrics -----------------------------------------------------------------------------


def test_a_job_that_printed_no_training_lines_answers_training_null(
    baseten: Sandbox, insights: JobInsights
) -> None:
    project_id, job_id = seed(baseten)
    baseten.append_logs(job_id, ["hello", "loss: 0.5 (but not in our format)"])
    time.sleep(0.01)
    answer = insights.metrics(project_id, job_id, metrics_query({}))
    assert answer["training"] is None
    assert [node["node_id"] for node in answer["system"]["nodes"]] == [f"{job_id}-multinode-0"]


def test_long_series_are_cut_to_points_keeping_their_shape(
    baseten: Sandbox, insights: JobInsights
) -> None:
    project_id, job_id = seed(baseten)
    baseten.synthesize_logs(job_id, steps=3000, seconds=600, validation=True)
    full = insights.metrics(project_id, job_id, metrics_query({"points": "10000"}))
    small = insights.metrics(project_id, job_id, metrics_query({"points": "60"}))
    steps, cut = full["training"]["steps"], small["training"]["steps"]
    assert len(steps) == 3000 and len(cut) <= 60
    assert cut[0] == steps[0] and cut[-1] == steps[-1]
    # The lowest and highest losses survive the cut (a plain stride would lose them).
    losses = [s["loss"] for s in steps]
    assert min(s["loss"] for s in cut) == min(losses)
    assert max(s["loss"] for s in cut) == max(losses)
    assert small["training"]["points"] == {"steps": 3000, "evaluations": 120, "skipped_lines": 0}
    assert small["training"]["summary"] == full["training"]["summary"]
    for node in small["system"]["nodes"]:
        assert all(len(series) <= 60 for series in node["gpu_utilization"].values())


def test_downsample_indices_keep_spikes() -> None:
    values = [1.0] * 1000
    values[333] = 50.0
    values[777] = -50.0
    chosen = downsample_indices(values, 10)
    assert len(chosen) <= 10 and {0, 333, 777, 999} <= set(chosen)


def test_a_finished_jobs_metrics_are_cached_per_instance(
    baseten: Sandbox, insights: JobInsights
) -> None:
    project_id, job_id = seed(baseten)
    baseten.synthesize_logs(job_id, steps=200, seconds=60)
    first = insights.metrics(project_id, job_id, metrics_query({}))
    before = baseten.stats()
    again = insights.metrics(project_id, job_id, metrics_query({}))
    after = baseten.stats()
    assert again == first
    assert after["requests"] - before["requests"] == 1  # only the job read (its status)
    assert after["by_route"].get(LOGS_ROUTE, 0) == before["by_route"].get(LOGS_ROUTE, 0)


def test_system_series_come_per_node_from_the_metrics_operation(
    baseten: Sandbox, insights: JobInsights
) -> None:
    project_id, job_id = seed(baseten)
    baseten.synthesize_logs(job_id, steps=100, seconds=300, nodes=2)
    answer = insights.metrics(project_id, job_id, metrics_query({}))
    nodes = answer["system"]["nodes"]
    assert [node["node_id"] for node in nodes] == [f"{job_id}-multinode-{n}" for n in range(2)]
    for node in nodes:
        assert node["gpu_utilization"]["0"] and node["cpu_usage"]
        assert all(0 <= p["value"] <= 1 for p in node["gpu_utilization"]["0"])
    assert baseten.stats()["by_route"][METRICS_ROUTE] == 1


# -- progress and events -----------------------------------------------------------------


def _steps(job_id: str, sb: Sandbox, steps: range, total: int, end_ns: int) -> None:
    lines = [
        {
            "message": "INFO train: "
            + format_line(
                {
                    "type": "step",
                    "step": step,
                    "total_steps": total,
                    "epoch": step / 10,
                    "loss": 2.0 - step / 100,
                    "learning_rate": 1e-4,
                    "grad_norm": 1.0,
                    "tokens_per_second": 1000.0,
                }
            ),
            "timestamp": end_ns - (steps[-1] - step) * S,
        }
        for step in steps
    ]
    sb.append_logs(job_id, lines)


def test_progress_costs_one_small_read_and_estimates_the_time_left(
    baseten: Sandbox, settings: Settings, insights: JobInsights
) -> None:
    project_id, job_id = seed(baseten, "TRAINING_JOB_RUNNING")
    # The simulated run's step lines are still in the future; these ten are the past.
    _steps(job_id, baseten, range(1, 11), 40, time.time_ns() - S)
    service = JobService(
        settings, make_client(settings), pusher=lambda _: {}, progress=insights.progress
    )
    before = baseten.stats()
    job = service.get(project_id, job_id)
    after = baseten.stats()
    assert after["by_route"][LOGS_ROUTE] - before["by_route"].get(LOGS_ROUTE, 0) == 1
    assert job.progress is not None
    assert (job.progress.step, job.progress.total_steps, job.progress.percent) == (10, 40, 25.0)
    assert job.progress.latest_loss == pytest.approx(1.9)
    # 1 s per step, 30 steps left, the last one 1 s ago: about 29 s.
    assert job.progress.eta_seconds == pytest.approx(29, abs=1.5)


def test_a_job_that_has_not_started_costs_no_log_read(
    baseten: Sandbox, settings: Settings, insights: JobInsights
) -> None:
    project_id, job_id = seed(baseten, "TRAINING_JOB_CREATED")
    service = JobService(
        settings, make_client(settings), pusher=lambda _: {}, progress=insights.progress
    )
    job = service.get(project_id, job_id)
    assert job.progress is None and logs_requests(baseten) == 0


class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def emit(self, event: Any) -> DeliveryResult:
        self.events.append(event)
        return DeliveryResult(event.id, delivered=False, failed=False)


def test_events_explain_themselves_at_one_request_per_changed_job(
    baseten: Sandbox, settings: Settings, insights: JobInsights
) -> None:
    failed_p, failed_j = seed(baseten, "TRAINING_JOB_RUNNING")
    baseten.append_logs(failed_j, [f"token {API_KEY} leaked"] + [f"line {i}" for i in range(80)])
    time.sleep(0.01)
    baseten.set_status(failed_j, "TRAINING_JOB_FAILED", error_message="CUDA out of memory")
    done_p, done_j = seed(baseten)
    baseten.synthesize_logs(done_j, steps=120, seconds=60, validation=True)
    baseten.set_status(done_j, "TRAINING_JOB_COMPLETED")
    quiet_p, quiet_j = seed(baseten, "TRAINING_JOB_DEPLOYING")
    sink = Recorder()
    before = logs_requests(baseten)
    client = make_client(settings)
    poll(settings, client, sink, None, explain=insights.event_details)
    by_type = {event.type: event for event in sink.events}
    assert logs_requests(baseten) - before == 2  # the failed and the completed job only
    tail = by_type["training_job.failed"].data["log_tail"]
    assert 0 < len(tail) <= 50
    assert tail[-1]["message"].endswith("CUDA out of memory")
    assert all(API_KEY not in line["message"] for line in tail)
    summary = by_type["training_job.completed"].data["summary"]
    assert summary["steps"] == 120 and summary["total_steps"] == 120
    assert summary["final_loss"] is not None and summary["best_eval_loss"] is not None
    assert summary["duration_seconds"] > 0
    assert "summary" not in by_type["training_job.deploying"].data
    assert "log_tail" not in by_type["training_job.deploying"].data
    del failed_p, done_p, quiet_p, quiet_j


def test_an_unreadable_log_never_stops_the_event(
    baseten: Sandbox, settings: Settings, insights: JobInsights
) -> None:
    _, job_id = seed(baseten, "TRAINING_JOB_FAILED")
    baseten.add_fault(path=r"/logs$", status=500)
    sink = Recorder()
    poll(settings, make_client(settings), sink, None, explain=insights.event_details)
    [event] = sink.events
    assert event.type == "training_job.failed" and event.data["log_tail"] is None
    assert event.data["training_job_id"] == job_id


def test_job_from_baseten_stays_the_same_shape() -> None:
    job = job_from_baseten(
        {"id": "j", "training_project_id": "p", "current_status": "TRAINING_JOB_RUNNING"},
        "https://app.baseten.co",
    )
    assert "progress" not in job.model_dump()  # the list routes stay as cheap as before


def test_answers_match_their_documented_schemas(baseten: Sandbox, insights: JobInsights) -> None:
    from finetune_api.edge.openapi import openapi_document
    from finetune_api.insights.schemas import LogPage, MetricsAnswer

    project_id, job_id = seed(baseten)
    baseten.synthesize_logs(job_id, steps=100, seconds=60, validation=True, nodes=2)
    MetricsAnswer.model_validate(insights.metrics(project_id, job_id, metrics_query({})))
    LogPage.model_validate(insights.logs(project_id, job_id, log_query({"limit": "5"})))
    paths = openapi_document()["paths"]
    assert {"/jobs/{project_id}/{job_id}/logs", "/jobs/{project_id}/{job_id}/metrics"} <= set(paths)
    metrics = paths["/jobs/{project_id}/{job_id}/metrics"]["get"]
    assert set(metrics["responses"]["200"]["content"]) == {"application/json", "image/svg+xml"}
    names = {p["name"] for p in paths["/jobs/{project_id}/{job_id}/logs"]["get"]["parameters"]}
    assert names == {"project_id", "job_id", "since", "until", "limit", "order", "level", "cursor"}
