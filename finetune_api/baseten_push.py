"""The only module that touches ``truss``: submitting a staged template.

``truss`` is imported on the first submit, not at start-up (it costs about a
second and ~97 MB), and is configured once per process:

* the remote comes from ``BASETEN_TRUSS_AUTH_REMOTE_URL`` / ``..._API_KEY``
  and is therefore named ``"<environment>"`` (truss refuses ``"baseten"``);
* truss maps app URLs to REST URLs through a hard-coded dict, so we add our
  ``BASETEN_API_URL`` to it (an unknown app URL would silently go to production);
* truss shells out to ``git`` for client info and raises FileNotFoundError when
  no ``git`` binary exists, so that lookup degrades to "no git info".
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

from .errors import (
    InternalError,
    NotFoundError,
    ServiceError,
    UpstreamError,
    UpstreamRejectedError,
    UpstreamUnavailableError,
)
from .logs import get_logger, log, scrub
from .settings import Settings

ENV_REMOTE_NAME = "<environment>"
_REMOTE_URL_ENV = "BASETEN_TRUSS_AUTH_REMOTE_URL"
_API_KEY_ENV = "BASETEN_TRUSS_AUTH_API_KEY"

_logger = get_logger("baseten_push")
_setup_lock = threading.Lock()
_prepared = False


def _prepare_truss() -> None:
    """Import truss and patch what must be patched, once per process."""
    global _prepared
    if _prepared:
        return
    with _setup_lock:
        if _prepared:
            return
        from truss.remote.baseten import custom_types

        original = custom_types.GitInfo.collect

        def collect_git_info(git_working_dir: Path) -> Any:
            if shutil.which("git") is None:
                return None
            return original(git_working_dir)

        custom_types.GitInfo.collect = collect_git_info  # type: ignore[method-assign,assignment]
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

    try:
        result = public_api.push(
            config_path, remote=ENV_REMOTE_NAME, team_id=settings.baseten_team_id
        )
    except ServiceError:
        raise
    except Exception as error:  # noqa: BLE001 - mapped below, never leaked raw
        raise map_push_error(error) from None
    job = {key: value for key, value in dict(result).items() if key != "job_object"}
    if not job.get("id"):
        raise UpstreamError("Baseten answered the job creation without a job id")
    return job


def _baseten_message(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return scrub(value)[:500]
    return ""


def _retry_after(response: Any) -> int | None:
    try:
        body = response.json()
        value = body.get("retry_after") if isinstance(body, dict) else None
        if value is None:
            value = response.headers.get("Retry-After")
        return max(1, int(float(value))) if value is not None else None
    except (ValueError, TypeError):
        return None


def map_push_error(error: Exception) -> ServiceError:
    """Turn whatever truss/requests/boto3 raised into one of our errors, without secrets."""
    import requests

    if isinstance(error, requests.HTTPError) and error.response is not None:
        response = error.response
        status = response.status_code
        message = _baseten_message(response)
        if status == 429:
            return UpstreamUnavailableError(
                "Baseten rate-limited the request; retry later", retry_after=_retry_after(response)
            )
        if status in (401, 403):
            return UpstreamError("Baseten refused our credentials (check BASETEN_API_KEY)")
        if status == 404:
            return NotFoundError(message or "Baseten did not find the training project")
        if 400 <= status < 500:
            return UpstreamRejectedError(message or f"Baseten rejected the training job ({status})")
        return UpstreamError(
            f"Baseten failed with HTTP {status}" + (f": {message}" if message else "")
        )
    if isinstance(error, requests.Timeout):
        return UpstreamUnavailableError("Baseten did not answer in time")
    if isinstance(error, requests.ConnectionError):
        return UpstreamUnavailableError("could not connect to Baseten")
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
