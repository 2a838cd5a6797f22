"""The poll behind ``poll_jobs``: what changed on Baseten since the last poll.

With the saved poll state (``polling/state.py``), a poll costs what the *active*
jobs cost, not the job history:

1. one search for the unfinished statuses (the active set);
2. the project list, and for a project whose newest job changed, its jobs read
   newest first as a stream, stopped at the one seen last time (a job may be
   created and finish between two polls);
3. one read of each tracked job that left the active set;
4. one checkpoints read per running job, or per job whose status changed.

A job whose status differs from the one last reported gets one
``training_job.<status>`` event (an untracked job: when its ``updated_at`` lies
in the window ``[since, until]``); each checkpoint created inside the window
gets one ``training_job.checkpoint_created`` event. Events already delivered
(the state keeps their ids) are not sent again; failed ones are, by the next
poll. Without usable state, every ``POLL_FULL_SWEEP_HOURS``, and for an
explicit ``since``, the poll reads every job instead (a *full sweep*, parsed as
a stream, so memory stays bounded). Per-job work runs concurrently
(``POLL_CONCURRENCY`` workers) under the client's shared rate limit; one job
failing never stops the others.
A job whose status changed to failed or deploy_failed costs 1 more read (its
newest log lines, for the event's ``log_tail``); one that completed, the pages
of its log (at most 200), for its ``summary`` (``explain``). A job that failed
costs 1 more Baseten read for its own request (``GET …/download``, plus the
archive from storage), and, when it asked for a retry and has attempts left, the
retry (``polling/retry.py``). With ``PROJECT_NAME_PREFIX``, jobs of other
projects are left out before anything else is read about them: the poll sees
what the routes see.
"""

from __future__ import annotations

import contextvars
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydantic import ValidationError

from finetune_api.core.decoding import decode_json
from finetune_api.core.errors import (
    InvalidRequestError,
    NotFoundError,
    QuotaExceededError,
    ServiceError,
    UpstreamUnavailableError,
)
from finetune_api.core.logs import context, get_logger, log
from finetune_api.core.schemas import (
    ACTIVE_STATUSES,
    NOT_STARTED_STATUSES,
    TERMINAL_STATUSES,
    Job,
    PollReport,
    PollRequest,
    checkpoint_from_baseten,
    job_from_baseten,
)
from finetune_api.core.settings import Settings
from finetune_api.core.timestamps import parse_time
from finetune_api.jobs.scope import JobScope
from finetune_api.notify.events import (
    CHECKPOINT_CREATED,
    Event,
    checkpoint_event,
    emit_guarded,
    retried_event,
    rfc3339,
    status_event,
)
from finetune_api.notify.webhooks import DeliveryResult
from finetune_api.polling.ledger import PollLedger
from finetune_api.polling.retry import FAILED, RetryPlan, RetryWatch, is_permanent
from finetune_api.polling.state import StateStore, TrackedJob

_logger = get_logger("poller")

COMPLETED = "TRAINING_JOB_COMPLETED"
#: Jobs created this long before the last poll are read again (clock skew, slow indexing).
NEW_JOB_OVERLAP = timedelta(minutes=10)
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

    def search_jobs(
        self, *, statuses: Sequence[str] | None = None, newest_first: bool = True
    ) -> list[dict[str, Any]]: ...
    def stream_search_jobs(
        self, *, project_id: str | None = None, newest_first: bool = True
    ) -> AbstractContextManager[Iterator[dict[str, Any]]]: ...
    def list_projects(self) -> list[dict[str, Any]]: ...
    def get_job(self, project_id: str, job_id: str) -> dict[str, Any]: ...
    def list_checkpoints(self, project_id: str, job_id: str) -> list[dict[str, Any]]: ...


# What a status-change event adds beyond the Job (a summary, a log tail); see
# JobInsights.event_details. Called only for jobs whose status changed.
Explainer = Callable[[Job], dict[str, Any]]


class EventEmitter(Protocol):
    def emit(self, event: Event) -> DeliveryResult: ...


class ServingWatch(Protocol):
    """Deploy on completion and deployment events (see serving.watch)."""

    def run(self, sink: Any, changed_jobs: list[dict[str, Any]], until: datetime) -> Any: ...


