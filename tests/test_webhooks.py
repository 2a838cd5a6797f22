"""Signed webhook delivery and events, against a real local receiver that verifies signatures."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from standardwebhooks import Webhook

from finetune_api.core.errors import SecretUnavailableError
from finetune_api.core.schemas import Checkpoint, Job
from finetune_api.core.settings import load_settings
from finetune_api.notify.events import (
    Event,
    EventSink,
    checkpoint_event,
    event_id,
    status_event,
    submitted_event,
)
from finetune_api.notify.webhooks import WebhookSender
from loopback.webhook_receiver import WebhookReceiver, unused_url
from tests.poll_fixtures import (  # noqa: F401 - fixtures
    WEBHOOK_SECRET,
    LogLines,
    receiver_fixture,
    service_logs_fixture,
)


def _job(status: str = "running", **changes: object) -> Job:
    values: dict[str, object] = {
        "training_project_id": "proj1",
        "training_project_name": "ft-demo",
        "training_job_id": "job1",
        "job_name": "demo",
        "status": status,
        "baseten_status": f"TRAINING_JOB_{status.upper()}",
        "error_message": None,
        "created_at": "2026-01-01T00:00:00.000000Z",
        "updated_at": "2026-01-01T00:05:00.000000Z",
        "dashboard_url": "https://app.baseten.co/training/proj1/logs/job1",
    }
    values.update(changes)
    return Job.model_validate(values)


def _sender(url: str, secret: str = WEBHOOK_SECRET, **options: object) -> WebhookSender:
    values: dict[str, object] = {
        "timeout_seconds": 2.0,
        "max_attempts": 3,
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
    }
    values.update(options)
    return WebhookSender(url, lambda: secret, **values)  # type: ignore[arg-type]


def _body(event_type: str = "training_job.running") -> str:
    return json.dumps({"id": "evt_job1_running", "type": event_type, "data": {"x": 1}})


# -- events -------------------------------------------------------------------


def test_event_ids_are_stable_and_dot_free() -> None:
    running = status_event(_job())
    assert running.id == "evt_job1_running"
    assert running.type == "training_job.running"
    assert running.timestamp == "2026-01-01T00:05:00.000000Z"
    # Seen again later (other updated_at): same fact, same id.
    assert status_event(_job(updated_at="2026-01-01T01:00:00Z")).id == running.id
    assert status_event(_job("completed")).id == "evt_job1_completed"

    checkpoint = Checkpoint(checkpoint_id="checkpoint-1", created_at="2026-01-01T00:06:00Z")
    first = checkpoint_event(_job(), checkpoint)
    assert first.id == "evt_job1_checkpoint_checkpoint-1"
    assert first.data["checkpoint"]["checkpoint_id"] == "checkpoint-1"
    assert first.data["training_job_id"] == "job1"
    assert checkpoint_event(_job("completed"), checkpoint).id == first.id

    dotted = Checkpoint(checkpoint_id="ckpt.v1/step.100")
    other = Checkpoint(checkpoint_id="ckpt-v1-step-100")
    ids = {checkpoint_event(_job(), dotted).id, checkpoint_event(_job(), other).id}
    assert len(ids) == 2
    assert all("." not in value for value in ids)
    assert checkpoint_event(_job(), dotted).id == checkpoint_event(_job(), dotted).id
    assert "." not in event_id("job.with.dots", "weird status")


def test_submitted_event() -> None:
    event = submitted_event(_job("created"), idempotency_key="order-42", message_id="m-1")
    assert event.id == "evt_job1_submitted"
    assert event.type == "training_job.submitted"
    assert event.data["idempotency_key"] == "order-42"
    assert event.data["message_id"] == "m-1"
    assert event.data["status"] == "created"
    plain = submitted_event(_job("created"), idempotency_key=None)
    assert plain.id == event.id
    assert "message_id" not in plain.data
    assert plain.data["idempotency_key"] is None


def test_event_body_round_trips() -> None:
    event = status_event(_job("failed", error_message="CUDA out of memory"))
    parsed = json.loads(event.body())
    assert set(parsed) == {"id", "type", "timestamp", "data"}
    assert Event.model_validate(parsed) == event


# -- sender -----------------------------------------------------------------------


def test_delivers_signed_event(receiver: WebhookReceiver) -> None:
    body = _body()
    result = _sender(receiver.url).send("evt_job1_running", body)
    assert result.delivered and not result.failed
    assert result.attempts == 1 and result.status == 200
    (attempt,) = receiver.attempts
    assert attempt.verified, attempt.reason
    assert attempt.headers["webhook-id"] == "evt_job1_running"
    assert attempt.headers["content-type"] == "application/json"
    assert attempt.headers["webhook-signature"].startswith("v1,")
    assert abs(int(attempt.headers["webhook-timestamp"]) - time.time()) < 60
    assert attempt.body == body.encode()
    # The receiver's check is real: the same bytes under another id do not verify.
    forged = {**attempt.headers, "webhook-id": "evt_other"}
    with pytest.raises(Exception, match="signature"):
        Webhook(WEBHOOK_SECRET).verify(attempt.body, forged)


def test_wrong_secret_is_rejected_by_the_receiver(receiver: WebhookReceiver) -> None:
    other = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    result = _sender(receiver.url, secret=other).send("evt_1", _body())
    assert result.failed and not result.delivered
    assert result.status == 401
    assert result.attempts == 1  # 4xx other than 408/429 is not retried
    assert receiver.events == []
    assert receiver.rejections and "signature" in receiver.rejections[0].lower()


def test_500_then_200_is_delivered_on_retry(receiver: WebhookReceiver) -> None:
    receiver.respond_with(500)
    result = _sender(receiver.url).send("evt_retry", _body())
    assert result.delivered and result.attempts == 2
    attempts = receiver.attempts_for("evt_retry")
    assert [a.status for a in attempts] == [500, 200]
    assert all(a.verified for a in attempts)
    assert len(receiver.unique_events) == 1


@pytest.mark.parametrize("status", [408, 429, 502])
def test_retryable_statuses(receiver: WebhookReceiver, status: int) -> None:
    receiver.respond_with(status, status)
    result = _sender(receiver.url).send("evt_x", _body())
    assert result.delivered and result.attempts == 3


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422])
def test_client_errors_are_not_retried(receiver: WebhookReceiver, status: int) -> None:
    receiver.respond_with(status)
    result = _sender(receiver.url).send("evt_x", _body())
    assert result.failed and result.attempts == 1 and result.status == status
    assert len(receiver.attempts) == 1


def test_redirect_is_a_failure_and_not_followed(receiver: WebhookReceiver) -> None:
    receiver.respond_with(307)
    result = _sender(receiver.url).send("evt_x", _body())
    assert result.failed and result.status == 307 and result.attempts == 1
    assert [a.path for a in receiver.attempts] == ["/hooks"]


def test_410_stops_delivery(receiver: WebhookReceiver) -> None:
    receiver.respond_with(410)
    sender = _sender(receiver.url)
    first = sender.send("evt_a", _body())
    assert first.failed and first.attempts == 1 and first.status == 410
    later = sender.send("evt_b", _body())
    assert later.failed and later.attempts == 0
    assert len(receiver.attempts) == 1


def test_all_attempts_failing_never_raises(receiver: WebhookReceiver) -> None:
    receiver.respond_with(500, 503, 500, 200)
    result = _sender(receiver.url, max_attempts=3).send("evt_x", _body())
    assert result.failed and result.attempts == 3 and result.status == 500


def test_receiver_down_is_a_failure_not_an_exception() -> None:
    result = _sender(unused_url()).send("evt_x", _body())
    assert result.failed and result.attempts == 3
    assert result.error == "could not connect to the receiver"


def test_a_failing_receiver_trips_the_breaker(receiver: WebhookReceiver) -> None:
    now = [0.0]
    sender = _sender(
        receiver.url,
        max_attempts=2,
        clock=lambda: now[0],
        breaker_failures=3,
        breaker_pause_seconds=30,
    )
    receiver.default_status = 503
    results = [sender.send(f"evt_{i}", _body()) for i in range(6)]
    # Attempts are counted: the third failed attempt opens the breaker mid-delivery.
    assert [r.attempts for r in results] == [2, 1, 0, 0, 0, 0]
    assert all(r.failed for r in results)
    assert "3 delivery attempts in a row failed" in (results[2].error or "")
    assert len(receiver.attempts) == 3

    # After the pause, one probe; the receiver is back, so deliveries resume.
    now[0] += 31
    receiver.default_status = 200
    assert sender.send("evt_probe", _body()).delivered
    assert sender.send("evt_next", _body()).delivered

    # Tripped again; this time the probe fails and deliveries pause again at once.
    receiver.default_status = 500
    assert [sender.send(f"evt_f{i}", _body()).attempts for i in range(3)] == [2, 1, 0]
    now[0] += 31
    # The probe after a pause is one attempt, not a delivery's worth (issue 12).
    assert sender.send("evt_probe_2", _body()).attempts == 1
    assert sender.send("evt_skipped", _body()).attempts == 0


def test_slow_receiver_times_out_and_retries(receiver: WebhookReceiver) -> None:
    receiver.delay(1.0)
    started = time.monotonic()
    result = _sender(receiver.url, timeout_seconds=0.2, max_attempts=2).send("evt_x", _body())
    assert result.failed and result.attempts == 2
    assert result.error == "no answer within 0.2 s"
    assert time.monotonic() - started < 1.5


def test_secret_failures_never_raise(receiver: WebhookReceiver) -> None:
    def unavailable() -> str:
        raise SecretUnavailableError("Secret Manager unreachable for WEBHOOK_SECRET_SECRET_ID")

    result = WebhookSender(receiver.url, unavailable, max_attempts=1).send("evt_x", _body())
    assert result.failed and "Secret Manager" in (result.error or "")
    malformed = _sender(receiver.url, secret="whsec_not base64!!", max_attempts=1)
    assert malformed.send("evt_x", _body()).failed
    assert receiver.attempts == []


def test_concurrent_sends(receiver: WebhookReceiver) -> None:
    sender = _sender(receiver.url)
    ids = [f"evt_job{i}_running" for i in range(40)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: sender.send(i, _body()), ids))
    assert all(r.delivered for r in results)
    assert set(receiver.unique_events) == set(ids)
    assert receiver.rejections == []


# -- sink -------------------------------------------------------------------------


def test_sink_without_webhook_only_logs(service_logs: LogLines) -> None:
    sink = EventSink(load_settings(webhook_url=None), secrets=None)
    assert not sink.webhooks_enabled
    result = sink.emit(status_event(_job("failed", error_message="CUDA out of memory")))
    assert not result.delivered and not result.failed
    (line,) = [r for r in service_logs.records() if r["logger"] == "finetune_api.events"]
    assert line["severity"] == "ERROR"
    assert line["event_type"] == "training_job.failed"
    assert line["event_id"] == "evt_job1_failed"
    assert line["training_project_id"] == "proj1"
    assert line["training_job_id"] == "job1"
    assert line["error_message"] == "CUDA out of memory"

    sink.emit(status_event(_job("running")))
    info = [r for r in service_logs.records() if r.get("event_type") == "training_job.running"]
    assert info and info[0]["severity"] == "INFO"


def test_sink_delivers_with_secret_from_settings(
    receiver: WebhookReceiver, service_logs: LogLines
) -> None:
    from finetune_api.core.secrets import SecretStore

    settings = load_settings(webhook_url=receiver.url, webhook_secret=WEBHOOK_SECRET)
    sink = EventSink(settings, SecretStore(settings))
    event = checkpoint_event(_job(), Checkpoint(checkpoint_id="checkpoint-7"))
    result = sink.emit(event)
    assert result.delivered
    # The sink adds data.team (no team configured: "default"), as every event has.
    expected = json.loads(event.body())
    expected["data"]["team"] = "default"
    assert receiver.events == [expected]
    assert WEBHOOK_SECRET not in service_logs.text


def test_sink_is_thread_safe_building_its_sender(receiver: WebhookReceiver) -> None:
    settings = load_settings(webhook_url=receiver.url, webhook_secret=WEBHOOK_SECRET)

    class Secrets:
        calls = 0
        lock = threading.Lock()

        def get(self, field: str, *, required: bool = True) -> str:
            with self.lock:
                self.calls += 1
            return WEBHOOK_SECRET

    sink = EventSink(settings, Secrets())
    events = [status_event(_job(training_job_id=f"j{i}")) for i in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(sink.emit, events))
    assert all(r.delivered for r in results)
    assert len(receiver.unique_events) == 16
