"""A thin Baseten REST client for reading and stopping training jobs.

It deliberately does not import ``truss`` (about 1 s and ~97 MB per cold
start): the read and stop endpoints are plain JSON over HTTPS. One pooled
``requests.Session`` is shared by every thread; each request goes through a
process-wide rate limiter, is retried with backoff when Baseten is briefly
unavailable, and any failure surfaces as one of the service's own errors
(mapped in :func:`upstream_error`). The API key is read through a callable on
every attempt, so a rotated secret is picked up, and it never appears in an
error message or a log line.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from finetune_api.core.errors import (
    ConfigurationError,
    NotFoundError,
    ServiceError,
    UpstreamError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
    UpstreamUnavailableError,
)
from finetune_api.core.logs import get_logger, log, scrub
from finetune_api.core.settings import Settings

_logger = get_logger("baseten")

# Baseten's own ids are short alphanumeric strings; anything else cannot name a
# job and must never be pasted into a URL path.
_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")
# A longer Retry-After than this is not waited out inside a request: the caller
# gets upstream_unavailable with the Retry-After instead.
MAX_RETRY_AFTER_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 10.0
_MESSAGE_LIMIT = 500


class RateLimiter:
    """Limits request starts to ``rate`` per second across threads (GCRA).

    A token bucket of ``burst`` tokens: after a quiet spell up to ``burst``
    requests start at once, then starts are spaced ``1 / rate`` apart; any
    one-second window holds at most ``floor(rate) + burst`` starts.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._interval = 1.0 / rate
        # How far ahead of the schedule a start may be: (burst - 1) intervals.
        self._tolerance = (max(1, burst) - 1) * self._interval
        self._paused_until = 0.0
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait for this caller's slot; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            due = max(now, self._next)  # the theoretical arrival time
            slot = max(now, due - self._tolerance, self._paused_until)
            self._next = max(due, slot) + self._interval
        delay = slot - now
        if delay > 0:
            self._sleep(delay)
        return delay

    def pause(self, seconds: float) -> None:
        """Hold every caller back for ``seconds`` (Baseten said ``retry_after``)."""
        with self._lock:
            until = self._clock() + seconds
            self._paused_until = max(self._paused_until, until)
            self._next = max(self._next, until)


_shared_limiters: dict[float, RateLimiter] = {}
_shared_lock = threading.Lock()


# At most 90/s + 3 starts in any second: still under Baseten's 100/s per key.
SHARED_BURST = 3


def shared_limiter(rate: float) -> RateLimiter:
    """The process-wide limiter for ``rate``: Baseten limits per API key, not per client."""
    with _shared_lock:
        limiter = _shared_limiters.get(rate)
        if limiter is None:
            # A small burst lets a submit's two searches start back to back.
            limiter = _shared_limiters[rate] = RateLimiter(rate, burst=SHARED_BURST)
        return limiter


def upstream_error(
    what: str,
    *,
    status: int | None = None,
    body: Any = None,
    retry_after: float | None = None,
    transport: str | None = None,
) -> ServiceError:
    """The service error for a failed Baseten call: the one place statuses are mapped.

    ``status`` is Baseten's HTTP status; when there is none, ``transport`` says
    what went wrong on the way (our own words: request exceptions carry URLs and
    headers, so they are never stringified).
    """
    if status is None:
        return UpstreamUnavailableError(
            f"Baseten {transport or 'could not be reached'} ({what})",
            retry_after=_whole_seconds(retry_after),
        )
    if status == 404:
        return NotFoundError(f"{what} not found on Baseten")
    if status in (401, 403):
        return UpstreamError(
            f"Baseten refused our credentials (HTTP {status}); check BASETEN_API_KEY ({what})"
        )
    if status == 429:
        return UpstreamRateLimitedError(
            f"Baseten is rate-limiting us (HTTP 429) ({what})",
            retry_after=_whole_seconds(retry_after),
        )
    if 400 <= status < 500:
        message = baseten_message(body)
        return UpstreamRejectedError(
            f"Baseten rejected the request: {message}"
            if message
            else f"Baseten rejected the request (HTTP {status}) ({what})"
        )
    if status >= 500:
        return UpstreamError(f"Baseten failed with HTTP {status} ({what})")
    return UpstreamError(f"Baseten answered with unexpected HTTP {status} ({what})")


