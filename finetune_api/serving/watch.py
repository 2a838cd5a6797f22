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

import logging
import threading
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
from finetune_api.jobs.runtime_config import RuntimeConfigs
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


class DeploymentWatch:
    """Process-wide and thread-safe; what it remembers only saves repeats."""

    def __init__(
        self,
        settings: Settings,
        client: ServingReads,
        service: DeploymentService,
        configs: RuntimeConfigs | None = None,
    ) -> None:
        self._settings = settings
        self._client = client
        self._service = service
        self._configs = configs or RuntimeConfigs(client)
        self._lock = threading.Lock()
        self._reported: OrderedDict[str, str] = OrderedDict()
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
        config = self._configs.read(project_id, job_id)
        deploy = config.get("deploy") if config is not None else None
        return deploy if isinstance(deploy, dict) else None

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


__all__ = ["DeploymentWatch", "WatchOutcome"]
