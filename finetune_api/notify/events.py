"""Job events: what they look like, their stable ids, and where they go.

An event is ``{"id", "type", "timestamp", "data"}``. Its id is derived from
what happened (a job reaching a status, a checkpoint appearing, a submission),
never from when it was seen, so the same fact polled twice or delivered again
carries the same id and receivers can dedupe on ``webhook-id``.

:class:`EventSink` writes one structured log line per event and, when
``WEBHOOK_URL`` is set, delivers it signed (see :mod:`.webhooks`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from finetune_api.core.errors import ConfigurationError
from finetune_api.core.logs import get_logger, log
from finetune_api.core.schemas import Checkpoint, Deployment, Job
from finetune_api.core.settings import Settings
from finetune_api.core.teams import DEFAULT_TEAM
from finetune_api.notify.webhooks import DeliveryResult, WebhookSender

_logger = get_logger("events")

STATUS_PREFIX = "training_job."
CHECKPOINT_CREATED = "training_job.checkpoint_created"
SUBMITTED = "training_job.submitted"
DEPLOYED = "training_job.deployed"
DEPLOYMENT_FAILED = "training_job.deployment_failed"
RETRIED = "training_job.retried"
DEPLOYMENT_PREFIX = "deployment."
# Events about a job that ended badly are logged at ERROR so alerting can key on severity.
ERROR_STATUSES = frozenset({"failed", "deploy_failed"})

_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,100}\Z")


class Event(BaseModel):
    """One event, exactly as logged and as the webhook body."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="stable for the same (job, status) or (job, checkpoint); no '.'")
    type: str = Field(description="training_job.<status>, .checkpoint_created or .submitted")
    timestamp: str = Field(description="RFC 3339 time of what happened")
    data: dict[str, Any] = Field(description="the Job object (plus checkpoint / submission)")

    def _field(self, name: str) -> str | None:
        value = self.data.get(name)
        nested = self.data.get("job")  # training_job.retried: the new job
        if value is None and isinstance(nested, dict):
            value = nested.get(name)
        return str(value) if value is not None else None

    @property
    def project_id(self) -> str | None:
        return self._field("training_project_id")

    @property
    def job_id(self) -> str | None:
        return self._field("training_job_id")

    def body(self) -> str:
        """The compact JSON body sent to the webhook (and signed)."""
        return self.model_dump_json()


def _token(value: str) -> str:
    """``value`` if it is safe inside an event id, else a stable digest of it."""
    if _SAFE_TOKEN.match(value):
        return value
    return "h" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:24]


def event_id(job_id: str, *parts: str) -> str:
    """``evt_<job>_<part>…``: only ``A-Z a-z 0-9 _ -``, never a ``.``."""
    return "_".join(["evt", _token(job_id), *(_token(part) for part in parts)])


def _now() -> str:
    return rfc3339(datetime.now(UTC))


def rfc3339(moment: datetime) -> str:
    """UTC, ``Z``-suffixed RFC 3339."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _job_data(job: Job | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(job, Job):
        return job.model_dump(mode="json")
    return dict(job)


def status_event(job: Job, details: Mapping[str, Any] | None = None) -> Event:
    """``training_job.<status>``: the job reached ``job.status``.

    ``details`` (e.g. ``summary`` for completed, ``log_tail`` for failed) are added to ``data``.
    """
    data = _job_data(job)
    if details:
        data.update(details)
    return Event(
        id=event_id(job.training_job_id, job.status),
        type=f"{STATUS_PREFIX}{job.status}",
        timestamp=job.updated_at or _now(),
        data=data,
    )


def checkpoint_event(job: Job, checkpoint: Checkpoint) -> Event:
    """``training_job.checkpoint_created``: the Job plus ``checkpoint``."""
    data = _job_data(job)
    data["checkpoint"] = checkpoint.model_dump(mode="json")
    return Event(
        id=event_id(job.training_job_id, "checkpoint", checkpoint.checkpoint_id),
        type=CHECKPOINT_CREATED,
        timestamp=checkpoint.created_at or job.updated_at or _now(),
        data=data,
    )


def submitted_event(
    job: Job | Mapping[str, Any],
    *,
    idempotency_key: str | None,
    message_id: str | None = None,
) -> Event:
    """``training_job.submitted``: emitted by the submit path, for new jobs and replays alike."""
    data = _job_data(job)
    data["idempotency_key"] = idempotency_key
    if message_id is not None:
        data["message_id"] = message_id
    job_id = str(data["training_job_id"])
    return Event(
        id=event_id(job_id, "submitted"),
        type=SUBMITTED,
        timestamp=data.get("created_at") or _now(),
        data=data,
    )


def deployment_event(deployment: Deployment) -> Event:
    """``deployment.<status>``: a deployment this service created reached ``status``."""
    data = deployment.model_dump(mode="json")
    data["idempotent_replay"] = False
    return Event(
        id=event_id(str(deployment.deployment_id), "deployment", deployment.status),
        type=f"{DEPLOYMENT_PREFIX}{deployment.status}",
        timestamp=(deployment.created_at if deployment.status == "building" else None) or _now(),
        data=data,
    )


def deployed_event(deployment: Deployment) -> Event:
    """``training_job.deployed``: the job's final checkpoint was deployed on completion."""
    return Event(
        id=event_id(str(deployment.training_job_id), "deployed"),
        type=DEPLOYED,
        timestamp=deployment.created_at or _now(),
        data=deployment.model_dump(mode="json"),
    )


