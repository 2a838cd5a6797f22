"""The Python API: submit a training job from any Python program."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .runtime import get_services

if TYPE_CHECKING:
    from .schemas import TrainingRequest


def handle_training_request(
    dataset_id: str,
    model_id: str,
    project_name: str | None = None,
    training_template_dir: Path | str | None = None,
    *,
    job_name: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    compute: dict[str, Any] | None = None,
    deploy: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    message_id: str | None = None,
) -> dict[str, Any]:
    """Start a Baseten training job fine-tuning ``model_id`` on ``dataset_id``.

    Validates exactly as ``POST /jobs`` does, stages the training template
    (``training_template_dir`` or the configured one) and pushes it to
    Baseten. With ``idempotency_key``, calling again with the same key returns
    the original job (``idempotent_replay: True``) instead of starting another.

    Returns the Job object as a JSON-ready dict (``training_project_id``,
    ``training_job_id``, ``status``, ``dashboard_url``, ...).

    Raises a :class:`finetune_api.errors.ServiceError` subclass on failure:
    ``InvalidRequestError`` (bad argument), ``UpstreamRejectedError`` (Baseten
    refused the job), ``UpstreamUnavailableError`` / ``SecretUnavailableError``
    (retry later), ``UpstreamError``, ``ConfigurationError``. Each carries
    ``.status`` and ``.body`` (the CONTRACT error JSON).
    """
    body: dict[str, Any] = {"dataset_id": dataset_id, "model_id": model_id}
    optional = {
        "project_name": project_name,
        "job_name": job_name,
        "hyperparameters": hyperparameters,
        "compute": compute,
        "deploy": deploy,
    }
    body.update({name: value for name, value in optional.items() if value is not None})
    return _submit(
        _validate(body),
        idempotency_key=idempotency_key,
        message_id=message_id,
        template_dir=Path(training_template_dir) if training_template_dir is not None else None,
    )


def submit_body(
    body: Any, *, idempotency_key: str | None = None, message_id: str | None = None
) -> dict[str, Any]:
    """Submit a decoded JSON request body (HTTP and Pub/Sub share this path).

    The body is validated once, so unknown fields and wrong types are rejected
    exactly as in ``POST /jobs``, and the validated request goes straight to the
    job service.
    """
    return _submit(_validate(body), idempotency_key=idempotency_key, message_id=message_id)


def _validate(body: Any) -> TrainingRequest:
    """The one validation pass every submission goes through."""
    # pydantic is imported by the first request that needs it, not at cold start.
    from .schemas import parse_training_request

    return parse_training_request(body, get_services().settings)


def _submit(
    request: TrainingRequest,
    *,
    idempotency_key: str | None,
    message_id: str | None,
    template_dir: Path | None = None,
) -> dict[str, Any]:
    job = get_services().jobs.submit(
        request,
        idempotency_key=idempotency_key,
        message_id=message_id,
        template_dir=template_dir,
    )
    result: dict[str, Any] = job.model_dump(mode="json")
    return result


def deploy_checkpoint(
    project_id: str,
    job_id: str,
    *,
    checkpoint_id: str | None = None,
    model_name: str | None = None,
    compute: dict[str, Any] | None = None,
    dry_run: bool = False,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Serve a checkpoint of a completed training job as a Baseten model.

    Validates exactly as ``POST /jobs/{project_id}/{job_id}/deployments`` does.
    Defaults: the job's newest LoRA checkpoint, a model name derived from the
    job name, one GPU of the first allowed accelerator. Deploying the same
    checkpoint under the same model name again returns the existing deployment
    (``idempotent_replay: True``). ``dry_run`` validates with Baseten and creates
    nothing (``status: "dry_run"``).

    Returns the Deployment object (``model_id``, ``deployment_id``, ``status``,
    ``predict_url``, ...). Raises the same :class:`ServiceError` subclasses as
    :func:`handle_training_request`, plus ``ConflictError`` (the job is not
    completed or has no checkpoint) and ``NotFoundError`` (unknown job or checkpoint).
    """
    body: dict[str, Any] = {
        name: value
        for name, value in {
            "checkpoint_id": checkpoint_id,
            "model_name": model_name,
            "compute": compute,
        }.items()
        if value is not None
    }
    if dry_run:
        body["dry_run"] = True
    return deploy_body(project_id, job_id, body, idempotency_key=idempotency_key)


def deploy_body(
    project_id: str, job_id: str, body: Any, *, idempotency_key: str | None = None
) -> dict[str, Any]:
    """Deploy from a decoded JSON body (``None`` = every default); HTTP shares this path."""
    from .schemas import parse_deployment_request

    services = get_services()
    request = parse_deployment_request(body, services.settings)
    deployment = services.deployments.deploy(
        project_id, job_id, request, idempotency_key=idempotency_key
    )
    result: dict[str, Any] = deployment.model_dump(mode="json")
    return result


def get_deployment(model_id: str, deployment_id: str) -> dict[str, Any]:
    """The Deployment object of one deployment (raises ``NotFoundError`` if unknown)."""
    result: dict[str, Any] = (
        get_services().deployments.get(model_id, deployment_id).model_dump(mode="json")
    )
    return result


def deactivate_deployment(model_id: str, deployment_id: str) -> dict[str, Any]:
    """Deactivate a deployment (it stops costing money); returns it afterwards."""
    deployment = get_services().deployments.deactivate(model_id, deployment_id)
    result: dict[str, Any] = deployment.model_dump(mode="json")
    return result
