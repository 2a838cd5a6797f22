"""The deployment service: serve a training checkpoint as a Baseten model.

``deploy`` checks the job (completed, has the checkpoint), fills the defaults,
and creates the deployment through the truss adapter (:mod:`.baseten_deploy`);
``get`` and ``deactivate`` read and stop one. Nothing about HTTP or truss is
visible here.

No database: a deployment this service creates is *named* on Baseten after
what it serves, ``ft.<project_id>.<job_id>.<checkpoint_id>`` (its marker; a
deployment name is unique among a model's deployments and settable through
the published ``PATCH /v1/models/{m}/deployments/{d}``). So:

* a replay (same checkpoint, same model name) is found with two REST reads,
  ``GET /v1/models?name=`` and ``GET /v1/models/{m}/deployments?name=<marker>``,
  and answered with the existing deployment instead of a second billable one;
* concurrent duplicates (other instances) cannot both take the marker: the
  loser of the rename deletes its own new deployment and answers with the
  winner. When the model itself was new, two same-named models could have
  been created by racing instances; the earliest deployment carrying the
  marker is kept and the others deleted, as for jobs;
* ``poll_jobs`` recognises the deployments to watch by the marker alone.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from finetune_api.core.errors import (
    ConflictError,
    NotFoundError,
    ServiceError,
    UpstreamError,
    UpstreamRejectedError,
)
from finetune_api.core.logs import get_logger, log
from finetune_api.core.schemas import (
    NAME,
    Deployment,
    DeploymentRequest,
    short_status,
    split_job_name,
)
from finetune_api.core.settings import Settings
from finetune_api.jobs.scope import MARKER_PREFIX, JobScope, parse_marker
from finetune_api.jobs.service import KeyedLocks, check_idempotency_key

_logger = get_logger("deployments")

COMPLETED = "TRAINING_JOB_COMPLETED"
_CHECKPOINT_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,120}\Z")
_ID_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
INSTANCE_TYPES_TTL_SECONDS = 300.0


class DeploymentReads(Protocol):
    def get_job(self, project_id: str, job_id: str) -> dict[str, Any]: ...
    def list_checkpoints(self, project_id: str, job_id: str) -> list[dict[str, Any]]: ...
    def list_models(self, name: str | None = None) -> list[dict[str, Any]]: ...
    def get_model(self, model_id: str) -> dict[str, Any]: ...
    def list_deployments(self, model_id: str, name: str | None = None) -> list[dict[str, Any]]: ...
    def get_deployment(self, model_id: str, deployment_id: str) -> dict[str, Any]: ...
    def rename_deployment(self, model_id: str, deployment_id: str, name: str) -> dict[str, Any]: ...
    def deactivate_deployment(self, model_id: str, deployment_id: str) -> dict[str, Any]: ...
    def activate_deployment(self, model_id: str, deployment_id: str) -> dict[str, Any]: ...
    def delete_deployment(self, model_id: str, deployment_id: str) -> dict[str, Any]: ...


class Deployer(Protocol):
    """The truss side: instance types and the create mutation (see baseten_deploy)."""

    def instance_types(self) -> list[Any]: ...
    def create(self, request: dict[str, Any]) -> dict[str, Any]: ...


def deployment_marker(project_id: str, job_id: str, checkpoint_id: str) -> str | None:
    """The Baseten deployment name that says what it serves; None if an id cannot fit."""
    if not (_ID_SAFE.match(project_id) and _ID_SAFE.match(job_id)):
        return None
    if not _CHECKPOINT_SAFE.match(checkpoint_id):
        return None
    return f"{MARKER_PREFIX}{project_id}.{job_id}.{checkpoint_id}"


def default_model_name(job: dict[str, Any]) -> str:
    """The job's own name (without an idempotency suffix), made a valid model name."""
    name, _ = split_job_name(job.get("name"))
    candidate = re.sub(r"[^A-Za-z0-9._-]+", "-", name or "")[:64].strip(".-_")
    if not candidate or not NAME.fullmatch(candidate):
        candidate = f"ft-{job.get('id')}"[:64]
    return candidate


def _created_order(item: tuple[dict[str, Any], dict[str, Any]]) -> tuple[str, str]:
    _, deployment = item
    return (str(deployment.get("created_at") or ""), str(deployment.get("id") or ""))


