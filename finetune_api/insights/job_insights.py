"""How a job is going: its logs, its metrics, its progress, and what its events carry.

Everything here is read from Baseten at request time: the logs through exact
paging (:mod:`.log_pages`), training series from the template's own lines
(:mod:`.training_metrics`), system series from Baseten's metrics operation.

Costs, in Baseten requests:

* ``logs``: 1 job read + the pages the answer needs (usually 1).
* ``metrics``: 1 job read + every log page inside the job's life (read by
  concurrent slices), at most :data:`MAX_METRICS_REQUESTS`, + 1 metrics read; a
  finished job's answer is kept per instance (its logs no longer change), within
  :data:`CACHE_BYTES`.
* ``evaluation``: 1 job read + every log page inside the job's life (as
  ``metrics``, without its metrics read), at most :data:`MAX_METRICS_REQUESTS`;
  a finished job's answer is kept like the metrics answer.
* ``results_csv`` (``/v1`` ``result_files``' content): the same read as
  ``evaluation``; a finished job's file is kept like the metrics answer.
* ``progress`` (on ``GET /jobs/{p}/{j}``): 1 read of the newest 1,000 lines, up to
  :data:`PROGRESS_MAX_REQUESTS` when no step line is among them; none for a job
  that never started.
* ``event_details`` (a status-change event): ``failed`` / ``deploy_failed``: 1
  read of the newest lines; ``completed``: the whole log once (a job completes
  once), within :data:`MAX_METRICS_REQUESTS`; none otherwise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from finetune_api.baseten.log_pages import (
    BASETEN_MAX_LIMIT,
    LEVELS,
    MS,
    WINDOW_MS,
    Cursor,
    Line,
    LogSource,
    Position,
    job_fetch,
    job_tag,
    read_page,
    scan_parallel,
)
from finetune_api.core.errors import InvalidRequestError, ServiceError
from finetune_api.core.logs import get_logger, log, scrub_text
from finetune_api.core.query import bounded_int
from finetune_api.core.schemas import TERMINAL_STATUSES, Job, short_status
from finetune_api.core.settings import Settings
from finetune_api.insights.training_metrics import (
    TrainingSeries,
    downsample_series,
    evaluation_answer,
    final_summary,
    ns_to_rfc3339,
    progress,
    results_csv,
    seconds_between,
    training_answer,
)
from finetune_api.jobs.scope import JobScope

_logger = get_logger("insights")

NOT_STARTED = frozenset(
    {
        "TRAINING_JOB_PENDING",
        "TRAINING_JOB_CREATED",
        "TRAINING_JOB_QUEUED",
        "TRAINING_JOB_DEPLOYING",
    }
)
COMPLETED = "TRAINING_JOB_COMPLETED"
LOG_TAIL_LINES = 50
NEWEST_LINES = 100
DEFAULT_LOG_LIMIT = 100
DEFAULT_POINTS = 500
MAX_POINTS = 10_000
# Lines may be stamped slightly before the job's created_at (clock skew), and
# trail its final status a little.
_BEFORE_CREATED_NS = 60 * 1_000_000_000
_AFTER_FINISHED_NS = 10 * 60 * 1_000_000_000
#: Baseten log requests one metrics or evaluation answer (or one completed event's
#: summary) may cost: 200,000 lines (200 full pages of 1,000), plus the first page read
#: alone and one partly filled page per concurrent slice (at most 32: see
#: ``baseten.log_pages.scan_parallel``), with room to spare. At 200 a 200,000-line job
#: (100,000 steps) could not be read at all. A longer range is a 400 asking for a
#: narrower one.
MAX_METRICS_REQUESTS = 240
#: Bytes of finished jobs' metrics answers kept per instance (as compact JSON).
CACHE_BYTES = 32 * 1024 * 1024
#: Baseten requests ``progress`` may spend looking back for the newest step line.
PROGRESS_MAX_REQUESTS = 3

# ASCII digits only: ``\d`` would take any script's digits (and int() would read them).
_RFC3339 = re.compile(
    r"^([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]([0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,9}))?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})\Z"
)


class InsightSource(LogSource, Protocol):
    def get_job(self, project_id: str, job_id: str) -> dict[str, Any]: ...
    def get_metrics(
        self, project_id: str, job_id: str, *, start_ms: int | None, end_ms: int | None
    ) -> dict[str, Any]: ...


class SecretSource(Protocol):
    def get(self, field: str, *, required: bool = True) -> str | None: ...


def scrub_log_text(text: str) -> str:
    """Known secrets, then anything shaped like a credential, replaced by ``[REDACTED]``."""
    return scrub_text(text)


def line_json(line: Line) -> dict[str, Any]:
    """CONTRACT LogLine: ``timestamp`` (RFC 3339, ns kept), ``message``, ``replica``, ``level``."""
    return {
        "timestamp": ns_to_rfc3339(line.ns),
        "message": scrub_log_text(line.message),
        "replica": line.replica,
        "level": line.level,
    }


# -- parameters -----------------------------------------------------------------------------


def _bad(name: str, reason: str, prefix: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{name} {reason}", details=[{"location": f"{prefix}{name}", "reason": reason}]
    )


def parse_time_ns(value: Any, name: str, prefix: str = "query.") -> int | None:
    """RFC 3339 text (up to 9 fraction digits kept) or an aware datetime → epoch ns."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise _bad(name, "must have a time zone", prefix)
        whole = int(value.replace(microsecond=0).timestamp())
        return whole * 1_000_000_000 + value.microsecond * 1000
    match = _RFC3339.match(value) if isinstance(value, str) else None
    if match is None:
        raise _bad(name, "must be an RFC 3339 date-time, e.g. 2026-01-01T00:00:00Z", prefix)
    day, clock, fraction, zone = match.groups()
    zone = "+00:00" if zone in ("Z", "z") else zone
    try:
        moment = datetime.fromisoformat(f"{day}T{clock}{zone}")
    except ValueError:
        raise _bad(name, "is not a valid date-time", prefix) from None
    nanos = int((fraction or "").ljust(9, "0") or 0)
    ns = int(moment.timestamp()) * 1_000_000_000 + nanos
    if ns < 0:
        raise _bad(name, "must be after 1970-01-01", prefix)
    return ns