@dataclass
class _JobOutcome:
    events: int = 0
    delivered: int = 0
    webhook_failures: int = 0
    already_delivered: int = 0
    failed: bool = False


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
    store: StateStore | None = None,
    retry: RetryWatch | None = None,
) -> PollReport:
    """Emit the events of ``[since, until=now]``; a Baseten failure listing jobs raises.

    With a ``store`` the poll reads only active jobs and those that left the
    active set, and skips events it already delivered; without one (or when
    the state is missing, unreadable or stale, every ``POLL_FULL_SWEEP_HOURS``,
    and for an explicit ``since``) it reads every job, as a stream.
    """
    started = time.perf_counter()
    until = _aware(now) if now is not None else datetime.now(UTC)
    lookback = timedelta(seconds=settings.poll_lookback_seconds)
    replay = since is not None
    since = _aware(since) if since is not None else until - lookback
    if since > until:
        raise InvalidRequestError(
            "since is after the end of the window",
            details=[{"location": "since", "reason": "must not be in the future"}],
        )

    ledger = PollLedger(store, settings.resolved_api_url)
    # The poll sees what the routes see (PROJECT_NAME_PREFIX), and nothing else.
    scope = JobScope(settings.project_name_prefix, client)
    sweep_reason = _sweep_reason(settings, ledger, until, replay)
    if sweep_reason is None:
        work, unreadable = _incremental_work(client, ledger, until, scope)
    else:
        work, unreadable = _sweep_work(client, ledger, since, until, scope)

    run = _PollRun(
        settings,
        client,
        sink,
        since,
        until,
        ledger,
        replay=replay,
        serving=serving is not None,
        explain=explain,
        retry=retry,
        scope=scope,
    )
    outcomes: list[_JobOutcome] = []
    if work:
        workers = min(settings.poll_concurrency, len(work))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="poll") as pool:
            # Each task runs in a copy of this context so log lines keep the request's trace.
            futures = [pool.submit(contextvars.copy_context().run, run.job, item) for item in work]
            outcomes = [future.result() for future in futures]
    ledger.finish(until=until, lookback=lookback, full_sweep=sweep_reason is not None)

    served = None
    if serving is not None:
        served = serving.run(sink, run.changed_jobs(), until)
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
        events_already_delivered=sum(o.already_delivered for o in outcomes),
        full_sweep=sweep_reason is not None,
        sweep_reason=sweep_reason,
        state_saved=ledger.saved,
        state_problem=ledger.save_problem,
    )
    failed = report.jobs_failed or (store is not None and not report.state_saved)
    log(
        _logger,
        logging.ERROR if failed else logging.INFO,
        "poll finished",
        **report.model_dump(),
    )
    return report


@dataclass
class _Work:
    """One job to look at: its search row, or None when it must be read (it left the active set)."""

    job_id: str
    raw: dict[str, Any] | None
    tracked: TrackedJob | None


def _sweep_reason(
    settings: Settings, ledger: PollLedger, until: datetime, replay: bool
) -> str | None:
    """Why this poll must read every job, or None when the saved state suffices."""
    if replay:
        return "since given: replaying a window"
    previous = ledger.previous
    if previous is None:
        return ledger.problem if ledger.store is None else f"state {ledger.problem}"
    last = parse_time(previous.until)
    if (
        last is None
        or last > until
        or until - last > timedelta(seconds=settings.poll_lookback_seconds)
    ):
        return "state older than the lookback"
    swept = parse_time(previous.full_sweep_at)
    if swept is None or until - swept >= timedelta(hours=settings.poll_full_sweep_hours):
        return f"scheduled (every {settings.poll_full_sweep_hours:g} h)"
    return None


def _readable(raw: dict[str, Any]) -> bool:
    """False (logged) for a job whose Baseten timestamps cannot be read: that job's failure."""
    if unreadable_time(raw.get("updated_at")) or unreadable_time(raw.get("created_at")):
        log(
            _logger,
            logging.ERROR,
            "skipped a job whose Baseten timestamps cannot be read",
            training_project_id=raw.get("training_project_id"),
            training_job_id=raw.get("id"),
        )
        return False
    return True


def _sweep_work(
    client: JobReader, ledger: PollLedger, since: datetime, until: datetime, scope: JobScope
) -> tuple[list[_Work], int]:
    """Every job, read as a stream; kept: unfinished ones, changed ones, and those owed a notice.

    Also answers how many jobs were skipped for unreadable timestamps.
    """
    work: list[_Work] = []
    unreadable = 0
    newest: dict[str, str] = {}  # each project's newest job: its first row, newest first
    with client.stream_search_jobs(newest_first=True) as rows:
        # The answer is ordered by created_at, which bounds nothing about
        # updated_at (an old job may have just finished), so each row is looked at.
        for raw in rows:
            if not scope.allows(raw):
                continue
            if not _readable(raw):
                unreadable += 1
                continue
            created = parse_time(raw.get("created_at"))
            if created is not None and created > until:
                continue  # born after the window: the next poll reports it
            job_id = str(raw.get("id"))
            project = raw.get("training_project_id")
            if project is not None:
                newest.setdefault(str(project), job_id)
            tracked = ledger.tracked(job_id)
            status = raw.get("current_status")
            updated = parse_time(raw.get("updated_at"))
            if status in TERMINAL_STATUSES and updated is not None and updated < since:
                unchanged = tracked is None or tracked.status == status
                if unchanged and (tracked is None or tracked.owed_since is None):
                    continue
            work.append(_Work(job_id, raw, tracked))
    ledger.see_projects(newest)
    return work, unreadable