def baseten_message(body: Any) -> str | None:
    """Baseten's human-readable ``message`` from an error body, trimmed and scrubbed."""
    if not isinstance(body, Mapping):
        return None
    for key in ("message", "detail", "error"):
        value = body.get(key)
        if isinstance(value, str) and value.strip():
            text = scrub(value.strip())
            return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"
    return None


def _whole_seconds(seconds: float | None) -> int | None:
    return None if seconds is None else max(1, math.ceil(seconds))


def requests_error(what: str, error: BaseException) -> ServiceError | None:
    """The CONTRACT error for a failed ``requests`` call made by truss, or None if it is not one."""
    if isinstance(error, requests.HTTPError) and error.response is not None:
        response = error.response
        try:
            body = response.json()
        except ValueError:
            body = None
        return upstream_error(
            what,
            status=response.status_code,
            body=body,
            retry_after=retry_after_seconds(response, body),
        )
    if isinstance(error, requests.Timeout):
        return upstream_error(what, transport="did not answer in time")
    if isinstance(error, requests.ConnectionError):
        return upstream_error(what, transport="could not be reached")
    return None


def retry_after_seconds(response: requests.Response, body: Any) -> float | None:
    """Seconds to wait from the body's ``retry_after`` or the ``Retry-After`` header."""
    candidates: list[Any] = []
    if isinstance(body, Mapping):
        candidates.append(body.get("retry_after"))
    candidates.append(response.headers.get("Retry-After"))
    for value in candidates:
        if value is None or isinstance(value, bool):
            continue
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            if isinstance(value, str):
                try:
                    when = email.utils.parsedate_to_datetime(value)
                except (TypeError, ValueError):
                    continue
                seconds = when.timestamp() - time.time()
            else:
                continue
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None


class _Failure(Exception):
    """One failed attempt: the error to raise and whether another attempt may help."""

    def __init__(
        self,
        error: ServiceError,
        *,
        retryable: bool,
        unprocessed: bool = False,
        wait: float | None = None,
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.retryable = retryable
        # True when Baseten surely did not act on the request (safe to repeat a stop).
        self.unprocessed = unprocessed
        self.wait = wait


def _never_sent(error: requests.ConnectionError) -> bool:
    """A refused or unresolvable connection: the request never reached Baseten."""
    from urllib3.exceptions import MaxRetryError, NameResolutionError, NewConnectionError

    reason = error.args[0] if error.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, NewConnectionError | NameResolutionError)


