"""The serving half of ``poll_jobs``: deploy on completion, and watch deployments.

Called once per poll with the jobs whose status changed inside the window.

Deploy on completion: a submit request may carry ``"deploy": {"on_completion":
true, ...}``; it travels inside the job as the staged template's
``runtime_config.json``, read back through Baseten's ``GET …/download`` (the
archive is read in memory, never written to disk). When such a job completed
inside the window, its final checkpoint is deployed through
:class:`~finetune_api.serving.deployments.DeploymentService`, whose naming makes it
exactly-once across polls, retries and instances; ``training_job.deployed``
follows (stable id, so a repeat is deduped by receivers). A failure emits
``training_job.deployment_failed`` with the reason; later polls retry while the
completion is inside their window, at most ``DEPLOY_MAX_ATTEMPTS`` times per
instance.

Watching: every deployment named with this service's marker, created within
``DEPLOYMENT_WATCH_SECONDS``, gets ``deployment.<status>`` when its status
differs from what this instance last reported (id ``evt_<deployment>_deployment_<status>``,
stable across polls and instances). Cost: 1 models request plus 1 deployments
request per model.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import lzma
import tarfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from finetune_api.core.errors import ServiceError
from finetune_api.core.logs import context, get_logger, log
from finetune_api.core.schemas import DeploymentRequest, job_from_baseten
from finetune_api.core.settings import Settings
from finetune_api.core.timestamps import parse_time
from finetune_api.jobs.scope import parse_marker
from finetune_api.notify.events import (
    Event,
    deployed_event,
    deployment_event,
    deployment_failed_event,
    emit_guarded,
)
from finetune_api.notify.webhooks import DeliveryResult
from finetune_api.serving.deployments import DeploymentService

_logger = get_logger("deployment_watch")

COMPLETED = "TRAINING_JOB_COMPLETED"
RUNTIME_CONFIG = "runtime_config.json"
MAX_ARCHIVE_BYTES = 64 * 1024 * 1024
MAX_CONFIG_BYTES = 1024 * 1024
#: Caps on reading one archive (a template is a few files of a few KB).
MAX_ARCHIVE_MEMBERS = 1000
MAX_ARCHIVE_UNPACKED_BYTES = 32 * 1024 * 1024
MAX_ARCHIVE_SECONDS = 2.0
_MEMORY = 4096


class ServingReads(Protocol):
    def job_artifact_urls(self, project_id: str, job_id: str) -> list[str]: ...
    def fetch_artifact(self, url: str, max_bytes: int) -> bytes: ...
    def list_models(self, name: str | None = None) -> list[dict[str, Any]]: ...
    def list_deployments(self, model_id: str, name: str | None = None) -> list[dict[str, Any]]: ...
    def list_projects(self) -> list[dict[str, Any]]: ...


class EventEmitter(Protocol):
    def emit(self, event: Event) -> DeliveryResult: ...


@dataclass
class WatchOutcome:
    events: int = 0
    delivered: int = 0
    webhook_failures: int = 0
    deployments_checked: int = 0
    failed: int = 0


class ArchiveUnreadable(Exception):
    """An archive that cannot be read, or not within the caps; the message is safe to log."""


class _Capped(io.RawIOBase):
    """The decompressed bytes of an archive, up to a byte cap and a deadline."""

    def __init__(self, raw: Any, limit: int, deadline: float) -> None:
        self._raw = raw
        self._limit = limit
        self._deadline = deadline
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if time.monotonic() > self._deadline:
            raise ArchiveUnreadable(f"reading it took longer than {MAX_ARCHIVE_SECONDS:g} s")
        data = self._raw.read(min(len(buffer), 1 << 16))
        self.total += len(data)
        if self.total > self._limit:
            raise ArchiveUnreadable(f"it unpacks to more than {self._limit} bytes")
        buffer[: len(data)] = data
        return len(data)


def _decompressed(data: bytes) -> Any:
    """A reader of ``data``'s tar stream: gzip, bz2 or xz undone as it is read."""
    source = io.BytesIO(data)
    if data[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=source, mode="rb")
    if data[:3] == b"BZh":
        return bz2.BZ2File(source, mode="rb")
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(source, mode="rb")
    return source


