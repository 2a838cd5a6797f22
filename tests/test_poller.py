"""The poll against the local Baseten sandbox, delivering to a real verifying receiver."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from finetune_api.core.errors import InvalidRequestError, UpstreamUnavailableError
from finetune_api.core.schemas import PollReport
from finetune_api.core.secrets import SecretStore
from finetune_api.core.settings import Settings
from finetune_api.notify.events import EventSink
from finetune_api.notify.webhooks import WebhookSender
from finetune_api.polling.poller import parse_since, parse_time, poll
from loopback.webhook_receiver import WebhookReceiver, unused_url
from sandbox import COMPLETED, FAILED, RUNNING, Sandbox
from tests.poll_fixtures import (  # noqa: F401 - fixtures
    WEBHOOK_SECRET,
    LogLines,
    baseten_fixture,
    baseten_server_fixture,
    make_client,
    make_settings,
    receiver_fixture,
    service_logs_fixture,
)


def _settings(sb: Sandbox, receiver_url: str | None, **overrides: Any) -> Settings:
    if receiver_url is not None:
        overrides.setdefault("webhook_url", receiver_url)
        overrides.setdefault("webhook_secret", WEBHOOK_SECRET)
    return make_settings(sb, **overrides)


def _fast_sink(settings: Settings, url: str, secret: str = WEBHOOK_SECRET) -> EventSink:
    """A sink whose retries back off for milliseconds, not seconds."""
    sender = WebhookSender(
        url, lambda: secret, max_attempts=3, backoff_initial=0.01, backoff_max=0.05
    )
    return EventSink(settings, secrets=None, sender=sender)


def _run(settings: Settings, sink: EventSink, **kwargs: Any) -> PollReport:
    return poll(settings, make_client(settings), sink, kwargs.pop("since", None), **kwargs)


def _seed(sb: Sandbox, projects: int = 1, jobs: int = 1, **spec: Any) -> list[str]:
    job_ids: list[str] = sb.seed(projects=projects, jobs_per_project=jobs, **spec)["job_ids"]
    return job_ids


def _types(events: list[dict[str, Any]]) -> list[str]:
    return sorted(event["type"] for event in events)


# -- the life of a job ----------------------------------------------------------


def test_job_lifecycle_yields_exactly_the_expected_events(
    baseten: Sandbox, receiver: WebhookReceiver
) -> None:
    settings = _settings(baseten, receiver.url)
    sink = EventSink(settings, SecretStore(settings))
    (job_id,) = _seed(baseten)

    first = _run(settings, sink)
    assert first.events == 1 and first.webhooks_delivered == 1 and first.jobs_checked == 1
    assert _types(receiver.events) == ["training_job.created"]

    receiver.clear()
    baseten.set_status(job_id, RUNNING)
    baseten.add_checkpoint(job_id)
    second = _run(settings, sink)
    assert _types(receiver.events) == ["training_job.checkpoint_created", "training_job.running"]
    assert second.events == second.webhooks_delivered == 2
    checkpoint = next(e for e in receiver.events if e["type"].endswith("checkpoint_created"))
    assert checkpoint["data"]["checkpoint"]["checkpoint_id"] == "checkpoint-1"
    assert checkpoint["data"]["training_job_id"] == job_id
    # The status event comes before the checkpoint that followed it.
    assert receiver.events[0]["type"] == "training_job.running"

    receiver.clear()
    baseten.set_status(job_id, COMPLETED)
    _run(settings, sink)
    # Still in the window, the checkpoint repeats under the same id.
    assert _types(receiver.events) == ["training_job.checkpoint_created", "training_job.completed"]
    again = next(e for e in receiver.events if e["type"].endswith("checkpoint_created"))
    assert again["id"] == checkpoint["id"]

    completed = next(e for e in receiver.events if e["type"] == "training_job.completed")
    assert completed["id"] == f"evt_{job_id}_completed"
    assert completed["data"]["status"] == "completed"
    assert completed["data"]["baseten_status"] == COMPLETED
    assert completed["data"]["training_project_name"] == "seed-0"
    assert completed["data"]["dashboard_url"].startswith("https://app.baseten.co/training/")
    assert all("." not in e["id"] for e in receiver.events)
    assert receiver.rejections == []
    assert all(a.verified for a in receiver.attempts)


def test_same_window_polled_twice_gives_the_same_ids(
    baseten: Sandbox, receiver: WebhookReceiver
) -> None:
    settings = _settings(baseten, receiver.url)
    sink = _fast_sink(settings, receiver.url)
    job_ids = _seed(baseten, projects=2, jobs=2)
    baseten.set_status(job_ids[0], RUNNING)
    baseten.add_checkpoint(job_ids[0])
    baseten.set_status(job_ids[1], FAILED, "boom")
    now = datetime.now(UTC) + timedelta(seconds=1)

    _run(settings, sink, now=now)
    first = [(a.webhook_id, a.body) for a in receiver.attempts]
    receiver.clear()
    _run(settings, sink, now=now)
    second = [(a.webhook_id, a.body) for a in receiver.attempts]

    assert len(first) == 5  # 4 status events + 1 checkpoint
    assert sorted(first) == sorted(second)  # same ids and same bodies


def test_failed_job_carries_its_error_message(
    baseten: Sandbox, receiver: WebhookReceiver, service_logs: LogLines
) -> None:
    settings = _settings(baseten, receiver.url)
    (job_id,) = _seed(baseten)
    baseten.set_status(job_id, FAILED, "CUDA out of memory")
    report = _run(settings, _fast_sink(settings, receiver.url))
    (event,) = receiver.events
    assert event["type"] == "training_job.failed"
    assert event["data"]["error_message"] == "CUDA out of memory"
    assert event["data"]["status"] == "failed"
    assert report.webhooks_delivered == 1
    (line,) = [r for r in service_logs.records() if r.get("event_type") == "training_job.failed"]
    assert line["severity"] == "ERROR"
    assert line["training_job_id"] == job_id


# -- webhook trouble never fails the poll ----------------------------------------


def test_receiver_500_then_200_is_delivered_after_a_retry(
    baseten: Sandbox, receiver: WebhookReceiver
) -> None:
    settings = _settings(baseten, receiver.url)
    (job_id,) = _seed(baseten)
    receiver.respond_with(500)
    report = _run(settings, _fast_sink(settings, receiver.url))
    assert report.webhooks_delivered == 1 and report.webhooks_failed == 0
    assert [a.status for a in receiver.attempts_for(f"evt_{job_id}_created")] == [500, 200]


def test_receiver_down_the_poll_still_completes(baseten: Sandbox) -> None:
    url = unused_url()
    settings = _settings(baseten, url)
    _seed(baseten, projects=2, jobs=3)
    report = _run(settings, _fast_sink(settings, url))
    assert report.jobs_checked == 6
    assert report.events == 6
    assert report.webhooks_delivered == 0
    assert report.webhooks_failed == 6


def test_wrong_webhook_secret_is_caught_by_the_receiver(
    baseten: Sandbox, receiver: WebhookReceiver
) -> None:
    import base64
    import secrets

    wrong = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    settings = _settings(baseten, receiver.url)
    _seed(baseten, jobs=2)
    report = _run(settings, _fast_sink(settings, receiver.url, secret=wrong))
    assert report.webhooks_failed == 2 and report.webhooks_delivered == 0
    assert receiver.events == []
    assert len(receiver.rejections) == 2


# -- Baseten trouble ---------------------------------------------------------------


def test_checkpoints_503_on_one_job_does_not_stop_the_others(
    baseten: Sandbox, receiver: WebhookReceiver, service_logs: LogLines
) -> None:
    settings = _settings(baseten, receiver.url, baseten_max_retries=1)
    job_ids = _seed(baseten, projects=2, jobs=2)
    for job_id in job_ids:
        baseten.set_status(job_id, RUNNING)
        baseten.add_checkpoint(job_id)
    broken = job_ids[2]
    baseten.add_fault(path=f"jobs/{broken}/checkpoints$", status=503)

    report = _run(settings, _fast_sink(settings, receiver.url))
    assert report.jobs_checked == 4
    assert report.jobs_failed == 1
    checkpoints = {
        e["data"]["training_job_id"]
        for e in receiver.events
        if e["type"] == "training_job.checkpoint_created"
    }
    assert checkpoints == set(job_ids) - {broken}
    # The broken job's status change is still reported.
    statuses = {
        e["data"]["training_job_id"] for e in receiver.events if e["type"].endswith("running")
    }
    assert statuses == set(job_ids)
    errors = [r for r in service_logs.records() if r["severity"] == "ERROR"]
    assert any(r.get("training_job_id") == broken and "checkpoints" in r["message"] for r in errors)


def test_a_baseten_outage_does_not_stall_the_poll(
    baseten: Sandbox, receiver: WebhookReceiver
) -> None:
    settings = _settings(baseten, receiver.url, baseten_max_retries=0, poll_concurrency=2)
    job_ids = _seed(baseten, projects=3, jobs=10)
    baseten.add_fault(path="checkpoints$", status=503)
    before = baseten.stats()["requests"]

    report = _run(settings, _fast_sink(settings, receiver.url))
    reads = baseten.stats()["requests"] - before - 1
    # Gives up after 5 failures in a row (plus what was already in flight)...
    assert 5 <= reads <= 5 + 2
    assert report.jobs_failed == len(job_ids) == 30
    # ...but every status change known from the search is still reported.
    assert report.events == report.webhooks_delivered == 30


def test_search_failure_fails_the_poll(baseten: Sandbox) -> None:
    settings = _settings(baseten, None, baseten_max_retries=0)
    baseten.add_fault(path="training_jobs/search$", status=429, retry_after=30)
    with pytest.raises(UpstreamUnavailableError) as caught:
        _run(settings, EventSink(settings, secrets=None))
    assert caught.value.retry_after == 30


# -- the window and what a poll costs ---------------------------------------------------


def test_empty_poll(baseten: Sandbox) -> None:
    settings = _settings(baseten, None)
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    report = _run(settings, EventSink(settings, secrets=None), now=now)
    assert report.model_dump() == {
        "since": "2026-03-01T11:30:00Z",
        "until": "2026-03-01T12:00:00Z",
        "jobs_checked": 0,
        "events": 0,
        "webhooks_delivered": 0,
        "webhooks_failed": 0,
        "duration_ms": report.duration_ms,
        "jobs_failed": 0,
        "deployments_checked": 0,
        "deployments_failed": 0,
        # Without a state store every poll reads every job and saves nothing.
        "events_already_delivered": 0,
        "full_sweep": True,
        "sweep_reason": "no state store",
        "state_saved": False,
        "state_problem": "no state store",
    }


def test_finished_jobs_outside_the_window_cost_nothing(
    baseten: Sandbox, receiver: WebhookReceiver
) -> None:
    settings = _settings(baseten, receiver.url)
    _seed(baseten, projects=2, jobs=5, status=COMPLETED, checkpoints_per_job=1)
    running = _seed(baseten, projects=1, jobs=2, status=RUNNING, name_prefix="live")
    # The window starts with this checkpoint, after every job's last change.
    since = parse_time(baseten.add_checkpoint(running[0])["created_at"])
    before = baseten.stats()["requests"]

    report = _run(settings, _fast_sink(settings, receiver.url), since=since)
    # One search, then one checkpoints read per unfinished job; nothing for the 10 finished.
    assert baseten.stats()["requests"] - before == 1 + 2
    assert report.jobs_checked == 2
    assert _types(receiver.events) == ["training_job.checkpoint_created"]
    assert receiver.events[0]["data"]["training_job_id"] == running[0]


def test_window_bounds(baseten: Sandbox, receiver: WebhookReceiver) -> None:
    settings = _settings(baseten, receiver.url)
    before_seed = datetime.now(UTC)
    _seed(baseten)
    sink = _fast_sink(settings, receiver.url)
    # A window that ended before the job existed reports nothing.
    report = _run(settings, sink, since=before_seed - timedelta(hours=1), now=before_seed)
    assert report.events == 0 and report.jobs_checked == 0
    # A window that starts after its last change reports no status, only checks it.
    updated = parse_time(baseten.jobs()[0]["job"]["updated_at"])
    assert updated is not None
    report = _run(settings, sink, since=updated + timedelta(microseconds=1))
    assert report.events == 0 and report.jobs_checked == 1
    with pytest.raises(InvalidRequestError):
        _run(settings, sink, since=datetime.now(UTC), now=datetime.now(UTC) - timedelta(hours=1))


# -- parse_since ----------------------------------------------------------------------


def test_parse_since_accepts() -> None:
    expected = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_since(None) is None
    assert parse_since(b"") is None
    assert parse_since("  ") is None
    assert parse_since({}) is None
    assert parse_since({"since": None}) is None
    assert parse_since({"since": "2026-01-02T03:04:05Z"}) == expected
    assert parse_since(b'{"since": "2026-01-02T04:04:05+01:00"}') == expected
    assert parse_since('{"since": "2026-01-02t03:04:05.250z"}') == expected.replace(
        microsecond=250000
    )


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-02"}, "since"),
        ({"since": "2026-01-02T03:04:05"}, "since"),  # no time zone
        ({"since": "2026-13-02T03:04:05Z"}, "since"),
        ({"since": 1767323045}, "since"),
        ({"since": "2026-01-02T03:04:05Z", "until": "x"}, "until"),
        (["2026-01-02T03:04:05Z"], "body"),
        ({"since": "2999-01-01T00:00:00Z"}, "since"),
    ],
)
def test_parse_since_rejects(body: Any, location: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_since(body)
    assert caught.value.status == 400
    assert caught.value.details and caught.value.details[0]["location"] == location


def test_parse_since_rejects_bad_bytes() -> None:
    with pytest.raises(InvalidRequestError, match="UTF-8"):
        parse_since(b"\xff\xfe")
    with pytest.raises(InvalidRequestError, match="JSON"):
        parse_since(b"{since:")


def test_jobs_waiting_to_run_cost_no_checkpoint_read(baseten: Sandbox) -> None:
    settings = _settings(baseten, None)
    sink = EventSink(settings, SecretStore(settings))
    waiting, running = _seed(baseten, jobs=2)
    baseten.set_status(running, RUNNING)
    now = datetime.now(UTC) + timedelta(hours=2)  # both changes are outside the window
    before = baseten.stats()["by_route"]
    report = _run(settings, sink, now=now, since=now - timedelta(minutes=5))
    after = baseten.stats()["by_route"]
    route = "GET /v1/training_projects/<project_id>/jobs/<job_id>/checkpoints"
    assert report.jobs_checked == 2 and report.events == 0
    assert after.get(route, 0) - before.get(route, 0) == 1  # only the running job's
    assert waiting != running


# -- issue 12: out-of-range dates ---------------------------------------------------------


@pytest.mark.parametrize(
    "since",
    [
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "1969-12-31T23:59:59Z",
        "2026-13-01T00:00:00Z",
        "\u0662\u0660\u0662\u0666-01-01T00:00:00Z",  # Arabic-Indic digits
    ],
)
def test_parse_since_refuses_out_of_range_dates(since: str) -> None:
    with pytest.raises(InvalidRequestError):
        parse_since({"since": since})


class _OddTimestamps:
    """A Baseten answer the sandbox cannot produce (it always writes good timestamps),
    so this stand-in gives one: two jobs with unreadable times, one good running job."""

    def __init__(self, now: datetime) -> None:
        good = now.isoformat()
        self.rows = [
            {"id": "j-old", "training_project_id": "p", "current_status": "TRAINING_JOB_RUNNING",
             "created_at": good, "updated_at": "0001-01-01T00:00:00+01:00"},
            {"id": "j-bad", "training_project_id": "p", "current_status": "TRAINING_JOB_RUNNING",
             "created_at": "not a date", "updated_at": good},
            {"id": "j-ok", "training_project_id": "p", "current_status": "TRAINING_JOB_RUNNING",
             "created_at": good, "updated_at": good},
        ]  # fmt: skip
        self.checkpoint_reads: list[str] = []

    def search_jobs(self, *, newest_first: bool = True) -> list[dict[str, Any]]:
        return [dict(row) for row in self.rows]

    @contextlib.contextmanager
    def stream_search_jobs(
        self, *, newest_first: bool = True
    ) -> Iterator[Iterator[dict[str, Any]]]:
        # What a poll without state reads: the same rows, one at a time.
        yield iter(self.search_jobs(newest_first=newest_first))

    def list_checkpoints(self, project_id: str, job_id: str) -> list[dict[str, Any]]:
        self.checkpoint_reads.append(job_id)
        return [{"id": "c1", "created_at": "9999-12-31T23:59:59-01:00"}]


def test_unreadable_baseten_timestamps_fail_that_job_not_the_poll(
    baseten: Sandbox, service_logs: LogLines
) -> None:
    now = datetime.now(UTC)
    settings = _settings(baseten, None)
    client = _OddTimestamps(now - timedelta(seconds=5))
    report = poll(settings, client, EventSink(settings, None), None, now=now)
    # j-old and j-bad are counted failures; j-ok is polled and its odd checkpoint fails it too.
    assert report.jobs_checked == 1 and report.jobs_failed == 3
    assert client.checkpoint_reads == ["j-ok"]
    assert report.events == 1  # j-ok's status change


def test_a_sink_that_raises_counts_as_a_failed_delivery(caplog: pytest.LogCaptureFixture) -> None:
    from finetune_api.notify.events import Event, emit_guarded

    class Raising:
        def emit(self, event: Event) -> Any:
            raise RuntimeError("receiver exploded")

    event = Event(id="evt_j1_failed", type="training_job.failed", timestamp="t", data={})
    result = emit_guarded(Raising(), event)
    assert (result.event_id, result.delivered, result.failed) == ("evt_j1_failed", False, True)
    assert [r.getMessage() for r in caplog.records] == ["emitting an event failed"]