def deployment_failed_event(
    job: Job, *, reason: dict[str, Any], attempt: int, max_attempts: int
) -> Event:
    """``training_job.deployment_failed``: a deploy on completion failed (it may be retried)."""
    data = _job_data(job)
    data.update({"reason": reason, "attempt": attempt, "max_attempts": max_attempts})
    return Event(
        id=event_id(job.training_job_id, "deployment_failed", str(attempt)),
        type=DEPLOYMENT_FAILED,
        timestamp=_now(),
        data=data,
    )


def retried_event(failed_job: Job, job: Job, *, attempt: int, max_attempts: int) -> Event:
    """``training_job.retried``: the poll started a failed job again (``job``, the new one).

    One per failure: its id names the failed job, so every poll and instance
    that sees the same failure produces the same event.
    """
    new = job.model_copy(update={"idempotent_replay": False})
    return Event(
        id=event_id(failed_job.training_job_id, "retried"),
        type=RETRIED,
        timestamp=job.created_at or _now(),
        data={
            "failed_job": _job_data(failed_job),
            "job": _job_data(new),
            "attempt": attempt,
            "max_attempts": max_attempts,
        },
    )


class SecretSource(Protocol):
    """What the sink needs from :class:`~finetune_api.core.secrets.SecretStore`."""

    def get(self, field: str, *, required: bool = True) -> str | None: ...