def read_runtime_config(data: bytes) -> dict[str, Any] | None:
    """``runtime_config.json`` of a pushed template archive (a tar, compressed or not).

    Any user of the Baseten workspace can push an archive, so it is read as a
    stream, once, within :data:`MAX_ARCHIVE_MEMBERS` members,
    :data:`MAX_ARCHIVE_UNPACKED_BYTES` decompressed bytes and
    :data:`MAX_ARCHIVE_SECONDS`; nothing is written to disk. The shallowest
    ``runtime_config.json`` wins. Raises :class:`ArchiveUnreadable` (truncated,
    corrupt, or over a cap); None when the archive holds no usable config.
    """
    deadline = time.monotonic() + MAX_ARCHIVE_SECONDS
    best: bytes | None = None
    best_depth = -1
    try:
        stream = _Capped(_decompressed(data), MAX_ARCHIVE_UNPACKED_BYTES, deadline)
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for count, member in enumerate(archive, start=1):
                if count > MAX_ARCHIVE_MEMBERS:
                    raise ArchiveUnreadable(f"it holds more than {MAX_ARCHIVE_MEMBERS} members")
                if member.offset_data + member.size > MAX_ARCHIVE_UNPACKED_BYTES:
                    raise ArchiveUnreadable(
                        f"it unpacks to more than {MAX_ARCHIVE_UNPACKED_BYTES} bytes"
                    )
                if not member.isfile() or member.name.rsplit("/", 1)[-1] != RUNTIME_CONFIG:
                    continue
                depth = member.name.count("/")
                if member.size > MAX_CONFIG_BYTES or (best is not None and depth >= best_depth):
                    continue
                handle = archive.extractfile(member)
                if handle is not None:
                    best, best_depth = handle.read(), depth
    except ArchiveUnreadable:
        raise
    except Exception as error:  # noqa: BLE001 - truncated, corrupt: all the archive's fault
        raise ArchiveUnreadable(f"it cannot be read ({type(error).__name__})") from None
    if best is None:
        return None
    try:
        config = json.loads(best.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return config if isinstance(config, dict) else None


def runtime_config_from_archive(data: bytes) -> dict[str, Any] | None:
    """:func:`read_runtime_config`, where an unreadable archive is None, logged."""
    try:
        return read_runtime_config(data)
    except ArchiveUnreadable as problem:
        log(
            _logger,
            logging.WARNING,
            "a job's archive is unreadable; taken as holding no deploy request",
            reason=str(problem),
        )
        return None


class DeploymentWatch:
    """Process-wide and thread-safe; what it remembers only saves repeats."""

    def __init__(
        self, settings: Settings, client: ServingReads, service: DeploymentService
    ) -> None:
        self._settings = settings
        self._client = client
        self._service = service
        self._lock = threading.Lock()
        self._reported: OrderedDict[str, str] = OrderedDict()
        self._specs: OrderedDict[str, dict[str, Any] | None] = OrderedDict()
        self._attempts: dict[str, int] = {}
        # Jobs this instance already deployed: later polls need not replay them.
        self._deployed: OrderedDict[str, None] = OrderedDict()

    def run(
        self,
        sink: EventEmitter,
        changed_jobs: Iterable[dict[str, Any]],
        until: datetime,
    ) -> WatchOutcome:
        outcome = WatchOutcome()
        for raw in changed_jobs:
            if raw.get("current_status") == COMPLETED:
                self._deploy_on_completion(sink, raw, outcome)
        try:
            self._watch(sink, until, outcome)
        except ServiceError as error:
            outcome.failed += 1
            log(
                _logger,
                logging.ERROR,
                "could not read deployments; they wait for the next poll",
                reason=f"{error.type}: {error.message}",
            )
        return outcome

    # -- deploy on completion -----------------------------------------------

    def _deploy_spec(self, project_id: str, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            if job_id in self._specs:
                return self._specs[job_id]
        spec: dict[str, Any] | None = None
        for url in self._client.job_artifact_urls(project_id, job_id):
            config = runtime_config_from_archive(
                self._client.fetch_artifact(url, MAX_ARCHIVE_BYTES)
            )
            if config is not None:
                deploy = config.get("deploy")
                spec = deploy if isinstance(deploy, dict) else None
                break
        with self._lock:
            self._specs[job_id] = spec
            while len(self._specs) > _MEMORY:
                self._specs.popitem(last=False)
        return spec

    def _deploy_on_completion(
        self, sink: EventEmitter, raw: dict[str, Any], outcome: WatchOutcome
    ) -> None:
        if not self._service.scope.allows(raw):
            return  # outside PROJECT_NAME_PREFIX: its archive is never fetched
        try:
            job = job_from_baseten(raw, self._settings.baseten_remote_url)
        except Exception:  # noqa: BLE001 - the poller already reported this job as odd
            return
        with context(
            training_project_id=job.training_project_id, training_job_id=job.training_job_id
        ):
            with self._lock:
                attempts = self._attempts.get(job.training_job_id, 0)
                done = job.training_job_id in self._deployed
            if done or attempts >= self._settings.deploy_max_attempts:
                return
            try:
                spec = self._deploy_spec(job.training_project_id, job.training_job_id)
            except ServiceError as error:
                outcome.failed += 1
                log(
                    _logger,
                    logging.ERROR,
                    "could not read the job's deploy request; the next poll retries",
                    reason=f"{error.type}: {error.message}",
                )
                return
            if not spec or spec.get("on_completion") is not True:
                return
            try:
                request = self._request(spec)
                # Never undo a deactivation the user made to stop paying.
                deployment = self._service.deploy(
                    job.training_project_id, job.training_job_id, request, reactivate=False
                )
            except ServiceError as error:
                with self._lock:
                    attempt = self._attempts[job.training_job_id] = attempts + 1
                outcome.failed += 1
                reason = {"type": error.type, "message": error.message}
                self._emit(
                    sink,
                    deployment_failed_event(
                        job,
                        reason=reason,
                        attempt=attempt,
                        max_attempts=self._settings.deploy_max_attempts,
                    ),
                    outcome,
                )
                return
            with self._lock:
                self._attempts.pop(job.training_job_id, None)
                self._deployed[job.training_job_id] = None
                while len(self._deployed) > _MEMORY:
                    self._deployed.popitem(last=False)
            self._emit(sink, deployed_event(deployment), outcome)

    def _request(self, spec: dict[str, Any]) -> DeploymentRequest:
        """The stored deploy request, validated against today's settings (guards may have moved)."""
        from finetune_api.core.schemas import parse_deployment_request

        return parse_deployment_request(
            {"model_name": spec.get("model_name"), "compute": spec.get("compute") or {}},
            self._settings,
        )

    # -- watching ---------------------------------------------------------------

    def _watch(self, sink: EventEmitter, until: datetime, outcome: WatchOutcome) -> None:
        horizon = until - timedelta(seconds=self._settings.deployment_watch_seconds)
        scope = self._service.scope
        # Under PROJECT_NAME_PREFIX, a deployment is watched only when the project
        # its marker names is in scope (1 more request: the project list).
        projects: dict[str, Any] | None = None
        if scope.limited:
            projects = {str(p.get("id")): p.get("name") for p in self._client.list_projects()}
        for model in self._client.list_models():
            model_id = str(model.get("id") or "")
            if not model_id:
                continue
            try:
                deployments = self._client.list_deployments(model_id)
            except ServiceError as error:
                # One model failing (or deleted since the list) spares the others.
                outcome.failed += 1
                log(
                    _logger,
                    logging.ERROR,
                    "could not read a model's deployments; they wait for the next poll",
                    model_id=model_id,
                    reason=f"{error.type}: {error.message}",
                )
                continue
            for raw in deployments:
                source = parse_marker(raw.get("name"))
                if source is None:
                    continue
                if projects is not None and not scope.allows_project_name(projects.get(source[0])):
                    continue
                created = parse_time(raw.get("created_at"))
                if created is not None and created < horizon:
                    continue
                outcome.deployments_checked += 1
                autoscaling = raw.get("autoscaling_settings")
                if isinstance(autoscaling, dict) and (autoscaling.get("min_replica") or 0) > 0:
                    # Worth saying on every poll: it bills while idle.
                    log(
                        _logger,
                        logging.WARNING,
                        "deployment keeps replicas when idle (min_replica > 0): it bills "
                        "until deactivated",
                        model_id=model_id,
                        deployment_id=raw.get("id"),
                        min_replica=autoscaling.get("min_replica"),
                    )
                deployment = self._service.as_deployment(
                    {**raw, "model_id": raw.get("model_id") or model_id}, model.get("name")
                )
                key = str(deployment.deployment_id)
                with self._lock:
                    if self._reported.get(key) == deployment.status:
                        continue
                    self._reported[key] = deployment.status
                    self._reported.move_to_end(key)
                    while len(self._reported) > _MEMORY:
                        self._reported.popitem(last=False)
                self._emit(sink, deployment_event(deployment), outcome)

    def _emit(self, sink: EventEmitter, event: Event, outcome: WatchOutcome) -> None:
        outcome.events += 1
        result = emit_guarded(sink, event)
        if result.delivered:
            outcome.delivered += 1
        elif result.failed:
            outcome.webhook_failures += 1


__all__ = [
    "ArchiveUnreadable",
    "DeploymentWatch",
    "WatchOutcome",
    "read_runtime_config",
    "runtime_config_from_archive",
]
