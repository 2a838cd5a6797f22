"""Nothing secret or caller-supplied comes back (issue 21, items 10-15).

Baseten's ``error_message`` scrubbed everywhere a Job goes, credential shapes
(detect-secrets' patterns plus ours), no echo of an unknown checkpoint id,
forged cursors refused before Baseten sees them, ASCII digits only in dates,
and a paging loop that repeats its original query beside the cursor.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from finetune_api.baseten.log_pages import Cursor, Position
from finetune_api.core.errors import InvalidRequestError, NotFoundError
from finetune_api.core.logs import scrub_text
from finetune_api.core.schemas import job_from_baseten
from finetune_api.core.settings import Settings
from finetune_api.insights.job_insights import JobInsights, log_query, metrics_query
from finetune_api.jobs.service import JobService
from finetune_api.notify.events import EventSink, status_event
from finetune_api.notify.webhooks import DeliveryResult
from finetune_api.polling.poller import poll
from sandbox import Sandbox
from tests.poll_fixtures import (  # noqa: F401 - fixtures
    API_KEY,
    LogLines,
    baseten_fixture,
    baseten_server_fixture,
    make_client,
    make_settings,
    service_logs_fixture,
)

HF = "hf_" + "Ab3" * 10
LOGS_ROUTE = "GET /v1/training_projects/<project_id>/jobs/<job_id>/logs"


@pytest.fixture
def settings(baseten: Sandbox) -> Settings:
    return make_settings(baseten, baseten_max_retries=0, baseten_api_key=API_KEY)


def seed(sb: Sandbox, status: str = "TRAINING_JOB_COMPLETED") -> tuple[str, str]:
    seeded = sb.seed(status=status)
    return seeded["projects"][0]["id"], seeded["job_ids"][0]


class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def emit(self, event: Any) -> DeliveryResult:
        self.events.append(event)
        return DeliveryResult(event.id, delivered=False, failed=False)


# -- 10: Baseten's error_message ---------------------------------------------------------


def test_a_jobs_error_message_is_scrubbed_everywhere_it_goes(
    baseten: Sandbox, settings: Settings, service_logs: LogLines
) -> None:
    project_id, job_id = seed(baseten, "TRAINING_JOB_RUNNING")
    secret_text = f"KeyError: BASETEN_API_KEY={API_KEY} token {HF}"
    baseten.set_status(job_id, "TRAINING_JOB_FAILED", error_message=secret_text)
    client = make_client(settings)
    service = JobService(settings, client, pusher=lambda _: {})
    got = service.get(project_id, job_id).model_dump()
    [listed] = [job.model_dump() for job in service.list(project_id, [], 20)]
    sink = Recorder()
    poll(settings, client, sink, None)
    [event] = sink.events
    EventSink(settings, None).emit(event)  # the real sink: logs it (no webhook set)
    for where in (got, listed, event.data):
        message = where["error_message"]
        assert API_KEY not in message and HF not in message
        assert message.startswith("KeyError: BASETEN_API_KEY=[REDACTED]")
    # The ERROR log line the failed event writes, too.
    assert HF not in service_logs.text and API_KEY not in service_logs.text
    [line] = [r for r in service_logs.records() if r["message"] == "event training_job.failed"]
    assert line["severity"] == "ERROR"
    assert line["error_message"].startswith("KeyError: BASETEN_API_KEY=[REDACTED] token [REDACTED]")
    # Nothing else changed: the job is still the failed job it was.
    assert baseten.state._jobs[job_id].error_message == secret_text
    client.close()


def test_the_event_log_line_scrubs_error_messages_built_anywhere(service_logs: LogLines) -> None:
    job = job_from_baseten(
        {
            "id": "j1",
            "training_project_id": "p1",
            "current_status": "TRAINING_JOB_FAILED",
            "error_message": f"hf token {HF} refused",
        },
        "https://app.baseten.co",
    )
    event = status_event(job, None)
    assert event.data["error_message"] == "hf token [REDACTED] refused"


# -- 11: credential shapes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("api_key=abcdef123456", "api_key=[REDACTED]"),
        ("curl -H 'x-api-key: 0123456789abcdef'", "curl -H 'x-api-key: [REDACTED]'"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZDEy", "Authorization: Basic [REDACTED]"),
        ("Authorization: Bearer sk-live-0123456789abcdef", "Authorization: Bearer [REDACTED]"),
        ("WANDB_API_KEY=0123456789abcdef0123456789abcdef01234567", "WANDB_API_KEY=[REDACTED]"),
        ("pushed with ghp_" + "a1B2" * 9, "pushed with [REDACTED]"),
        (
            "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "AWS_SECRET_ACCESS_KEY=[REDACTED]",
        ),
        (
            'aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"',
            'aws_secret_access_key = "[REDACTED]"',
        ),
        ("id AKIAIOSFODNN7EXAMPLE", "id [REDACTED]"),
        ("legacy api_org_abcdefghijklmnopqrstuvwxyzAB", "legacy [REDACTED]"),
        (f"mytoken{HF}", "mytoken[REDACTED]"),
        (f"HF_TOKEN={HF}", "HF_TOKEN=[REDACTED]"),
        ("https://user:hunter2pass@example.com/x", "https://user:[REDACTED]@example.com/x"),
        ('{"api_key": "abcdefgh1234"}', '{"api_key": "[REDACTED]"}'),
        ("password: hunter22", "password: [REDACTED]"),
        ("whsec_c2VjcmV0c2VjcmV0c2VjcmV0", "[REDACTED]"),
    ],
)
def test_each_credential_form_is_redacted(text: str, expected: str) -> None:
    assert scrub_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        'FT_METRICS {"type":"step","step":1,"tokens_per_second":5321.4,"loss":0.5}',
        "total_tokens: 12345678 max_tokens=131072 learning_rate=0.0002",
        "Saving checkpoint-120 to /tmp/out (epoch 3)",
        "Downloading model.safetensors: 100%|██████████| 4.97G/4.97G",
    ],
)
def test_ordinary_training_lines_are_left_alone(text: str) -> None:
    assert scrub_text(text) == text


# -- 13 and 15: cursors ----------------------------------------------------------------


def _forge(**changes: Any) -> str:
    payload = {"v": 1, "j": "", "o": "asc", "n": 0, "k": 0, "lo": 0, "hi": None, "l": None}
    payload.update(changes)
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "changes",
    [
        {"n": 10**30},
        {"lo": 10**30, "n": 10**30},
        {"hi": 10**30},
        {"k": 10**12},
        {"n": 5, "lo": 10, "hi": 20},  # before its own range
        {"n": 50, "lo": 10, "hi": 20},  # past its own range
        {"lo": 30, "hi": 20, "n": 25},  # an empty range
    ],
)
def test_a_forged_cursor_is_a_400_and_reaches_no_one(
    baseten: Sandbox, settings: Settings, changes: dict[str, Any]
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        log_query({"cursor": _forge(**changes)})
    assert caught.value.status == 400
    assert caught.value.details == [
        {"location": "query.cursor", "reason": "invalid or corrupted cursor"}
    ]
    assert baseten.stats()["by_route"].get(LOGS_ROUTE, 0) == 0


def test_far_future_bounds_never_reach_baseten(baseten: Sandbox, settings: Settings) -> None:
    project_id, job_id = seed(baseten)
    baseten.append_logs(job_id, ["one", "two"])
    time.sleep(0.01)
    client = make_client(settings)
    asked: list[int] = []
    original = client.get_logs

    def recording(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        asked.append(kwargs["end_ms"])
        return original(*args, **kwargs)

    client.get_logs = recording  # type: ignore[method-assign]
    insights = JobInsights(settings, client)
    far = "9999-12-31T23:59:59Z"
    page = insights.logs(project_id, job_id, log_query({"order": "desc", "until": far}))
    assert [line["message"] for line in page["data"]] == ["two", "one"]
    # A cursor this API could have made, positioned in 2199: read from now, not from then.
    late = Cursor("desc", Position(7_000_000_000 * 10**9), 0, 7_000_000_000 * 10**9, None)
    tag = insights_tag(project_id, job_id)
    cursor = Cursor(late.order, late.position, late.lo_ns, late.hi_ns, None, tag).encode()
    again = insights.logs(project_id, job_id, log_query({"cursor": cursor}))
    assert [line["message"] for line in again["data"]] == ["two", "one"]
    assert asked and max(asked) <= time.time_ns() // 1_000_000 + 1
    client.close()


def insights_tag(project_id: str, job_id: str) -> str:
    from finetune_api.baseten.log_pages import job_tag

    return job_tag(project_id, job_id)


def test_a_cursor_this_api_hands_out_still_decodes() -> None:
    cursor = Cursor("desc", Position(15 * 10**17, 3), 10**17, 2 * 10**18, "INFO", "abc")
    assert Cursor.decode(cursor.encode()) == cursor


def test_paging_with_the_original_query_plus_the_cursor(
    baseten: Sandbox, settings: Settings
) -> None:
    project_id, job_id = seed(baseten)
    baseten.append_logs(
        job_id,
        [{"message": f"line {i}", "level": "WARNING"} for i in range(25)],
    )
    time.sleep(0.01)
    client = make_client(settings)
    insights = JobInsights(settings, client)
    since = "2000-01-01T00:00:00Z"
    query = {"since": since, "order": "asc", "level": "warning", "limit": "10"}
    seen: list[str] = []
    page = insights.logs(project_id, job_id, log_query(query))
    seen += [line["message"] for line in page["data"]]
    while page["next_cursor"]:
        # The common loop (AIP-158, the OpenAI SDK): the same query, plus the cursor.
        page = insights.logs(
            project_id, job_id, log_query({**query, "cursor": page["next_cursor"]})
        )
        seen += [line["message"] for line in page["data"]]
    assert seen == [f"line {i}" for i in range(25)]
    # A parameter that differs from what the cursor holds is still refused, by name.
    first = insights.logs(project_id, job_id, log_query(query))
    for name, other in [("since", "2001-01-01T00:00:00Z"), ("order", "desc"), ("level", "error")]:
        with pytest.raises(InvalidRequestError) as caught:
            log_query({**query, name: other, "cursor": first["next_cursor"]})
        assert [d["location"] for d in caught.value.details or []] == [f"query.{name}"]
    client.close()


# -- 14: ASCII digits ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "2026-01-01T00:00:00.\u0661\u0662\u0663Z",  # Arabic-Indic digits in the fraction
        "2026-01-01T00:00:00.\uff11\uff12Z",  # full-width digits
        "\uff12\uff10\uff12\uff16-01-01T00:00:00Z",
        "2026-01-01T0\u0660:00:00Z",
    ],
)
def test_dates_take_ascii_digits_only(value: str) -> None:
    for parse in (log_query, metrics_query):
        with pytest.raises(InvalidRequestError) as caught:
            parse({"since": value})
        assert caught.value.details == [
            {
                "location": "query.since",
                "reason": "must be an RFC 3339 date-time, e.g. 2026-01-01T00:00:00Z",
            }
        ]
        assert value not in caught.value.message


# -- 12: no echo of an unknown checkpoint id ---------------------------------------------


def test_an_unknown_checkpoint_id_is_not_echoed(baseten: Sandbox, settings: Settings) -> None:
    from finetune_api.core.schemas import DeploymentRequest
    from finetune_api.serving.deployments import DeploymentService

    seeded = baseten.seed(status="TRAINING_JOB_COMPLETED", checkpoints_per_job=1)
    project_id, job_id = seeded["projects"][0]["id"], seeded["job_ids"][0]
    client = make_client(settings)

    class NoDeployer:
        def instance_types(self) -> list[Any]:
            raise AssertionError("never reached")

        def create(self, request: dict[str, Any]) -> dict[str, Any]:
            raise AssertionError("never reached")

    service = DeploymentService(settings, client, NoDeployer())
    planted = "<script>alert(1)</script>"
    with pytest.raises(NotFoundError) as caught:
        service.deploy(project_id, job_id, DeploymentRequest(checkpoint_id=planted))
    assert caught.value.message == "checkpoint not found in the training job"
    assert planted not in json.dumps(caught.value.body)
    assert baseten.state.deployments.all()["deployments"] == []
    client.close()