class BasetenClient:
    """Reads training projects, jobs and checkpoints, and stops jobs. Thread-safe."""

    def __init__(
        self,
        settings: Settings,
        api_key: Callable[[], str],
        *,
        limiter: RateLimiter | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = settings.resolved_api_url.rstrip("/")
        self._api_key = api_key
        self._timeout = (
            min(CONNECT_TIMEOUT_SECONDS, settings.baseten_timeout_seconds),
            settings.baseten_timeout_seconds,
        )
        self._attempts = settings.baseten_max_retries + 1
        self.limiter = limiter or shared_limiter(settings.baseten_max_requests_per_second)
        self._sleep = sleep
        self._backoff = wait_exponential_jitter(multiplier=0.25, max=4.0, jitter=0.25)
        if session is None:
            session = requests.Session()
            # Every poll worker may hold a connection at once.
            pool = max(settings.poll_concurrency, 10)
            adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        self._session = session
        self._stats_lock = threading.Lock()
        self._requests = 0
        self._responses_429 = 0
        self._retries = 0
        self._bytes = 0

    # -- public API -------------------------------------------------------

    def get_job(self, project_id: str, job_id: str) -> dict[str, Any]:
        """The ``training_job`` dict, with ``training_project`` ``{id, name}`` on it."""
        what = "training job"  # no caller input in messages
        body = self._call("GET", self._job_path(project_id, job_id), what=what)
        job = self._dict(body, "training_job", what)
        project = body.get("training_project")
        if not isinstance(job.get("training_project"), Mapping):
            job["training_project"] = (
                dict(project) if isinstance(project, Mapping) else {"id": project_id}
            )
        job.setdefault("training_project_id", job["training_project"].get("id") or project_id)
        return job

    def upsert_project(self, name: str, team_id: str | None = None) -> dict[str, Any]:
        """Create the training project ``name`` or return the existing one (Baseten upserts)."""
        what = "training project"
        path = "v1/training_projects"
        if team_id:
            path = f"v1/teams/{self._id(team_id, f'team {team_id}')}/training_projects"
        # An upsert by name: repeating it cannot create a second project.
        body = self._call("POST", path, what=what, json_body={"training_project": {"name": name}})
        return self._dict(body, "training_project", what)

    def list_projects(self) -> list[dict[str, Any]]:
        body = self._call("GET", "v1/training_projects", what="training projects")
        return self._list(body, "training_projects", "training projects")

    def list_project_jobs(self, project_id: str) -> list[dict[str, Any]]:
        """Every job of one project, each with ``training_project`` on it."""
        what = "jobs of the training project"
        path = f"v1/training_projects/{self._id(project_id, what)}/jobs"
        body = self._call("GET", path, what=what)
        jobs = self._list(body, "training_jobs", what)
        project = body.get("training_project")
        for job in jobs:
            if isinstance(project, Mapping) and not isinstance(
                job.get("training_project"), Mapping
            ):
                job["training_project"] = dict(project)
            job.setdefault("training_project_id", project_id)
        return jobs

    def search_jobs(
        self,
        *,
        project_id: str | None = None,
        job_id: str | None = None,
        statuses: Sequence[str] | None = None,
        newest_first: bool = True,
    ) -> list[dict[str, Any]]:
        """Jobs across projects (or one), ordered by ``created_at``; statuses in full form."""
        # The same body truss sends (nulls included).
        payload = {
            "project_id": project_id,
            "job_id": job_id,
            "statuses": list(statuses) if statuses is not None else None,
            "order_by": [{"field": "created_at", "order": "desc" if newest_first else "asc"}],
        }
        what = "training job search"
        body = self._call("POST", "v1/training_jobs/search", what=what, json_body=payload)
        return self._list(body, "training_jobs", what)

    @contextlib.contextmanager
    def stream_search_jobs(
        self,
        *,
        project_id: str | None = None,
        statuses: Sequence[str] | None = None,
        newest_first: bool = True,
    ) -> Iterator[Iterator[dict[str, Any]]]:
        """The same search, its answer parsed as it arrives: one job dict at a time.

        Memory stays bounded by one job however long the history; leaving the
        ``with`` block early closes the connection, so the rest of the answer is
        never read. A failure before the answer starts is retried like any read;
        one in the middle raises ``upstream_unavailable``.
        """
        payload = {
            "project_id": project_id,
            "job_id": None,
            "statuses": list(statuses) if statuses is not None else None,
            "order_by": [{"field": "created_at", "order": "desc" if newest_first else "asc"}],
        }
        what = "training job search"
        response = self._open("POST", "v1/training_jobs/search", what=what, json_body=payload)
        try:
            yield self._items(response, "training_jobs.item", what)
        finally:
            response.close()

    @contextlib.contextmanager
    def stream_project_jobs(self, project_id: str) -> Iterator[Iterator[dict[str, Any]]]:
        """Every job of one project, parsed as it arrives (404 for an unknown project)."""
        what = "jobs of a training project"  # no caller input in messages
        path = f"v1/training_projects/{self._id(project_id, what)}/jobs"
        response = self._open("GET", path, what=what)
        try:
            yield (
                {**job, "training_project_id": job.get("training_project_id") or project_id}
                for job in self._items(response, "training_jobs.item", what)
            )
        finally:
            response.close()

    def _items(
        self, response: requests.Response, prefix: str, what: str
    ) -> Iterator[dict[str, Any]]:
        import ijson
        from urllib3.exceptions import HTTPError as Urllib3Error

        reader = _CountingReader(response.raw, self._count_bytes)
        try:
            for item in ijson.items(reader, prefix, use_float=True, buf_size=_STREAM_CHUNK):
                if isinstance(item, Mapping):
                    yield dict(item)
        except ijson.JSONError:
            raise UpstreamError(f"Baseten sent an answer that is not valid JSON ({what})") from None
        except (Urllib3Error, requests.RequestException, OSError):
            raise upstream_error(what, transport="stopped answering mid-way") from None

    def list_checkpoints(self, project_id: str, job_id: str) -> list[dict[str, Any]]:
        what = "checkpoints of the training job"
        path = f"{self._job_path(project_id, job_id)}/checkpoints"
        body = self._call("GET", path, what=what)
        return self._list(body, "checkpoints", what)

    def checkpoint_files(
        self, project_id: str, job_id: str, *, page_size: int = 1000, page_token: int = 0
    ) -> tuple[list[dict[str, Any]], int | None]:
        """One page of a job's checkpoint files (``getTrainingJobCheckpointFiles``).

        Every checkpoint's files of the job, as presigned URLs, each with
        ``relative_file_name`` (``<checkpoint>/<path>``), ``node_rank``,
        ``size_bytes`` and ``last_modified``; and the next page's token (an offset),
        None after the last page.
        """
        what = "checkpoint files of the training job"
        path = f"{self._job_path(project_id, job_id)}/checkpoint_files"
        params = {"page_size": page_size, "page_token": page_token}
        body = self._call("GET", path, what=what, params=params)
        files = self._list(body, "presigned_urls", what)
        token = body.get("next_page_token")
        if token is not None and (isinstance(token, bool) or not isinstance(token, int)):
            raise UpstreamError(
                f"Baseten's answer has a 'next_page_token' that is not a number ({what})"
            )
        return files, token

    def get_logs(
        self,
        project_id: str,
        job_id: str,
        *,
        start_ms: int,
        end_ms: int,
        direction: str = "asc",
        limit: int = 1000,
        min_level: str | None = None,
    ) -> list[dict[str, Any]]:
        """One page of Baseten's logs (the GET operation; the POST form is deprecated).

        Lines in ``[start_ms, end_ms]`` (epoch milliseconds, at most 7 days apart),
        oldest or newest first, at most ``limit`` (1-1000); each has ``timestamp``
        (epoch nanoseconds as a string), ``message``, ``replica`` and ``level``.
        """
        what = "training job logs"
        params: dict[str, Any] = {
            "start_epoch_millis": start_ms,
            "end_epoch_millis": end_ms,
            "direction": direction,
            "limit": limit,
        }
        if min_level is not None:
            params["min_level"] = min_level
        body = self._call(
            "GET", f"{self._job_path(project_id, job_id)}/logs", what=what, params=params
        )
        logs = body.get("logs")
        if logs is None:
            return []
        if not isinstance(logs, list):
            raise UpstreamError(f"Baseten's answer has no 'logs' list ({what})")
        # Up to 1,000 lines a page: no defensive copies (the reader keeps only what it needs).
        return [item for item in logs if type(item) is dict]

    def get_metrics(
        self, project_id: str, job_id: str, *, start_ms: int | None, end_ms: int | None
    ) -> dict[str, Any]:
        """Baseten's system metrics of a job (GET operation): leader and per-node series."""
        what = "training job metrics"
        params = {
            name: value
            for name, value in (("start_epoch_millis", start_ms), ("end_epoch_millis", end_ms))
            if value is not None
        }
        path = f"{self._job_path(project_id, job_id)}/metrics"
        return self._call("GET", path, what=what, params=params)

    def stop_job(self, project_id: str, job_id: str) -> dict[str, Any]:
        """Stop a job; returns the ``training_job`` dict Baseten answers."""
        what = "training job"  # no caller input in messages
        path = f"{self._job_path(project_id, job_id)}/stop"
        # A stop is repeated only when Baseten surely did not act on it.
        body = self._call("POST", path, what=what, json_body={}, idempotent=False)
        job = self._dict(body, "training_job", what)
        job.setdefault("training_project_id", project_id)
        return job

    # -- models and deployments (the published /v1/models operations) ------

    def list_models(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every model, or those named exactly ``name``."""
        body = self._call(
            "GET", "v1/models", what="models", params={"name": name} if name else None
        )
        return self._list(body, "models", "models")

    def get_model(self, model_id: str) -> dict[str, Any]:
        what = "model"
        return self._call("GET", f"v1/models/{self._id(model_id, what)}", what=what)

    def list_deployments(self, model_id: str, name: str | None = None) -> list[dict[str, Any]]:
        """A model's deployments, or the one named exactly ``name``."""
        what = "deployments of a model"
        path = f"v1/models/{self._id(model_id, what)}/deployments"
        body = self._call("GET", path, what=what, params={"name": name} if name else None)
        return self._list(body, "deployments", what)

    def get_deployment(self, model_id: str, deployment_id: str) -> dict[str, Any]:
        return self._call(
            "GET",
            self._deployment_path(model_id, deployment_id),
            what="deployment",
        )

    def rename_deployment(self, model_id: str, deployment_id: str, name: str) -> dict[str, Any]:
        """Set the deployment's name (unique among the model's deployments)."""
        # Repeating the same rename of the same deployment is harmless.
        return self._call(
            "PATCH",
            self._deployment_path(model_id, deployment_id),
            what="deployment",
            json_body={"name": name},
        )

    def deactivate_deployment(self, model_id: str, deployment_id: str) -> dict[str, Any]:
        return self._call(
            "POST",
            f"{self._deployment_path(model_id, deployment_id)}/deactivate",
            what="deployment",
            json_body={},
        )

    def activate_deployment(self, model_id: str, deployment_id: str) -> dict[str, Any]:
        return self._call(
            "POST",
            f"{self._deployment_path(model_id, deployment_id)}/activate",
            what="deployment",
            json_body={},
        )

    def delete_deployment(self, model_id: str, deployment_id: str) -> dict[str, Any]:
        return self._call(
            "DELETE",
            self._deployment_path(model_id, deployment_id),
            what="deployment",
        )

    def job_artifact_urls(self, project_id: str, job_id: str) -> list[str]:
        """Presigned URLs of the archives the job was pushed with (``GET …/download``)."""
        what = "training job artifacts"
        body = self._call("GET", f"{self._job_path(project_id, job_id)}/download", what=what)
        urls = body.get("artifact_presigned_urls")
        if not isinstance(urls, list):
            raise UpstreamError(f"Baseten's answer has no 'artifact_presigned_urls' list ({what})")
        return [url for url in urls if isinstance(url, str)]

    def fetch_artifact(self, url: str, max_bytes: int) -> bytes:
        """GET a presigned URL (no Baseten credentials: they never leave for storage)."""
        what = "a training job's artifact"
        if not url.startswith(("https://", "http://")):
            raise UpstreamError(f"Baseten sent an artifact URL that is not http(s) ({what})")
        try:
            with self._session.get(url, timeout=self._timeout, stream=True) as response:
                if response.status_code != 200:
                    raise upstream_error(what, status=response.status_code)
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_content(65536):
                    size += len(chunk)
                    if size > max_bytes:
                        raise UpstreamError(f"{what} is larger than {max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except requests.Timeout:
            error: ServiceError = upstream_error(what, transport="did not answer in time")
        except requests.RequestException:
            error = upstream_error(what, transport="could not be reached")
        raise error

    def _deployment_path(self, model_id: str, deployment_id: str) -> str:
        what = "deployment"
        return f"v1/models/{self._id(model_id, what)}/deployments/{self._id(deployment_id, what)}"

    @property
    def request_count(self) -> int:
        """HTTP requests sent so far, retries included."""
        with self._stats_lock:
            return self._requests

    def stats(self) -> dict[str, int]:
        with self._stats_lock:
            return {
                "requests": self._requests,
                "retries": self._retries,
                "responses_429": self._responses_429,
                "bytes_received": self._bytes,
            }

    def _count_bytes(self, count: int) -> None:
        with self._stats_lock:
            self._bytes += count

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> BasetenClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals --------------------------------------------------------

    @staticmethod
    def _id(value: str, what: str) -> str:
        if not isinstance(value, str) or not _ID.match(value):
            # No id of that shape exists on Baseten; never put it in a URL.
            raise NotFoundError(f"{what} not found on Baseten")
        return value

    def _job_path(self, project_id: str, job_id: str) -> str:
        what = "training job"  # no caller input in messages
        return f"v1/training_projects/{self._id(project_id, what)}/jobs/{self._id(job_id, what)}"

    @staticmethod
    def _dict(body: Mapping[str, Any], key: str, what: str) -> dict[str, Any]:
        value = body.get(key)
        if not isinstance(value, Mapping):
            raise UpstreamError(f"Baseten's answer has no '{key}' object ({what})")
        return dict(value)

    @staticmethod
    def _list(body: Mapping[str, Any], key: str, what: str) -> list[dict[str, Any]]:
        value = body.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise UpstreamError(f"Baseten's answer has no '{key}' list ({what})")
        return [dict(item) for item in value if isinstance(item, Mapping)]

    def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        idempotent: bool = True,
    ) -> dict[str, Any]:
        """One request's JSON object answer (retried, rate-limited, errors mapped)."""
        body: dict[str, Any] = self._perform(
            method, path, what=what, json_body=json_body, idempotent=idempotent, params=params
        )
        return body

    def _open(
        self, method: str, path: str, *, what: str, json_body: Any = None
    ) -> requests.Response:
        """The same, but the 2xx response is handed over unread, to be parsed as a stream."""
        response: requests.Response = self._perform(
            method, path, what=what, json_body=json_body, stream=True
        )
        return response

    def _perform(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json_body: Any = None,
        idempotent: bool = True,
        params: Mapping[str, Any] | None = None,
        stream: bool = False,
    ) -> Any:
        def should_retry(error: BaseException) -> bool:
            return (
                isinstance(error, _Failure)
                and error.retryable
                and (idempotent or error.unprocessed)
            )

        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            wait=self._wait,
            retry=retry_if_exception(should_retry),
            sleep=self._sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        url = f"{self.base_url}/{path}"
        error: ServiceError | None = None
        try:
            for attempt in retrying:
                with attempt:
                    return self._attempt(method, url, what, json_body, params, stream)
        except _Failure as failure:
            error = failure.error
        # Raised outside the except block: the error carries no exception chain.
        raise error or UpstreamError(f"Baseten request failed ({what})")

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _Failure) and error.wait is not None:
            return error.wait
        return float(self._backoff(state))

    def _before_sleep(self, state: RetryCallState) -> None:
        with self._stats_lock:
            self._retries += 1
        error = state.outcome.exception() if state.outcome else None
        reason = error.error.message if isinstance(error, _Failure) else "unknown"
        log(
            _logger,
            20,
            "retrying a Baseten request",
            attempt=state.attempt_number,
            reason=reason,
            wait_seconds=round(state.upcoming_sleep, 3),
        )

    def _send(
        self,
        method: str,
        url: str,
        what: str,
        json_body: Any,
        params: Any = None,
        stream: bool = False,
    ) -> requests.Response | _Failure:
        headers = {
            "Authorization": f"Api-Key {self._api_key()}",
            "Accept": "application/json",
        }
        self.limiter.acquire()
        with self._stats_lock:
            self._requests += 1
        connect, read = self._timeout
        try:
            return self._session.request(
                method,
                url,
                headers=headers,
                json=json_body,
                params=params,
                timeout=self._timeout,
                allow_redirects=False,
                stream=stream,
            )
        except requests.ConnectTimeout:
            return _Failure(
                upstream_error(what, transport=f"could not be reached within {connect:g} s"),
                retryable=True,
                unprocessed=True,
            )
        except requests.Timeout:
            return _Failure(
                upstream_error(what, transport=f"did not answer within {read:g} s"),
                retryable=True,
            )
        except requests.ConnectionError as error:
            return _Failure(
                upstream_error(what, transport="could not be reached (connection failed)"),
                retryable=True,
                unprocessed=_never_sent(error),
            )
        except requests.exceptions.InvalidHeader:
            # requests quotes the offending value in its message: never repeat it.
            return _Failure(
                ConfigurationError(
                    "BASETEN_API_KEY holds characters that cannot be sent in an HTTP header"
                ),
                retryable=False,
            )
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema):
            return _Failure(
                ConfigurationError("BASETEN_API_URL is not a usable URL"), retryable=False
            )
        except requests.RequestException as error:
            return _Failure(
                upstream_error(what, transport=f"request failed ({type(error).__name__})"),
                retryable=True,
            )

    def _attempt(
        self,
        method: str,
        url: str,
        what: str,
        json_body: Any,
        params: Any = None,
        stream: bool = False,
    ) -> Any:
        sent = self._send(method, url, what, json_body, params, stream)
        # Raised here, outside any except block, so no requests exception (which
        # may quote headers) ever hangs off the error as its __context__.
        if isinstance(sent, _Failure):
            raise sent
        response = sent
        if stream and 200 <= response.status_code < 300:
            return response  # the caller parses it as it arrives
        self._count_bytes(len(response.content))
        try:
            body: Any = response.json() if response.content else {}
        except ValueError:
            body = None
        status = response.status_code
        if 200 <= status < 300:
            if not isinstance(body, dict):
                raise _Failure(
                    UpstreamError(f"Baseten sent an answer that is not a JSON object ({what})"),
                    retryable=False,
                )
            return body

        retry_after = retry_after_seconds(response, body) if status in (429, 503) else None
        failure = upstream_error(what, status=status, body=body, retry_after=retry_after)
        if status == 429:
            with self._stats_lock:
                self._responses_429 += 1
            wait = retry_after if retry_after is not None else 1.0
            # Everyone sharing the limiter backs off, not only this thread; the
            # retry then waits for its slot in the limiter.
            self.limiter.pause(min(wait, MAX_RETRY_AFTER_SECONDS))
            raise _Failure(
                failure, retryable=wait <= MAX_RETRY_AFTER_SECONDS, unprocessed=True, wait=0.0
            )
        if status >= 500:
            server_wait = retry_after if status == 503 else None
            raise _Failure(
                failure,
                retryable=server_wait is None or server_wait <= MAX_RETRY_AFTER_SECONDS,
                unprocessed=status in (502, 503, 504),
                wait=server_wait,
            )
        raise _Failure(failure, retryable=False)


_STREAM_CHUNK = 16 * 1024


class _CountingReader:
    """``read(n)`` over urllib3's raw response (decompressed), counting what it hands out."""

    def __init__(self, raw: Any, count: Callable[[int], None]) -> None:
        self._raw = raw
        self._count = count

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""  # ijson probes the type of what read() returns with read(0)
        wanted = size if size > 0 else _STREAM_CHUNK
        data: bytes = self._raw.read(wanted, decode_content=True)
        self._count(len(data))
        return data


__all__ = [
    "BasetenClient",
    "RateLimiter",
    "baseten_message",
    "retry_after_seconds",
    "shared_limiter",
    "upstream_error",
]