def _incremental_work(
    client: JobReader, ledger: PollLedger, until: datetime, scope: JobScope
) -> tuple[list[_Work], int]:
    """Active jobs, jobs created since the last poll, and tracked jobs that left the active set."""
    previous = ledger.previous
    assert previous is not None
    rows: dict[str, dict[str, Any]] = {}
    unreadable = 0
    for raw in client.search_jobs(statuses=list(ACTIVE_STATUSES), newest_first=True):
        if not scope.allows(raw):
            continue
        if not _readable(raw):
            unreadable += 1
            continue
        created = parse_time(raw.get("created_at"))
        if created is None or created <= until:
            rows[str(raw.get("id"))] = raw
    # A job may be created and finish between two polls, never seen active. The
    # project list names each project's newest job: where it changed, read that
    # project's jobs newest first, as a stream, down to the one seen last time.
    last = parse_time(previous.until)
    assert last is not None
    cutoff = last - NEW_JOB_OVERLAP
    newest: dict[str, str] = {}
    for project in client.list_projects():
        latest = project.get("latest_job")
        project_id = str(project.get("id"))
        if not isinstance(latest, Mapping) or latest.get("id") is None:
            continue
        if not scope.allows_project_name(project.get("name")):
            continue
        latest_id = newest[project_id] = str(latest["id"])
        known = previous.projects.get(project_id)
        created = parse_time(latest.get("created_at"))
        if latest_id == known or (known is None and created is not None and created < cutoff):
            continue
        with client.stream_search_jobs(project_id=project_id, newest_first=True) as jobs:
            for raw in jobs:
                job_id = str(raw.get("id"))
                if not scope.allows(raw):
                    continue
                if not _readable(raw):
                    unreadable += 1
                    continue
                created = parse_time(raw.get("created_at"))
                if job_id == known or (created is not None and created < cutoff):
                    break
                if created is None or created <= until:
                    rows.setdefault(job_id, raw)
    ledger.see_projects(newest)
    work = [_Work(job_id, raw, ledger.tracked(job_id)) for job_id, raw in rows.items()]
    work += [
        _Work(job_id, None, tracked)
        for job_id, tracked in previous.jobs.items()
        if job_id not in rows
    ]
    return work, unreadable