class EventSink:
    """Logs every event and, when ``WEBHOOK_URL`` is set, delivers it. Thread-safe.

    The webhook secret is read through ``secrets`` on every delivery, so a
    rotated secret is picked up; a secret that cannot be read fails that
    delivery (logged), never the caller.
    """

    def __init__(
        self,
        settings: Settings,
        secrets: SecretSource | None,
        *,
        sender: WebhookSender | None = None,
        team_of: Callable[[Any], str | None] | None = None,
        name_of: Callable[[str], str | None] | None = None,
    ) -> None:
        self._settings = settings
        self._secrets = secrets
        self._sender = sender
        # data.team of every event: the team of the job's project (see with_team).
        self._team_of = team_of
        self._name_of = name_of  # a project id's name, when no event told it yet
        self._project_names: dict[str, str] = {}
        self._lock = threading.Lock()
        self._background: Any = None

    @property
    def webhooks_enabled(self) -> bool:
        return self._sender is not None or bool(self._settings.webhook_url)

    def _get_sender(self) -> WebhookSender | None:
        if self._sender is not None or not self._settings.webhook_url:
            return self._sender
        with self._lock:
            if self._sender is None:
                self._sender = WebhookSender.from_settings(self._settings, self._secret)
            return self._sender

    def _secret(self) -> str:
        if self._secrets is None:
            raise ConfigurationError("WEBHOOK_URL is set but no secret store was given")
        value = self._secrets.get("webhook_secret", required=True)
        if not value:
            raise ConfigurationError("WEBHOOK_SECRET is empty")
        return str(value)

    def with_team(self, event: Event) -> Event:
        """``event`` with ``data.team``: whose job (or deployment) it is.

        From the project name in the event; a deployment event names only the
        project id, looked up among the projects seen in earlier events of this
        process, else asked of Baseten once (``name_of``); ``null`` when no
        configured team owns the project (a job made before teams: the admin's).
        """
        if "team" in event.data:
            return event
        name = event._field("training_project_name")
        project_id = event.project_id
        if name is not None and project_id is not None:
            with self._lock:
                self._project_names[project_id] = name
                while len(self._project_names) > 10000:
                    self._project_names.pop(next(iter(self._project_names)))
        elif name is None and project_id is not None:
            with self._lock:
                name = self._project_names.get(project_id)
            if name is None and self._name_of is not None and self._team_of is not None:
                try:
                    name = self._name_of(project_id)
                except Exception:  # noqa: BLE001 - the event goes out either way
                    name = None
        if self._team_of is None:
            team: str | None = DEFAULT_TEAM
        else:
            team = self._team_of(name)
        return event.model_copy(update={"data": {**event.data, "team": team}})

    def emit(self, event: Event) -> DeliveryResult:
        """Log ``event`` (one line) and deliver it if a webhook is configured."""
        event = self.with_team(event)
        self._log(event)
        sender = self._get_sender()
        if sender is None:
            return DeliveryResult(event.id, delivered=False, failed=False)
        return sender.send(event.id, event.body())

    def emit_later(self, event: Event) -> None:
        """Log ``event`` now; deliver it on a background thread (see :mod:`.notices`).

        Never blocks and never raises for the webhook: the caller's latency does
        not depend on the receiver.
        """
        event = self.with_team(event)
        self._log(event)
        if not self.webhooks_enabled:
            return
        with self._lock:
            if self._background is None:
                from finetune_api.notify.notices import BackgroundDelivery

                self._background = BackgroundDelivery(
                    self._deliver_later,
                    describe=lambda item: {"event_id": item.id, "event_type": item.type},
                )
            background = self._background
        background.put(event)

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for background deliveries; the number still pending."""
        background = self._background
        return background.flush(timeout) if background is not None else 0

    def _deliver_later(self, event: Event) -> None:
        sender = self._get_sender()
        if sender is not None:
            sender.send(event.id, event.body())

    def _log(self, event: Event) -> None:
        status = event.type.removeprefix(STATUS_PREFIX)
        failed = status in ERROR_STATUSES or event.type.endswith("failed")
        level = logging.ERROR if failed else logging.INFO
        fields: dict[str, Any] = {
            "event_id": event.id,
            "event_type": event.type,
            "training_project_id": event.project_id,
            "training_job_id": event.job_id,
        }
        checkpoint = event.data.get("checkpoint")
        if isinstance(checkpoint, Mapping):
            fields["checkpoint_id"] = checkpoint.get("checkpoint_id")
        if event.data.get("deployment_id"):
            fields["model_id"] = event.data.get("model_id")
            fields["deployment_id"] = event.data.get("deployment_id")
        if status in ERROR_STATUSES:
            fields["error_message"] = event.data.get("error_message")
        log(_logger, level, f"event {event.type}", **fields)

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()


__all__ = [
    "CHECKPOINT_CREATED",
    "DEPLOYED",
    "DEPLOYMENT_FAILED",
    "SUBMITTED",
    "DeliveryResult",
    "Event",
    "EventSink",
    "SecretSource",
    "checkpoint_event",
    "deployed_event",
    "deployment_event",
    "deployment_failed_event",
    "event_id",
    "rfc3339",
    "status_event",
    "submitted_event",
]


class _Emitter(Protocol):
    def emit(self, event: Event) -> DeliveryResult: ...


def emit_guarded(sink: _Emitter, event: Event) -> DeliveryResult:
    """``sink.emit(event)``, where a sink that raises counts as a failed delivery, logged.

    The sink should never raise; a poll must not die of it if it does.
    """
    try:
        return sink.emit(event)
    except Exception as error:  # noqa: BLE001 - see the docstring
        log(_logger, logging.ERROR, "emitting an event failed", error=repr(error))
        return DeliveryResult(event.id, delivered=False, failed=True)
