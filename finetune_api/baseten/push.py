"""The only module that touches ``truss``: submitting a staged template.

``truss`` is imported on the first submit, not at start-up (it costs about a
second and ~97 MB), and is configured once per process:

* the remote comes from ``BASETEN_TRUSS_AUTH_REMOTE_URL`` / ``..._API_KEY``
  and is therefore named ``"<environment>"`` (truss refuses ``"baseten"``);
* truss maps app URLs to REST URLs through a hard-coded dict, so we add our
  ``BASETEN_API_URL`` to it (an unknown app URL would silently go to production);
* truss shells out to ``git`` for client info and raises FileNotFoundError when
  no ``git`` binary exists, so that lookup degrades to "no git info";
* truss's REST client calls ``requests.get/post`` for every request, i.e. a new
  connection (TCP and TLS handshakes) per call, three calls per submit; it is
  given one pooled ``requests.Session`` instead (see :class:`_PooledRequests`);
* truss ``print()``s Baseten's 4xx messages; they are logged as JSON instead;
* a failed push keeps truss's temporary archive alive in its traceback, so the
  traceback's frames are cleared at once (see :func:`_release_frames`).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_api.core.errors import (
    InternalError,
    ServiceError,
    UpstreamError,
    UpstreamUnavailableError,
)
from finetune_api.core.logs import get_logger, log, scrub
from finetune_api.core.settings import Settings

if TYPE_CHECKING:
    import requests

ENV_REMOTE_NAME = "<environment>"
_REMOTE_URL_ENV = "BASETEN_TRUSS_AUTH_REMOTE_URL"
_API_KEY_ENV = "BASETEN_TRUSS_AUTH_API_KEY"

_logger = get_logger("baseten_push")
_setup_lock = threading.Lock()
_prepared = False

# Pooled connections idle for longer are dropped, not reused: a load balancer or
# NAT may have forgotten them silently (Cloud NAT keeps idle TCP for 20 minutes).
POOL_IDLE_SECONDS = 20.0
POOL_MAX_CONNECTIONS = 32


class _PooledRequests:
    """Stands in for the ``requests`` module inside ``truss.remote.baseten.rest_client``.

    truss calls ``requests.get/post/delete/patch(url, headers=..., json=...,
    timeout=...)``: a throw-away Session, hence a new connection, per call. These
    go through one shared Session (thread-safe for this use: no session state
    is changed per call, and cookies are refused so none carries over between
    calls, as before); anything else is the real module. A Session left idle for
    ``POOL_IDLE_SECONDS`` is replaced before use (closing it only drops its idle
    connections; a call still in flight keeps its own).
    """

    def __init__(self) -> None:
        import requests

        self._requests = requests
        self._lock = threading.Lock()
        self._session: requests.Session | None = None
        self._last_used = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._requests, name)

    def _new_session(self) -> requests.Session:
        from http.cookiejar import DefaultCookiePolicy

        from requests.adapters import HTTPAdapter

        session = self._requests.Session()
        session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_MAX_CONNECTIONS)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    def session(self) -> requests.Session:
        with self._lock:
            now = time.monotonic()
            if self._session is None or now - self._last_used > POOL_IDLE_SECONDS:
                if self._session is not None:
                    self._session.close()
                self._session = self._new_session()
            self._last_used = now
            return self._session

    def _call(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            return self.session().request(method, url, **kwargs)
        finally:
            with self._lock:
                self._last_used = time.monotonic()

    def get(self, url: str, params: Any = None, **kwargs: Any) -> requests.Response:
        return self._call("GET", url, params=params, **kwargs)

    def post(
        self, url: str, data: Any = None, json: Any = None, **kwargs: Any
    ) -> requests.Response:
        return self._call("POST", url, data=data, json=json, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> requests.Response:
        return self._call("DELETE", url, **kwargs)

    def patch(self, url: str, data: Any = None, **kwargs: Any) -> requests.Response:
        return self._call("PATCH", url, data=data, **kwargs)


def _truss_print(*values: object, **_: object) -> None:
    log(_logger, 20, "truss: " + " ".join(str(value) for value in values))


def _prepare_truss() -> None:
    """Import truss and patch what must be patched, once per process."""
    global _prepared
    if _prepared:
        return
    with _setup_lock:
        if _prepared:
            return
        from truss.remote.baseten import custom_types, rest_client

        original = custom_types.GitInfo.collect

        def collect_git_info(git_working_dir: Path) -> Any:
            if shutil.which("git") is None:
                return None
            return original(git_working_dir)

        custom_types.GitInfo.collect = collect_git_info  # type: ignore[method-assign,assignment]
        if not isinstance(rest_client.requests, _PooledRequests):
            rest_client.requests = _PooledRequests()  # type: ignore[assignment]
        # truss print()s Baseten's 4xx message to stdout; stdout is our JSON log
        # stream, so that text goes through the structured logger instead.
        rest_client.print = _truss_print  # type: ignore[attr-defined]
        _prepared = True


def _configure_remote(settings: Settings, api_key: str) -> None:
    """Point truss's env-configured remote at our Baseten (idempotent, cheap)."""
    from truss.remote.baseten import api as truss_api
    from truss.remote.baseten import rest_client

    # truss waits up to 60 s per read; callers of a function deserve our own budget.
    timeout = settings.baseten_timeout_seconds
    rest_client._DEFAULT_TIMEOUT_SEC = (min(10.0, timeout), timeout)  # type: ignore[assignment]
    remote_url = settings.baseten_remote_url
    if truss_api.API_URL_MAPPING.get(remote_url) != settings.resolved_api_url:
        truss_api.API_URL_MAPPING[remote_url] = settings.resolved_api_url
    # Instance-wide (not per-request) values; a rotated key replaces the old one.
    if os.environ.get(_REMOTE_URL_ENV) != remote_url:
        os.environ[_REMOTE_URL_ENV] = remote_url
    if os.environ.get(_API_KEY_ENV) != api_key:
        os.environ[_API_KEY_ENV] = api_key