class DeploymentService:
    def __init__(
        self,
        settings: Settings,
        client: DeploymentReads,
        deployer: Deployer,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._client = client
        self._scope = JobScope(settings.project_name_prefix, client)
        self._deployer = deployer
        self._locks = KeyedLocks()
        self._clock = clock
        self._types_lock = threading.Lock()
        # Teams: ``owns_project(project_id)`` (set per team by the composition root).
        # True/False: the project's team is/is not the caller's; None: no record.
        self.owns_project: Callable[[str], bool | None] | None = None
        self._types: tuple[float, list[Any]] | None = None

    @property
    def scope(self) -> JobScope:
        """The jobs (PROJECT_NAME_PREFIX) this service acts on; the poll's watch shares it."""
        return self._scope

    # -- conversion ---------------------------------------------------------

    def as_deployment(
        self, raw: dict[str, Any], model_name: str | None, *, replay: bool = False
    ) -> Deployment:
        model_id = str(raw.get("model_id") or "")
        deployment_id = str(raw.get("id") or "")
        source = parse_marker(raw.get("name"))
        invoke_host = self._settings.inference_url.replace("{model_id}", model_id)
        app_url = self._settings.baseten_remote_url.rstrip("/")
        return Deployment(
            model_id=model_id,
            deployment_id=deployment_id,
            model_name=model_name,
            status=str(raw.get("status") or "UNKNOWN").lower(),
            training_project_id=source[0] if source else None,
            training_job_id=source[1] if source else None,
            checkpoint_id=source[2] if source else None,
            predict_url=f"{invoke_host}/deployment/{deployment_id}/sync/v1/chat/completions",
            dashboard_url=f"{app_url}/models/{model_id}/logs/{deployment_id}",
            created_at=raw.get("created_at"),
            idempotent_replay=replay,
        )

    # -- deploy ---------------------------------------------------------------

    def deploy(
        self,
        project_id: str,
        job_id: str,
        request: DeploymentRequest,
        *,
        idempotency_key: str | None = None,
        reactivate: bool = True,
    ) -> Deployment:
        """Deploy a checkpoint of a completed job; a replay answers the existing deployment.

        A replay finding the deployment deactivated activates it again when
        ``reactivate`` (an explicit request to serve it); the deploy on
        completion passes False, so it never undoes a user's deactivation.
        """
        key = check_idempotency_key(idempotency_key)
        job = self._scope.read_job(project_id, job_id)
        status = str(job.get("current_status") or "")
        if status != COMPLETED:
            raise ConflictError(
                f"the training job is {short_status(status) or 'in an unknown state'}; "
                "only a completed job can be deployed"
            )
        checkpoint_id = self._checkpoint(project_id, job_id, request.checkpoint_id)
        model_name = request.model_name or default_model_name(job)
        # Under PROJECT_NAME_PREFIX, never into someone else's model (nothing created).
        self._scope.check_model(model_name, self._client)
        marker = deployment_marker(project_id, job_id, checkpoint_id)
        if marker is None:
            raise UpstreamRejectedError(
                "the checkpoint has a name this service cannot deploy "
                "(only A-Z a-z 0-9 . _ -, at most 120 characters)"
            )
        accelerator = request.compute.accelerator or self._settings.allowed_accelerators[0]
        # Same-instance duplicates (and retries with the same key) wait here and replay.
        with self._locks.hold(f"{model_name}/{marker}"):
            if request.dry_run:
                return self._dry_run(
                    project_id, job_id, checkpoint_id, model_name, accelerator, request
                )
            models, existing = self._find(model_name, marker)
            if existing:
                model, raw = existing[0]
                if reactivate and str(raw.get("status")) == "INACTIVE":
                    model_id, deployment_id = str(model["id"]), str(raw["id"])
                    self._client.activate_deployment(model_id, deployment_id)
                    raw = {**self._client.get_deployment(model_id, deployment_id)}
                    log(
                        _logger,
                        20,
                        "reactivated a deactivated deployment",
                        model_id=model_id,
                        deployment_id=deployment_id,
                    )
                return self._logged(self.as_deployment(raw, model.get("name"), replay=True), key)
            request_data = self._request(
                model_name, job_id, checkpoint_id, accelerator, request.compute.gpu_count, False
            )
            result = self._deployer.create(request_data)
            version = result.get("model_version")
            if (
                not isinstance(version, dict)
                or not version.get("id")
                or not version.get("model_id")
            ):
                raise UpstreamError("Baseten answered the deployment without a model version")
            model_id, deployment_id = str(version["model_id"]), str(version["id"])
            deployment = self._claim(model_id, deployment_id, model_name, marker)
            if not models and not deployment.idempotent_replay:
                # The model was new: racing instances may have made same-named twins.
                deployment = self._keep_earliest(model_name, marker, deployment)
            return self._logged(deployment, key)

    def _logged(self, deployment: Deployment, key: str | None) -> Deployment:
        log(
            _logger,
            20,
            "deployment replayed" if deployment.idempotent_replay else "deployment created",
            model_id=deployment.model_id,
            deployment_id=deployment.deployment_id,
            training_project_id=deployment.training_project_id,
            training_job_id=deployment.training_job_id,
            checkpoint_id=deployment.checkpoint_id,
            idempotency_key_given=key is not None,
        )
        return deployment

    def _checkpoint(self, project_id: str, job_id: str, wanted: str | None) -> str:
        checkpoints = self._client.list_checkpoints(project_id, job_id)
        ids = [str(c.get("checkpoint_id") or c.get("id") or "") for c in checkpoints]
        if wanted is not None:
            if wanted not in ids:
                raise NotFoundError("checkpoint not found in the training job")
            return wanted
        loras = [c for c in checkpoints if str(c.get("checkpoint_type") or "").lower() == "lora"]
        if not loras:
            raise ConflictError(
                "the training job has no LoRA checkpoint to deploy"
                + (" (name one with checkpoint_id)" if checkpoints else "")
            )
        # The newest is the final one when the job wrote it last.
        newest = max(
            enumerate(loras), key=lambda pair: (str(pair[1].get("created_at") or ""), pair[0])
        )[1]
        return str(newest.get("checkpoint_id") or newest.get("id"))

    def _instance_types(self) -> list[Any]:
        with self._types_lock:
            cached = self._types
            if cached is not None and self._clock() - cached[0] < INSTANCE_TYPES_TTL_SECONDS:
                return cached[1]
        types = self._deployer.instance_types()
        with self._types_lock:
            self._types = (self._clock(), types)
        return types

    def _request(
        self,
        model_name: str,
        job_id: str,
        checkpoint_id: str,
        accelerator: str,
        gpu_count: int,
        dry_run: bool,
    ) -> dict[str, Any]:
        from finetune_api.baseten.deploy import choose_instance_type, inference_template_request

        instance = choose_instance_type(self._instance_types(), accelerator, gpu_count)
        if instance is None:
            raise UpstreamRejectedError(
                f"Baseten offers no single-node instance type with {gpu_count} {accelerator} GPU(s)"
            )
        return inference_template_request(
            model_name=model_name,
            training_job_id=job_id,
            checkpoint_id=checkpoint_id,
            instance_type_id=instance.id,
            hf_token_secret_name=self._settings.hf_token_secret_name,
            dry_run=dry_run,
        )

    def _dry_run(
        self,
        project_id: str,
        job_id: str,
        checkpoint_id: str,
        model_name: str,
        accelerator: str,
        request: DeploymentRequest,
    ) -> Deployment:
        data = self._request(
            model_name, job_id, checkpoint_id, accelerator, request.compute.gpu_count, True
        )
        self._deployer.create(data)
        return Deployment(
            model_id=None,
            deployment_id=None,
            model_name=model_name,
            status="dry_run",
            training_project_id=project_id,
            training_job_id=job_id,
            checkpoint_id=checkpoint_id,
        )

    def _find(
        self, model_name: str, marker: str
    ) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], dict[str, Any]]]]:
        """Models named ``model_name`` and their deployments carrying ``marker``, earliest first."""
        models = [m for m in self._client.list_models(model_name) if m.get("name") == model_name]
        matches = [
            (model, deployment)
            for model in models
            for deployment in self._client.list_deployments(str(model["id"]), marker)
            if deployment.get("name") == marker
        ]
        return models, sorted(matches, key=_created_order)

    def _claim(self, model_id: str, deployment_id: str, model_name: str, marker: str) -> Deployment:
        """Name the new deployment after what it serves; the first to do so wins."""
        try:
            raw = self._client.rename_deployment(model_id, deployment_id, marker)
        except UpstreamRejectedError:
            holders = [
                d
                for d in self._client.list_deployments(model_id, marker)
                if d.get("name") == marker and str(d.get("id")) != deployment_id
            ]
            self._discard(model_id, deployment_id, "a concurrent request deployed it first")
            if holders:
                return self.as_deployment(holders[0], model_name, replay=True)
            raise
        except ServiceError:
            # Unnamed, nobody could ever find it again: do not leave it running.
            self._discard(model_id, deployment_id, "it could not be named")
            raise
        return self.as_deployment({**raw, "model_id": raw.get("model_id") or model_id}, model_name)

    def _keep_earliest(self, model_name: str, marker: str, mine: Deployment) -> Deployment:
        _, matches = self._find(model_name, marker)
        if len(matches) <= 1:
            return mine
        keeper_model, keeper = matches[0]
        for model, deployment in matches[1:]:
            self._discard(
                str(model["id"]), str(deployment["id"]), "an earlier one serves the same checkpoint"
            )
        if str(keeper.get("id")) == mine.deployment_id:
            return mine
        return self.as_deployment(keeper, keeper_model.get("name"), replay=True)

    def _discard(self, model_id: str, deployment_id: str, why: str) -> None:
        try:
            self._client.delete_deployment(model_id, deployment_id)
        except NotFoundError:
            return  # already deleted by the instance that raced us
        except ServiceError as error:
            log(
                _logger,
                40,
                "could not delete a duplicate deployment; deactivate it by hand",
                model_id=model_id,
                deployment_id=deployment_id,
                reason=why,
                error_type=error.type,
            )
            return
        log(
            _logger,
            30,
            "deleted a duplicate deployment",
            model_id=model_id,
            deployment_id=deployment_id,
            reason=why,
        )

    # -- read and deactivate -------------------------------------------------------

    def get(self, model_id: str, deployment_id: str) -> Deployment:
        raw = self._read(model_id, deployment_id)
        model = self._client.get_model(model_id)
        return self.as_deployment({**raw, "model_id": model_id}, model.get("name"))

    def deactivate(self, model_id: str, deployment_id: str) -> Deployment:
        """Deactivate (stop paying for) a deployment; answer it as it is afterwards.

        Only a deployment this service made (it carries the marker), with or
        without PROJECT_NAME_PREFIX: deactivating is a write, and the workspace's
        other models are not this service's to stop. Anything else answers as unknown.
        """
        self._read(model_id, deployment_id, ours_only=True)
        self._client.deactivate_deployment(model_id, deployment_id)
        return self.get(model_id, deployment_id)

    def _read(
        self, model_id: str, deployment_id: str, *, ours_only: bool = False
    ) -> dict[str, Any]:
        """Baseten's deployment; with PROJECT_NAME_PREFIX, only one of a job callers may see.

        The training job is known from the name this service gives its deployments;
        any other deployment answers exactly as an unknown one (so does any
        deployment without the marker when ``ours_only``).
        """
        raw = self._client.get_deployment(model_id, deployment_id)
        if ours_only and parse_marker(raw.get("name")) is None:
            raise NotFoundError("deployment not found on Baseten")
        owned = None
        if self.owns_project is not None:
            # A team: its projects' team is recorded beside the job index, so another
            # team's deployment costs exactly what an unknown one does (one read).
            source = parse_marker(raw.get("name"))
            owned = self.owns_project(source[0]) if source is not None else False
            if owned is False:
                raise NotFoundError("deployment not found on Baseten")
        if owned is None and self._scope.limited:
            # No record of the project's team (a job made before teams, or whose
            # record could not be written): the job itself decides (one read).
            source = parse_marker(raw.get("name"))
            try:
                if source is None:
                    raise NotFoundError("not a deployment of this service")
                self._scope.read_job(source[0], source[1])
            except NotFoundError:
                raise NotFoundError("deployment not found on Baseten") from None
        return raw


__all__ = [
    "MARKER_PREFIX",
    "DeploymentService",
    "default_model_name",
    "deployment_marker",
    "parse_marker",
]
