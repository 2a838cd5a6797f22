"""The poll behind ``poll_jobs``: what changed on Baseten inside a time window.

One search lists the jobs of every project. A job whose ``updated_at`` lies in
the window ``[since, until]`` gets one ``training_job.<status>`` event. Jobs
that are still running, or that changed since ``since``, have their
checkpoints read, and each checkpoint created inside the window gets one
``training_job.checkpoint_created`` event. Per-job work runs concurrently
(``POLL_CONCURRENCY`` workers) under the client's shared rate limit; one job
failing never stops the others. Event ids are stable, so overlapping windows
and retried polls repeat ids rather than inventing new events.

Cost: 1 search request, plus 1 checkpoints request per job that is not
finished or changed inside the window; finished jobs outside the window cost
nothing beyond their row in the search answer. A job whose status changed to
completed, failed or deploy_failed costs 1 more: the read of its newest log
lines for the event's ``summary`` or ``log_tail`` (``explain``).
"""

from __future__ import annotations

import contextvars
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydantic import ValidationError

from .decoding import decode_json
from .errors import InvalidRequestError, ServiceError
from .events import Event, checkpoint_event, rfc3339, status_event
from .logs import context, get_logger, log
from .schemas import (
    TERMINAL_STATUSES,
    Job,
    PollReport,
    PollRequest,
    checkpoint_from_baseten,
    job_from_baseten,
)
from .settings import Settings
from .webhooks import DeliveryResult

_logger = get_logger("poller")

NOT_STARTED_STATUSES = frozenset(
    {
        "TRAINING_JOB_PENDING",
        "TRAINING_JOB_CREATED",
        "TRAINING_JOB_QUEUED",
        "TRAINING_JOB_DEPLOYING",
    }
)
# ASCII digits only (``\d`` would take any script's digits).
_RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})\Z"
)
# The earliest ``since`` a poll accepts: nothing on Baseten is older, and
# dates near year 1 or 9999 overflow once shifted to UTC or by the lookback.
EARLIEST_SINCE = datetime(1970, 1, 1, tzinfo=UTC)


class JobReader(Protocol):
    """What the poll needs from the Baseten client."""

    def search_jobs(self, *, newest_first: bool = True) -> list[dict[str, Any]]: ...
    def list_checkpoints(self, project_id: str, job_id: str) -> list[dict[str, Any]]: ...


# What a status-change event adds beyond the Job (a summary, a log tail); see
# JobInsights.event_details. Called only for jobs whose status changed.
Explainer = Callable[[Job], dict[str, Any]]


class EventEmitter(Protocol):
    def emit(self, event: Event) -> DeliveryResult: ...


class ServingWatch(Protocol):
    """Deploy on completion and deployment events (see deployment_watch)."""

    def run(self, sink: Any, changed_jobs: list[dict[str, Any]], until: datetime) -> Any: ...


@dataclass
class _JobOutcome:
    events: int = 0
    delivered: int = 0
    webhook_failures: int = 0
    failed: bool = False