def push_training_job(settings: Settings, api_key: str, config_path: Path) -> dict[str, Any]:
    """Push the staged ``config.py``; return Baseten's ``training_job`` dict (JSON-safe)."""
    _prepare_truss()
    _configure_remote(settings, api_key)
    from truss_train import public_api

    failure: ServiceError | None = None
    try:
        result = public_api.push(
            config_path, remote=ENV_REMOTE_NAME, team_id=settings.baseten_team_id
        )
    except ServiceError:
        raise
    except Exception as error:  # noqa: BLE001 - mapped below, never leaked raw
        failure = map_push_error(error)
        _release_frames(error)
    if failure is not None:
        # Raised outside the except block, so it carries no __context__ either.
        raise failure
    job = {key: value for key, value in dict(result).items() if key != "job_object"}
    if not job.get("id"):
        raise UpstreamError("Baseten answered the job creation without a job id")
    return job


def _release_frames(error: BaseException) -> None:
    """Drop the locals of the frames a failed push left in ``error``'s tracebacks.

    truss packs the template into a ``NamedTemporaryFile`` (deleted when
    closed) held by a local of ``prepare_push``; a failed upload keeps that
    frame alive in the traceback, often inside a reference cycle, so the
    archive stayed in TMPDIR until a later garbage collection. Clearing the
    frames closes it now.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current.__traceback__ = None
        pending += [current.__cause__, current.__context__]


def map_push_error(error: Exception) -> ServiceError:
    """Turn whatever truss/requests/boto3 raised into one of our errors, without secrets."""
    # The same status mapping as every other Baseten call.
    from finetune_api.baseten.client import requests_error

    what = "training job submission"
    transport_error = requests_error(what, error)
    if transport_error is not None:
        return transport_error
    module = type(error).__module__
    if module.startswith(("botocore", "boto3", "s3transfer")):
        log(_logger, 40, "template upload failed", error_type=type(error).__name__)
        return UpstreamUnavailableError(
            "uploading the training template to Baseten's storage failed"
        )
    log(
        _logger,
        40,
        "training job push failed",
        error_type=type(error).__name__,
        error=scrub(str(error))[:500],
    )
    return InternalError(f"preparing the training job failed ({type(error).__name__})")