class _PollRun:
    """One poll's per-job work, shared by its worker threads.

    For each job: read it if it left the active set, decide which events it
    owes (:meth:`status_events`, then its checkpoints), emit those not already
    delivered, and tell the ledger what to remember about it.

    When Baseten fails for many jobs in a row (an outage: each read would spend
    its whole retry budget), the remaining jobs skip their reads; their status
    events, known from the search, are still emitted.
    """

    def __init__(
        self,
        settings: Settings,
        client: JobReader,
        sink: EventEmitter,
        since: datetime,
        until: datetime,
        ledger: PollLedger,
        *,
        replay: bool = False,
        serving: bool = False,
        explain: Explainer | None = None,
        retry: RetryWatch | None = None,
        scope: JobScope | None = None,
    ) -> None:
        self.settings = settings
        self.retry = retry
        self.scope = scope or JobScope(settings.project_name_prefix, client)
        self.explain = explain
        self.client = client
        self.sink = sink
        self.since = since
        self.until = until
        self.ledger = ledger
        self.replay = replay
        self.serving = serving
        self._changed: list[dict[str, Any]] = []
        self.lookback = timedelta(seconds=settings.poll_lookback_seconds)
        self.give_up_after = max(5, settings.poll_concurrency)
        self._lock = threading.Lock()
        self._failures_in_a_row = 0
        self._gave_up = False

    def changed_jobs(self) -> list[dict[str, Any]]:
        """Jobs whose status was reported or changed inside the window (for the serving watch)."""
        with self._lock:
            return list(self._changed)

    def job(self, item: _Work) -> _JobOutcome:
        outcome = _JobOutcome()
        try:
            self._job(item, outcome)
        except Exception as error:  # noqa: BLE001 - one job must never stop the poll
            log(_logger, logging.ERROR, "a job could not be polled", error=repr(error))
            outcome.failed = True
            if item.tracked is not None:
                self.ledger.track(item.job_id, item.tracked)
        return outcome

    def _job(self, item: _Work, outcome: _JobOutcome) -> None:
        raw = item.raw if item.raw is not None else self._read(item, outcome)
        if raw is None:
            return
        if not self.scope.allows(raw):
            # Outside PROJECT_NAME_PREFIX (e.g. named in a planted state): no event,
            # no checkpoint read, no archive, and not tracked any more.
            return
        try:
            job = job_from_baseten(raw, self.settings.baseten_remote_url)
        except Exception as error:  # noqa: BLE001 - one malformed job must not stop the poll
            log(_logger, logging.ERROR, "skipped a job Baseten described oddly", error=repr(error))
            outcome.failed = True
            if item.tracked is not None:
                self.ledger.track(item.job_id, item.tracked)
            return

        with context(
            training_project_id=job.training_project_id, training_job_id=job.training_job_id
        ):
            updated = parse_time(job.updated_at)
            status_in_window = updated is not None and self.since <= updated <= self.until
            tracked = item.tracked
            if tracked is not None:
                report_status = tracked.status != job.baseten_status or (
                    self.replay and status_in_window
                )
            else:
                report_status = status_in_window

            if report_status or status_in_window:
                with self._lock:
                    self._changed.append(raw)
            timed: list[tuple[datetime, int, Event]] = []
            plan: RetryPlan | None = None
            retry_problem: str | None = None
            if (
                self.retry is not None
                and job.baseten_status == FAILED
                and (report_status or status_in_window)
            ):
                plan, retry_problem = self._retry_plan(raw)
            if report_status:
                moment = updated or self.until
                extra = plan.details() if plan is not None else None
                timed += [(moment, 1, event) for event in self.status_events(job, extra)]

            checkpoints: list[dict[str, Any]] = []
            failure: str | None = None
            # A job still waiting to run, whose status did not change, cannot
            # have made a checkpoint: skip that request.
            if report_status or status_in_window or job.baseten_status not in NOT_STARTED_STATUSES:
                checkpoints, failure = self._checkpoints(
                    job.training_project_id, job.training_job_id
                )
            for entry in checkpoints:
                if unreadable_time(entry.get("created_at")):
                    failure = failure or "a checkpoint's created_at cannot be read"
                    continue
                created = parse_time(entry.get("created_at"))
                if created is None or not self.since <= created <= self.until:
                    continue
                # A checkpoint stamped with its job's final status comes first.
                timed.append((created, 0, checkpoint_event(job, checkpoint_from_baseten(entry))))

            status_failed = False
            for _, _, event in sorted(timed, key=lambda entry: (entry[0], entry[1])):
                if not self._emit(event, outcome):
                    status_failed |= event.type != CHECKPOINT_CREATED

            if plan is not None and plan.attempts_left > 0:
                known = checkpoints if failure is None else None
                retry_problem, retry_failed = self._retry(job, raw, plan, known, outcome)
                status_failed |= retry_failed
            if retry_problem is not None:
                outcome.failed = True
            if failure is not None:
                outcome.failed = True
                log(
                    _logger,
                    logging.ERROR,
                    "could not read a job's checkpoints; they wait for the next poll",
                    reason=failure,
                )
            self._remember(
                item,
                job.training_project_id,
                job.baseten_status,
                status_failed,
                owed=failure is not None or outcome.webhook_failures > 0,
                # The serving watch retries a deploy on completion while the
                # completion is inside the window: keep such a job in view.
                keep=(self.serving and status_in_window and job.baseten_status == COMPLETED)
                # A retry that could not start yet is tried again by the next poll.
                or retry_problem is not None,
            )

    def status_events(self, job: Job, extra: dict[str, Any] | None = None) -> list[Event]:
        """The events of ``job`` having reached its current status.

        The one place a status change becomes events: add to it rather than
        around it. ``explain`` adds a summary or a log tail (one read);
        ``extra`` adds more (a failed job's ``retry``).
        """
        details = {**(self._details(job) or {}), **(extra or {})}
        return [status_event(job, details or None)]

    def _retry_plan(self, raw: dict[str, Any]) -> tuple[RetryPlan | None, str | None]:
        """What the failed job's own request says about retrying it (one read, remembered)."""
        assert self.retry is not None
        try:
            return self.retry.plan(raw), None
        except Exception as error:  # noqa: BLE001 - the next poll tries again
            reason = (
                f"{error.type}: {error.message}"
                if isinstance(error, ServiceError)
                else f"unexpected {type(error).__name__}"
            )
            log(
                _logger,
                logging.ERROR,
                "could not read a failed job's request to retry it; the next poll tries again",
                reason=reason,
            )
            return None, reason

    def _retry(
        self,
        job: Job,
        raw: dict[str, Any],
        plan: RetryPlan,
        checkpoints: list[dict[str, Any]] | None,
        outcome: _JobOutcome,
    ) -> tuple[str | None, bool]:
        """Start the failed job again and emit ``training_job.retried``.

        Answers (why it could not start, or None; whether the event's delivery failed).
        """
        assert self.retry is not None
        try:
            new = self.retry.retry(raw, plan, checkpoints)
        except Exception as error:  # noqa: BLE001 - the next poll tries again
            reason = (
                f"{error.type}: {error.message}"
                if isinstance(error, ServiceError)
                else f"unexpected {type(error).__name__}"
            )
            if is_permanent(error):
                # Remembered in the retry's claim: no later poll tries again.
                log(
                    _logger,
                    logging.ERROR,
                    "a failed job cannot be retried as it stands; no later poll tries again",
                    reason=reason,
                    attempt=plan.next_attempt,
                    max_attempts=plan.max_attempts,
                )
                outcome.failed = True
                return None, False
            quota = isinstance(error, QuotaExceededError)  # TEAM_LIMITS: wait, never pass
            log(
                _logger,
                logging.WARNING if quota else logging.ERROR,
                "the team is at its TEAM_LIMITS; a later poll retries the failed job"
                if quota
                else "could not retry a failed job; the next poll tries again",
                reason=reason,
                attempt=plan.next_attempt,
                max_attempts=plan.max_attempts,
            )
            return reason, False
        if new is None:
            return None, False  # another poll holds the retry, or it was refused before
        event = retried_event(job, new, attempt=plan.next_attempt, max_attempts=plan.max_attempts)
        return None, not self._emit(event, outcome)

    def _remember(
        self,
        item: _Work,
        project_id: str,
        status: str,
        status_failed: bool,
        *,
        owed: bool,
        keep: bool = False,
    ) -> None:
        """What the next poll must know about this job (nothing, once it is finished and told)."""
        previous = item.tracked
        reported = (previous.status if previous else None) if status_failed else status
        if status not in TERMINAL_STATUSES or owed or keep:
            owed_since = None
            if owed:
                owed_since = (previous.owed_since if previous else None) or rfc3339(self.until)
                first = parse_time(owed_since)
                if status in TERMINAL_STATUSES and first and self.until - first > self.lookback:
                    log(_logger, logging.ERROR, "gave up notifying a finished job", status=status)
                    return
            self.ledger.track(item.job_id, TrackedJob(project_id, reported, owed_since))

    def _read(self, item: _Work, outcome: _JobOutcome) -> dict[str, Any] | None:
        """The current job of a tracked job that left the active set (one read)."""
        tracked = item.tracked
        assert tracked is not None
        with self._lock:
            gave_up = self._gave_up
        try:
            if gave_up:
                raise UpstreamUnavailableError("skipped: Baseten failed for too many jobs in a row")
            raw = self.client.get_job(tracked.project, item.job_id)
        except NotFoundError:
            log(
                _logger,
                logging.WARNING,
                "a tracked job is gone from Baseten; forgetting it",
                training_job_id=item.job_id,
            )
            self._count(failed=False)
            return None
        except Exception as error:  # noqa: BLE001 - counted and logged; retried next poll
            transient = not isinstance(error, ServiceError) or error.transient
            if not gave_up:
                self._count(failed=transient)
            outcome.failed = True
            self.ledger.track(item.job_id, tracked)
            log(
                _logger,
                logging.ERROR,
                "could not read a job that left the active set; it waits for the next poll",
                training_job_id=item.job_id,
                reason=error.message if isinstance(error, ServiceError) else type(error).__name__,
            )
            return None
        self._count(failed=False)
        return raw

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

    def _emit(self, event: Event, outcome: _JobOutcome) -> bool:
        """Log and deliver ``event`` unless it was delivered before; False when delivery failed."""
        if not self.replay and self.ledger.already_sent(event.id):
            outcome.already_delivered += 1
            return True
        outcome.events += 1
        result = emit_guarded(self.sink, event)
        if result.failed:
            outcome.webhook_failures += 1
            return False
        if result.delivered:
            outcome.delivered += 1
        self.ledger.record_sent(event, delivered=result.delivered)
        return True


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


__all__ = ["TERMINAL_STATUSES", "parse_since", "parse_time", "poll"]