def parse_time(value: Any) -> datetime | None:
    """An aware UTC datetime from Baseten's ISO 8601 text; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def unreadable_time(value: Any) -> bool:
    """True when Baseten gave a timestamp (not null or empty) that cannot be read."""
    return value not in (None, "") and parse_time(value) is None


def parse_since(body: Any, *, now: datetime | None = None) -> datetime | None:
    """The ``since`` of a poll request body (decoded JSON, text or bytes); None if absent.

    Bad input raises :class:`InvalidRequestError` with one detail per problem.
    """
    if isinstance(body, bytes | bytearray | str):
        if not body.strip():
            return None
        body = decode_json(body)
    if body is None:
        return None
    if not isinstance(body, Mapping):
        raise InvalidRequestError(
            "request body must be a JSON object",
            details=[{"location": "body", "reason": "expected a JSON object"}],
        )
    try:
        request = PollRequest.model_validate(dict(body))
    except ValidationError as error:
        details = [
            {
                "location": ".".join(str(part) for part in item["loc"]) or "body",
                "reason": "unknown field"
                if item["type"] == "extra_forbidden"
                else "must be an RFC 3339 date-time string",
            }
            for item in error.errors(include_input=False, include_url=False)
        ]
        raise InvalidRequestError("invalid poll request", details=details) from None
    if request.since is None:
        return None
    # RFC 3339 allows a lower-case t and z; fromisoformat does not.
    well_formed = _RFC3339.match(request.since) is not None
    since = parse_time(request.since.upper()) if well_formed else None
    if since is None and well_formed:
        # Shaped right, but no such moment (a 13th month, or past year 9999 in UTC).
        raise InvalidRequestError(
            "since is out of range",
            details=[{"location": "since", "reason": "must be a real date-time in range"}],
        )
    if since is None:
        raise InvalidRequestError(
            "since is not an RFC 3339 date-time",
            details=[
                {
                    "location": "since",
                    "reason": "must be an RFC 3339 date-time with a time zone, "
                    "e.g. 2026-01-01T00:00:00Z",
                }
            ],
        )
    if since < EARLIEST_SINCE:
        raise InvalidRequestError(
            "since is out of range",
            details=[{"location": "since", "reason": "must be 1970-01-01T00:00:00Z or later"}],
        )
    if since > (now or datetime.now(UTC)):
        raise InvalidRequestError(
            "since is in the future",
            details=[{"location": "since", "reason": "must not be in the future"}],
        )
    return since


def poll(
    settings: Settings,
    client: JobReader,
    sink: EventEmitter,
    since: datetime | None,
    now: datetime | None = None,
    serving: ServingWatch | None = None,
    *,
    explain: Explainer | None = None,
) -> PollReport:
    """Emit the events of ``[since, until=now]``; a Baseten failure listing jobs raises."""
    started = time.perf_counter()
    until = _aware(now) if now is not None else datetime.now(UTC)
    since = (
        _aware(since)
        if since is not None
        else until - timedelta(seconds=settings.poll_lookback_seconds)
    )
    if since > until:
        raise InvalidRequestError(
            "since is after the end of the window",
            details=[{"location": "since", "reason": "must not be in the future"}],
        )

    # The search answers every job in one unpaged list ordered by created_at,
    # which bounds nothing about updated_at (an old job may have just finished),
    # so each row is looked at; a row costs its bytes, not a request.
    work: list[tuple[dict[str, Any], bool]] = []
    unreadable = 0
    for raw in client.search_jobs(newest_first=True):
        if unreadable_time(raw.get("updated_at")) or unreadable_time(raw.get("created_at")):
            # That job's failure, counted; the poll goes on.
            unreadable += 1
            log(
                _logger,
                logging.ERROR,
                "skipped a job whose Baseten timestamps cannot be read",
                training_project_id=raw.get("training_project_id"),
                training_job_id=raw.get("id"),
            )
            continue
        updated = parse_time(raw.get("updated_at"))
        created = parse_time(raw.get("created_at"))
        if created is not None and created > until:
            continue  # born after the window: the next poll reports it
        finished = raw.get("current_status") in TERMINAL_STATUSES
        changed_since = updated is None or updated >= since
        if finished and not changed_since:
            continue
        status_in_window = updated is not None and since <= updated <= until
        work.append((raw, status_in_window))

    run = _PollRun(settings, client, sink, since, until, explain)
    outcomes: list[_JobOutcome] = []
    if work:
        workers = min(settings.poll_concurrency, len(work))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="poll") as pool:
            # Each task runs in a copy of this context so log lines keep the request's trace.
            futures = [
                pool.submit(contextvars.copy_context().run, run.job, raw, in_window)
                for raw, in_window in work
            ]
            outcomes = [future.result() for future in futures]

    served = None
    if serving is not None:
        served = serving.run(sink, [raw for raw, in_window in work if in_window], until)
    report = PollReport(
        since=rfc3339(since),
        until=rfc3339(until),
        jobs_checked=len(work),
        events=sum(o.events for o in outcomes) + (served.events if served else 0),
        webhooks_delivered=sum(o.delivered for o in outcomes) + (served.delivered if served else 0),
        webhooks_failed=sum(o.webhook_failures for o in outcomes)
        + (served.webhook_failures if served else 0),
        duration_ms=round((time.perf_counter() - started) * 1000),
        jobs_failed=sum(o.failed for o in outcomes) + unreadable,
        deployments_checked=served.deployments_checked if served else 0,
        deployments_failed=served.failed if served else 0,
    )
    log(
        _logger,
        logging.ERROR if report.jobs_failed else logging.INFO,
        "poll finished",
        **report.model_dump(),
    )
    return report


class _PollRun:
    """One poll's per-job work, shared by its worker threads.

    When Baseten fails for many jobs in a row (an outage: each read would spend
    its whole retry budget), the remaining jobs skip their checkpoint read; their
    status events, known from the search, are still emitted.
    """

    def __init__(
        self,
        settings: Settings,
        client: JobReader,
        sink: EventEmitter,
        since: datetime,
        until: datetime,
        explain: Explainer | None = None,
    ) -> None:
        self.settings = settings
        self.explain = explain
        self.client = client
        self.sink = sink
        self.since = since
        self.until = until
        self.give_up_after = max(5, settings.poll_concurrency)
        self._lock = threading.Lock()
        self._failures_in_a_row = 0
        self._gave_up = False

    def job(self, raw: dict[str, Any], status_in_window: bool) -> _JobOutcome:
        outcome = _JobOutcome()
        try:
            job = job_from_baseten(raw, self.settings.baseten_remote_url)
        except Exception as error:  # noqa: BLE001 - one malformed job must not stop the poll
            log(_logger, logging.ERROR, "skipped a job Baseten described oddly", error=repr(error))
            outcome.failed = True
            return outcome

        with context(
            training_project_id=job.training_project_id, training_job_id=job.training_job_id
        ):
            timed: list[tuple[datetime, int, Event]] = []
            if status_in_window:
                moment = parse_time(job.updated_at) or self.until
                timed.append((moment, 1, status_event(job, self._details(job))))

            checkpoints: list[dict[str, Any]] = []
            failure: str | None = None
            # A job still waiting to run, whose status did not change in the
            # window, cannot have made a checkpoint: skip that request.
            if status_in_window or job.baseten_status not in NOT_STARTED_STATUSES:
                checkpoints, failure = self._checkpoints(
                    job.training_project_id, job.training_job_id
                )
            for item in checkpoints:
                if unreadable_time(item.get("created_at")):
                    failure = failure or "a checkpoint's created_at cannot be read"
                    continue
                created = parse_time(item.get("created_at"))
                if created is None or not self.since <= created <= self.until:
                    continue
                # A checkpoint stamped with its job's final status comes first.
                timed.append((created, 0, checkpoint_event(job, checkpoint_from_baseten(item))))

            for _, _, event in sorted(timed, key=lambda entry: (entry[0], entry[1])):
                self._emit(event, outcome)

            if failure is not None:
                outcome.failed = True
                log(
                    _logger,
                    logging.ERROR,
                    "could not read a job's checkpoints; they wait for the next poll",
                    reason=failure,
                )
        return outcome

    def _details(self, job: Job) -> dict[str, Any] | None:
        """A summary or log tail for the event; at most one Baseten request, never fatal."""
        if self.explain is None:
            return None
        try:
            return self.explain(job)
        except Exception as error:  # noqa: BLE001 - the event goes out without details
            log(_logger, logging.ERROR, "could not add details to an event", error=repr(error))
            return None

    def _checkpoints(self, project_id: str, job_id: str) -> tuple[list[dict[str, Any]], str | None]:
        with self._lock:
            if self._gave_up:
                return [], "skipped: Baseten failed for too many jobs in a row"
        try:
            checkpoints = self.client.list_checkpoints(project_id, job_id)
        except ServiceError as error:
            # A job gone since the search says nothing about Baseten's health.
            self._count(failed=error.transient)
            return [], f"{error.type}: {error.message}"
        except Exception as error:  # noqa: BLE001 - counted and logged, never fatal
            self._count(failed=True)
            return [], f"unexpected {type(error).__name__}"
        self._count(failed=False)
        return checkpoints, None

    def _count(self, *, failed: bool) -> None:
        with self._lock:
            self._failures_in_a_row = self._failures_in_a_row + 1 if failed else 0
            if self._gave_up or self._failures_in_a_row < self.give_up_after:
                return
            self._gave_up = True
        log(
            _logger,
            logging.ERROR,
            "Baseten failed for too many jobs in a row; skipping the remaining checkpoint reads",
            failures_in_a_row=self.give_up_after,
        )

    def _emit(self, event: Event, outcome: _JobOutcome) -> None:
        outcome.events += 1
        try:
            result = self.sink.emit(event)
        except Exception as error:  # noqa: BLE001 - the sink should not raise; be sure
            log(_logger, logging.ERROR, "emitting an event failed", error=repr(error))
            outcome.webhook_failures += 1
            return
        if result.delivered:
            outcome.delivered += 1
        elif result.failed:
            outcome.webhook_failures += 1


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


__all__ = ["TERMINAL_STATUSES", "parse_since", "parse_time", "poll"]