def _int(value: Any, name: str, low: int, high: int, default: int, prefix: str) -> int:
    # An empty query value means "not given" here.
    raw = None if value == "" else value
    return bounded_int(raw, name, low, high, default, location=prefix)


@dataclass(frozen=True)
class LogQuery:
    since_ns: int | None
    until_ns: int | None
    limit: int
    order: str
    level: str | None
    cursor: Cursor | None


LOG_PARAMETERS = ("since", "until", "limit", "order", "level", "cursor")
METRICS_PARAMETERS = ("since", "until", "points", "format")


def check_unknown(values: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise InvalidRequestError(
            "unknown parameter(s): " + ", ".join(unknown),
            details=[{"location": f"{prefix}{name}", "reason": "not allowed"} for name in unknown],
        )


def log_query(values: Mapping[str, Any], prefix: str = "query.") -> LogQuery:
    """Validate the logs parameters; each bad one is a 400 naming it."""
    check_unknown(values, LOG_PARAMETERS, prefix)
    limit = _int(values.get("limit"), "limit", 1, BASETEN_MAX_LIMIT, DEFAULT_LOG_LIMIT, prefix)
    raw_cursor = values.get("cursor")
    order = values.get("order") or "asc"
    if order not in ("asc", "desc"):
        raise _bad("order", "must be asc or desc", prefix)
    level = values.get("level") or None
    if level is not None:
        level = str(level).upper()
        if level not in LEVELS:
            raise _bad("level", "must be one of " + ", ".join(LEVELS), prefix)
    since = parse_time_ns(values.get("since"), "since", prefix)
    until = parse_time_ns(values.get("until"), "until", prefix)
    if since is not None and until is not None and since > until:
        raise _bad("since", "must not be after until", prefix)
    if raw_cursor not in (None, ""):
        if not isinstance(raw_cursor, str):
            raise _bad("cursor", "must be a string", prefix)
        cursor = Cursor.decode(raw_cursor)
        # Paging by sending the original query again plus the cursor (AIP-158, the
        # OpenAI SDK) is the common loop: a parameter may repeat what the cursor
        # holds, never differ from it.
        given = {
            "order": order if values.get("order") else None,
            "level": level,
            "since": since,
            "until": until,
        }
        held = {"order": cursor.order, "level": cursor.level, "since": cursor.lo_ns}
        held["until"] = cursor.hi_ns
        clashing = [
            name for name, value in given.items() if value is not None and value != held[name]
        ]
        if clashing:
            raise InvalidRequestError(
                "the cursor was made for a different "
                + ", ".join(clashing)
                + "; repeat the original query or send only cursor and limit",
                details=[
                    {"location": f"{prefix}{name}", "reason": "differs from what the cursor holds"}
                    for name in clashing
                ],
            )
        return LogQuery(None, None, limit, cursor.order, cursor.level, cursor)
    return LogQuery(since, until, limit, order, level, None)


@dataclass(frozen=True)
class MetricsQuery:
    since_ns: int | None
    until_ns: int | None
    points: int
    svg: bool


def metrics_query(
    values: Mapping[str, Any], prefix: str = "query.", *, accept: str | None = None
) -> MetricsQuery:
    check_unknown(values, METRICS_PARAMETERS, prefix)
    points = _int(values.get("points"), "points", 2, MAX_POINTS, DEFAULT_POINTS, prefix)
    fmt = values.get("format") or None
    if fmt not in (None, "json", "svg"):
        raise _bad("format", "must be json or svg", prefix)
    since = parse_time_ns(values.get("since"), "since", prefix)
    until = parse_time_ns(values.get("until"), "until", prefix)
    if since is not None and until is not None and since > until:
        raise _bad("since", "must not be after until", prefix)
    svg = fmt == "svg" or (fmt is None and _prefers_svg(accept))
    return MetricsQuery(since, until, points, svg)


def _prefers_svg(accept: str | None) -> bool:
    """True when the Accept header asks for SVG over JSON."""
    if not accept:
        return False
    best: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        best[media.lower()] = max(best.get(media.lower(), 0.0), quality)
    svg = best.get("image/svg+xml", 0.0)
    json_q = max(best.get("application/json", 0.0), best.get("*/*", 0.0) * 0.99)
    return svg > 0 and svg > json_q


def _ns(text: Any) -> int | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return parse_time_ns(text, "timestamp")
    except InvalidRequestError:
        return None


# -- the service ----------------------------------------------------------------------------


class JobInsights:
    """Logs, metrics, progress and event details of training jobs. Thread-safe."""

    def __init__(
        self,
        settings: Settings,
        client: InsightSource,
        secrets: SecretSource | None = None,
        *,
        clock: Callable[[], int] = time.time_ns,
        scan_workers: int = 8,
    ) -> None:
        self._settings = settings
        self._client = client
        self._scope = JobScope(settings.project_name_prefix, client)
        self._secrets = secrets
        self._clock = clock
        self._scan_workers = scan_workers
        # Finished jobs' answers as compact JSON: their size is known, and each
        # caller gets its own copy. Bounded by CACHE_BYTES in total.
        self._cache: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._cache_size = 0
        self._cache_lock = threading.Lock()

    # -- logs ---------------------------------------------------------------------------

    def logs(self, project_id: str, job_id: str, query: LogQuery) -> dict[str, Any]:
        raw_job = self._scope.read_job(project_id, job_id)
        finished = raw_job.get("current_status") in TERMINAL_STATUSES
        now = self._clock()
        cursor = query.cursor
        tag = job_tag(project_id, job_id)
        if cursor is not None and cursor.job != tag:
            raise InvalidRequestError(
                "cursor belongs to another job's log",
                details=[{"location": "query.cursor", "reason": "from another job"}],
            )
        if cursor is not None:
            lo, fixed_hi, order, level = cursor.lo_ns, cursor.hi_ns, cursor.order, cursor.level
            position = cursor.position
        else:
            lo = query.since_ns if query.since_ns is not None else self._job_start_ns(raw_job)
            order, level = query.order, query.level
            # Newest first starts from a fixed end; oldest first follows "now" unless told.
            fixed_hi = query.until_ns if query.until_ns is not None else None
            if order == "desc" and fixed_hi is None:
                fixed_hi = now
            position = Position(lo) if order == "asc" else Position(fixed_hi or now)
        # Never past now: a far ``until`` (or a cursor's) reads what exists so far.
        hi = min(fixed_hi, now) if fixed_hi is not None else now
        if order == "desc" and position.ns > hi:
            position = Position(hi)
        self._load_secrets()
        page = read_page(
            job_fetch(self._client, project_id, job_id),
            order=order,
            lo_ns=lo,
            hi_ns=hi,
            position=position,
            limit=query.limit,
            level=level,
        )
        next_cursor: str | None = None
        tailing = order == "asc" and (fixed_hi is None or fixed_hi > now) and not finished
        if not page.exhausted or tailing:
            next_cursor = Cursor(order, page.position, lo, fixed_hi, level, tag).encode()
        return {
            "data": [line_json(line) for line in page.lines],
            "next_cursor": next_cursor,
            "has_more": not page.exhausted,
        }

    # -- metrics ------------------------------------------------------------------------

    def metrics(self, project_id: str, job_id: str, query: MetricsQuery) -> dict[str, Any]:
        raw_job = self._scope.read_job(project_id, job_id)
        status = str(raw_job.get("current_status") or "")
        finished = status in TERMINAL_STATUSES
        key = (project_id, job_id, query.since_ns, query.until_ns, query.points, status)
        cached = self._cached(key, status)
        if cached is not None:
            answer: dict[str, Any] = json.loads(cached)
            return answer
        now = self._clock()
        # The range is clamped to the job's life: nothing is logged before it
        # started, after it ended, or in the future.
        life_lo, life_hi = self._job_start_ns(raw_job), self._job_end_ns(raw_job, now)
        lo = max(life_lo, query.since_ns if query.since_ns is not None else life_lo)
        hi = min(life_hi, query.until_ns if query.until_ns is not None else life_hi)
        system: dict[str, Any]
        if lo > hi:
            series, system = TrainingSeries(), {"nodes": []}
        else:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics") as pool:
                system_future = pool.submit(self._system, project_id, job_id, lo, hi, query.points)
                try:
                    series = self.read_series(project_id, job_id, lo, hi, MAX_METRICS_REQUESTS)
                finally:
                    system = system_future.result()
        answer = {
            "training_project_id": project_id,
            "training_job_id": job_id,
            "job_name": raw_job.get("name"),
            "status": short_status(status or "TRAINING_JOB_UNKNOWN"),
            "training": training_answer(
                series,
                query.points,
                finished=finished,
                completed=status == COMPLETED,
                now_ns=now,
            ),
            "system": system,
        }
        if finished:
            self._keep(key, json.dumps(answer, separators=(",", ":")).encode())
        return answer

    # -- evaluation -----------------------------------------------------------------------

    def read_job(self, project_id: str, job_id: str) -> dict[str, Any]:
        """Baseten's job, within the project scope (404 as for an unknown one)."""
        return self._scope.read_job(project_id, job_id)

    def evaluation(self, project_id: str, job_id: str) -> dict[str, Any]:
        """Base beside tuned, their change and the samples, from the job's whole log."""
        raw_job = self._scope.read_job(project_id, job_id)
        status = str(raw_job.get("current_status") or "")
        key = ("evaluation", project_id, job_id, status)
        cached = self._cached(key, status)
        if cached is not None:
            answer: dict[str, Any] = json.loads(cached)
            return answer
        self._load_secrets()
        series = self._whole_series(project_id, job_id, raw_job)
        answer = {
            "training_project_id": project_id,
            "training_job_id": job_id,
            "job_name": raw_job.get("name"),
            "status": short_status(status or "TRAINING_JOB_UNKNOWN"),
            **evaluation_answer(series),
        }
        _scrub_samples(answer["samples"])
        if status in TERMINAL_STATUSES:
            self._keep(key, json.dumps(answer, separators=(",", ":")).encode())
        return answer

    def results_csv(
        self, project_id: str, job_id: str, raw_job: Mapping[str, Any] | None = None
    ) -> bytes:
        """OpenAI's results file of a job: one CSV row per step (see :func:`results_csv`).

        ``raw_job``: the job as the caller just read it (within the scope), else read here.
        """
        if raw_job is None:
            raw_job = self._scope.read_job(project_id, job_id)
        status = str(raw_job.get("current_status") or "")
        key = ("results.csv", project_id, job_id, status)
        cached = self._cached(key, status)
        if cached is not None:
            return cached
        data = results_csv(self._whole_series(project_id, job_id, raw_job))
        if status in TERMINAL_STATUSES:
            self._keep(key, data)
        return data

    def _whole_series(
        self, project_id: str, job_id: str, raw_job: Mapping[str, Any]
    ) -> TrainingSeries:
        lo, hi = self._job_start_ns(raw_job), self._job_end_ns(raw_job, self._clock())
        if lo > hi:
            return TrainingSeries()
        return self.read_series(project_id, job_id, lo, hi, MAX_METRICS_REQUESTS)

    def _cached(self, key: tuple[Any, ...], status: str) -> bytes | None:
        if status not in TERMINAL_STATUSES:
            return None
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
        return cached

    def read_series(
        self, project_id: str, job_id: str, lo: int, hi: int, max_requests: int
    ) -> TrainingSeries:
        """Every training record of ``[lo, hi]``, in at most ``max_requests`` log requests.

        Past the budget the read stops and the answer is a 400 asking for a
        narrower range: a partial series would be a wrong answer.
        """
        fetch = _Budget(job_fetch(self._client, project_id, job_id), max_requests)

        def consume(pages: Iterator[list[Line]]) -> TrainingSeries:
            series = TrainingSeries()
            for page in pages:
                for line in page:
                    series.add_message(line.message, line.ns)
            return series

        try:
            parts = scan_parallel(fetch, lo, hi, consume, workers=self._scan_workers)
        except _OverBudget:
            reason = f"the range needs more than {max_requests} Baseten requests; narrow it"
            raise InvalidRequestError(
                f"this part of the job's log needs more than {max_requests} Baseten requests "
                "to read; ask for a narrower since/until",
                details=[
                    {"location": "query.since", "reason": reason},
                    {"location": "query.until", "reason": reason},
                ],
            ) from None
        series = TrainingSeries()
        for part in parts:
            series.extend(part)
        return series

    def cache_bytes(self) -> int:
        with self._cache_lock:
            return self._cache_size

    def _keep(self, key: tuple[Any, ...], data: bytes) -> None:
        if len(data) > CACHE_BYTES // 4:
            return  # one answer never crowds out the rest
        with self._cache_lock:
            previous = self._cache.pop(key, None)
            if previous is not None:
                self._cache_size -= len(previous)
            self._cache[key] = data
            self._cache_size += len(data)
            while self._cache_size > CACHE_BYTES and self._cache:
                _, dropped = self._cache.popitem(last=False)
                self._cache_size -= len(dropped)

    def _system(
        self, project_id: str, job_id: str, lo: int, hi: int, points: int
    ) -> dict[str, Any]:
        # Baseten's metrics window: milliseconds; a window past 7 days is narrowed to its end.
        start_ms = max(lo // MS, hi // MS - WINDOW_MS)
        body = self._client.get_metrics(project_id, job_id, start_ms=start_ms, end_ms=hi // MS)
        nodes_raw = body.get("per_node_metrics")
        nodes: list[tuple[str, Mapping[str, Any]]] = []
        if isinstance(nodes_raw, list):
            for index, item in enumerate(nodes_raw):
                if isinstance(item, Mapping) and isinstance(item.get("metrics"), Mapping):
                    nodes.append((str(item.get("node_id") or f"node-{index}"), item["metrics"]))
        if not nodes:
            nodes = [("leader", body)]
        return {"nodes": [_node_series(node_id, metrics, points) for node_id, metrics in nodes]}

    # -- progress and events ------------------------------------------------------------

    def newest_series(
        self, raw_job: Mapping[str, Any], count: int, *, max_requests: int = 1
    ) -> tuple[TrainingSeries, list[Line]]:
        """The newest lines and their training records, looking back for a step line.

        The first request asks for the newest ``count`` lines (at least enough
        to find a step line behind a tail of other output: up to 1,000 in one
        request); while no step line has been seen, up to ``max_requests`` in
        all go further back. ``lines`` is the newest ``count`` of them.
        """
        project_id = str(raw_job.get("training_project_id") or "")
        job_id = str(raw_job.get("id") or "")
        now = self._clock()
        lo = self._job_start_ns(raw_job)
        hi = self._job_end_ns(raw_job, now)
        fetch = job_fetch(self._client, project_id, job_id)
        position = Position(hi)
        found: list[Line] = []  # newest first
        series = TrainingSeries()
        for _ in range(max_requests):
            page = read_page(
                fetch,
                order="desc",
                lo_ns=lo,
                hi_ns=hi,
                position=position,
                limit=BASETEN_MAX_LIMIT if max_requests > 1 else count,
                max_requests=1,
            )
            found.extend(page.lines)
            older = TrainingSeries()
            for line in reversed(page.lines):
                older.add_message(line.message, line.ns)
            older.extend(series)
            series = older
            if page.exhausted or len(series) or series.final is not None:
                break
            position = page.position
        lines = list(reversed(found[:count]))
        return series, lines

    def progress(self, raw_job: Mapping[str, Any]) -> dict[str, Any] | None:
        """CONTRACT ``progress`` of a running or finished job; None before it ran."""
        status = raw_job.get("current_status")
        if status in NOT_STARTED or status == "TRAINING_JOB_DEPLOY_FAILED":
            return None
        try:
            series, _ = self.newest_series(
                raw_job, NEWEST_LINES, max_requests=PROGRESS_MAX_REQUESTS
            )
        except ServiceError as error:
            # The job itself was read; its progress waits for the next look.
            log(
                _logger,
                logging.WARNING,
                "could not read a job's newest log lines",
                error_type=error.type,
                reason=error.message,
            )
            return None
        return progress(
            series,
            finished=status in TERMINAL_STATUSES,
            completed=status == COMPLETED,
            now_ns=self._clock(),
        )

    def event_details(self, job: Job) -> dict[str, Any]:
        """What a status-change event adds: ``summary`` (completed) or ``log_tail`` (failed)."""
        if job.status not in ("completed", "failed", "deploy_failed"):
            return {}
        raw = {
            "id": job.training_job_id,
            "training_project_id": job.training_project_id,
            "current_status": job.baseten_status,
            "created_at": job.created_at,
            "updated_at": job.updated_at,
        }
        try:
            self._load_secrets()
            if job.status == "completed":
                # Summarised once per job: the whole log is read (within the metrics
                # bound), so lines printed after the last step cannot hide it.
                lo = self._job_start_ns(raw)
                hi = self._job_end_ns(raw, self._clock())
                series = self.read_series(
                    job.training_project_id, job.training_job_id, lo, hi, MAX_METRICS_REQUESTS
                )
                return {
                    "summary": final_summary(
                        series, created_at=job.created_at, finished_at=job.updated_at
                    )
                    or final_summary_without_lines(job)
                }
            _, lines = self.newest_series(raw, LOG_TAIL_LINES)
        except ServiceError as error:
            log(
                _logger,
                logging.WARNING,
                "could not read a finished job's log for its event",
                error_type=error.type,
                reason=error.message,
            )
            return {"summary": None} if job.status == "completed" else {"log_tail": None}
        return {"log_tail": [line_json(line) for line in lines[-LOG_TAIL_LINES:]]}

    # -- helpers ------------------------------------------------------------------------

    def _job_start_ns(self, raw_job: Mapping[str, Any]) -> int:
        created = _ns(raw_job.get("created_at"))
        if created is None:
            return max(0, self._clock() - WINDOW_MS * MS)
        return max(0, created - _BEFORE_CREATED_NS)

    def _job_end_ns(self, raw_job: Mapping[str, Any], now: int) -> int:
        """The last moment a job's log can hold: now, or shortly after it finished."""
        if raw_job.get("current_status") in TERMINAL_STATUSES:
            updated = _ns(raw_job.get("updated_at"))
            if updated is not None:
                return min(now, updated + _AFTER_FINISHED_NS)
        return now

    def _load_secrets(self) -> None:
        """Read the webhook secret once, so it is known to the scrubber before text leaves."""
        if self._secrets is None or not (
            self._settings.webhook_secret or self._settings.webhook_secret_secret_id
        ):
            return
        with contextlib.suppress(ServiceError):  # then it is not readable by us either
            self._secrets.get("webhook_secret", required=False)


class _OverBudget(Exception):
    """A read spent its Baseten requests."""


class _Budget:
    """A log fetch that allows at most ``limit`` calls in all, across threads."""

    def __init__(self, fetch: Any, limit: int) -> None:
        self._fetch = fetch
        self._left = limit
        self._lock = threading.Lock()

    def __call__(
        self, start_ms: int, end_ms: int, direction: str, limit: int, level: str | None
    ) -> list[dict[str, Any]]:
        with self._lock:
            if self._left <= 0:
                raise _OverBudget
            self._left -= 1
        result: list[dict[str, Any]] = self._fetch(start_ms, end_ms, direction, limit, level)
        return result


def _scrub_samples(samples: list[dict[str, Any]] | None) -> None:
    """Sample texts are the job's own output: known secrets are replaced like in a log line."""
    for sample in samples or []:
        for name, value in sample.items():
            if isinstance(value, str):
                sample[name] = scrub_log_text(value)


def final_summary_without_lines(job: Job) -> dict[str, Any]:
    """A completed job whose script printed no metrics lines: only its duration is known."""
    duration = seconds_between(job.created_at, job.updated_at)
    return {
        "steps": None,
        "total_steps": None,
        "final_loss": None,
        "best_eval_loss": None,
        "base_eval_loss": None,
        "eval_loss": None,
        "duration_seconds": None if duration is None else round(duration, 3),
    }


_SYSTEM_SERIES = ("cpu_usage", "cpu_memory_usage_bytes")
_PER_GPU_SERIES = ("gpu_utilization", "gpu_memory_usage_bytes")


def _node_series(node_id: str, metrics: Mapping[str, Any], points: int) -> dict[str, Any]:
    node: dict[str, Any] = {"node_id": node_id}
    for name in _PER_GPU_SERIES:
        ranks = metrics.get(name)
        node[name] = (
            {
                str(rank): downsample_series(_points(series), points)
                for rank, series in sorted((ranks or {}).items(), key=lambda item: str(item[0]))
            }
            if isinstance(ranks, Mapping)
            else {}
        )
    for name in _SYSTEM_SERIES:
        node[name] = downsample_series(_points(metrics.get(name)), points)
    storage = metrics.get("ephemeral_storage")
    usage = storage.get("usage_bytes") if isinstance(storage, Mapping) else None
    node["ephemeral_storage_usage_bytes"] = downsample_series(_points(usage), points)
    return node


def _points(series: Any) -> list[dict[str, Any]]:
    if not isinstance(series, list):
        return []
    return [
        {"timestamp": item.get("timestamp"), "value": item.get("value")}
        for item in series
        if isinstance(item, Mapping)
    ]


__all__ = [
    "JobInsights",
    "LogQuery",
    "MetricsQuery",
    "line_json",
    "log_query",
    "metrics_query",
    "parse_time_ns",
    "scrub_log_text",
]
