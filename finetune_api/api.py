"""The Python API: submit a training job from any Python program."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_api.core.errors import InvalidRequestError
from finetune_api.runtime import acting_for, get_services

if TYPE_CHECKING:
    from finetune_api.core.schemas import TrainingRequest


def handle_training_request(
    dataset_id: str | None,
    model_id: str,
    project_name: str | None = None,
    training_template_dir: Path | str | None = None,
    *,
    job_name: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    compute: dict[str, Any] | None = None,
    deploy: dict[str, Any] | None = None,
    retry: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    message_id: str | None = None,
    training_file: str | None = None,
    validation_file: str | None = None,
    method: str | None = None,
    integrations: list[dict[str, Any]] | None = None,
    team: str | None = None,
) -> dict[str, Any]:
    """Start a Baseten training job fine-tuning ``model_id`` on ``dataset_id``.

    Or on your own data: ``dataset_id=None, training_file="file-…"`` (or
    ``"gs://bucket/object"``), optionally with ``validation_file``.
    ``method``: ``"supervised"`` (default) or ``"dpo"`` (a preference file;
    ``hyperparameters={"dpo_beta": …}``).
    ``integrations`` (OpenAI's shape, ``[{"type": "wandb", "wandb": {"project": …}}]``)
    reports the run to W&B.

    Validates exactly as ``POST /jobs`` does, stages the training template
    (``training_template_dir`` or the configured one) and pushes it to
    Baseten. With ``idempotency_key``, calling again with the same key returns
    the original job (``idempotent_replay: True``) instead of starting another.

    Returns the Job object as a JSON-ready dict (``training_project_id``,
    ``training_job_id``, ``status``, ``dashboard_url``, ...).

    Raises a :class:`finetune_api.core.errors.ServiceError` subclass on failure:
    ``InvalidRequestError`` (bad argument), ``UpstreamRejectedError`` (Baseten
    refused the job), ``UpstreamUnavailableError`` / ``SecretUnavailableError``
    (retry later), ``UpstreamError``, ``ConfigurationError``. Each carries
    ``.status`` and ``.body`` (the CONTRACT error JSON).
    """
    body: dict[str, Any] = {"model_id": model_id}
    optional = {
        "dataset_id": dataset_id,
        "training_file": training_file,
        "validation_file": validation_file,
        "project_name": project_name,
        "job_name": job_name,
        "hyperparameters": hyperparameters,
        "compute": compute,
        "deploy": deploy,
        "retry": retry,
        "method": method,
        "integrations": integrations,
    }
    body.update({name: value for name, value in optional.items() if value is not None})
    template_dir = Path(training_template_dir) if training_template_dir is not None else None
    with _as_team(team):
        return _submit(
            _validate(body),
            idempotency_key=idempotency_key,
            message_id=message_id,
            template_dir=template_dir,
        )


def submit_body(
    body: Any, *, idempotency_key: str | None = None, message_id: str | None = None
) -> dict[str, Any]:
    """Submit a decoded JSON request body (HTTP and Pub/Sub share this path).

    The body is validated once, so unknown fields and wrong types are rejected
    exactly as in ``POST /jobs``, and the validated request goes straight to the
    job service.
    """
    request = _validate(body)
    if request.dry_run:
        answer: dict[str, Any] = get_services().jobs.dry_run(request)
        return answer
    return _submit(request, idempotency_key=idempotency_key, message_id=message_id)


@contextlib.contextmanager
def _as_team(team: str | None) -> Iterator[None]:
    """``team=``: act for that team (its scope, its limits); None: as the caller is."""
    if team is None:
        yield
        return
    from finetune_api.core.teams import Caller, check_team_name

    try:
        check_team_name(team)
    except ValueError as error:
        raise InvalidRequestError(f"team: {error}") from None
    services = get_services()
    caller = Caller.of(team, services.settings.admin_team)
    if not services.teams.teams_on():
        raise InvalidRequestError("team: no team is configured (API_KEYS has no team:key entry)")
    with acting_for(caller):
        yield


def _validate(body: Any) -> TrainingRequest:
    """The one validation pass every submission goes through."""
    # pydantic is imported by the first request that needs it, not at cold start.
    from finetune_api.core.schemas import parse_training_request

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


def resume_job(
    project_id: str,
    job_id: str,
    *,
    checkpoint_id: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    compute: dict[str, Any] | None = None,
    job_name: str | None = None,
    idempotency_key: str | None = None,
    team: str | None = None,
) -> dict[str, Any]:
    """Start a new job that continues a finished one from a checkpoint.

    As ``POST /jobs/{project_id}/{job_id}/resume``: the newest checkpoint unless
    ``checkpoint_id``; the job's own request (read back from the job) with
    ``hyperparameters`` / ``compute`` fields and ``job_name`` replaced where
    given. Returns the new Job with ``resumed_from``. Raises
    ``InvalidRequestError``, ``NotFoundError`` (unknown job or checkpoint),
    ``ConflictError`` (the job is still running or has no checkpoint) and the
    upstream errors of :func:`handle_training_request`.
    """
    with _as_team(team):
        values = {
            "checkpoint_id": checkpoint_id,
            "hyperparameters": hyperparameters,
            "compute": compute,
            "job_name": job_name,
        }
        body = {name: value for name, value in values.items() if value is not None}
        return resume_body(project_id, job_id, body, idempotency_key=idempotency_key)


def resume_body(
    project_id: str, job_id: str, body: Any, *, idempotency_key: str | None = None
) -> dict[str, Any]:
    """Resume from a decoded JSON body (``None`` = every default); HTTP shares this path."""
    from finetune_api.core.schemas import parse_resume_request

    services = get_services()
    request = parse_resume_request(body, services.settings)
    job = services.resume.resume(project_id, job_id, request, idempotency_key=idempotency_key)
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
    team: str | None = None,
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
    with _as_team(team):
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
    from finetune_api.core.schemas import parse_deployment_request

    services = get_services()
    request = parse_deployment_request(body, services.settings)
    deployment = services.deployments.deploy(
        project_id, job_id, request, idempotency_key=idempotency_key
    )
    result: dict[str, Any] = deployment.model_dump(mode="json")
    return result


def get_deployment(model_id: str, deployment_id: str, *, team: str | None = None) -> dict[str, Any]:
    """The Deployment object of one deployment (raises ``NotFoundError`` if unknown)."""
    with _as_team(team):
        result: dict[str, Any] = (
            get_services().deployments.get(model_id, deployment_id).model_dump(mode="json")
        )
        return result


def deactivate_deployment(
    model_id: str, deployment_id: str, *, team: str | None = None
) -> dict[str, Any]:
    """Deactivate a deployment (it stops costing money); returns it afterwards."""
    with _as_team(team):
        deployment = get_services().deployments.deactivate(model_id, deployment_id)
        result: dict[str, Any] = deployment.model_dump(mode="json")
        return result


def job_logs(
    project_id: str,
    job_id: str,
    *,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    limit: int | str | None = None,
    order: str | None = None,
    level: str | None = None,
    cursor: str | None = None,
    team: str | None = None,
) -> dict[str, Any]:
    """One page of a job's log: ``{"data": [LogLine], "next_cursor", "has_more"}``.

    As ``GET /jobs/{project_id}/{job_id}/logs``: ``since``/``until`` are RFC 3339
    (or aware datetimes), ``limit`` 1-1000 (default 100), ``order`` ``asc``
    (default) or ``desc``, ``level`` the minimum level (DEBUG, INFO, WARNING,
    ERROR); ``cursor`` continues from an earlier answer's ``next_cursor`` (with
    only ``limit`` beside it). Raises the same exceptions as
    :func:`handle_training_request` (``InvalidRequestError`` naming a bad
    argument, ``NotFoundError`` for an unknown job, ``Upstream*Error``).
    """
    with _as_team(team):
        from finetune_api.insights.job_insights import log_query

        values = {
            "since": since,
            "until": until,
            "limit": limit,
            "order": order,
            "level": level,
            "cursor": cursor,
        }
        query = log_query({k: v for k, v in values.items() if v is not None}, prefix="")
        result: dict[str, Any] = get_services().insights.logs(project_id, job_id, query)
        return result


def job_metrics(
    project_id: str,
    job_id: str,
    *,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    points: int | str | None = None,
    team: str | None = None,
) -> dict[str, Any]:
    """A job's training and system metrics, as ``GET /jobs/{project_id}/{job_id}/metrics``.

    ``{"training": {"steps", "evaluations", "summary"} or None, "system": {"nodes"}}``;
    series cut to at most ``points`` (default 500) keeping their shape.
    """
    with _as_team(team):
        values = {"since": since, "until": until, "points": points}
        answer, _ = metrics_answer(project_id, job_id, values, prefix="")
        return answer


def job_evaluation(project_id: str, job_id: str, *, team: str | None = None) -> dict[str, Any]:
    """Did it get better: as ``GET /jobs/{project_id}/{job_id}/evaluation``.

    ``{"base", "tuned", "change", "samples", "evaluations", "skipped"}`` plus the job's
    ids, name and status (see docs/evaluation.md).
    """
    with _as_team(team):
        answer: dict[str, Any] = get_services().insights.evaluation(project_id, job_id)
    return answer


def checkpoint_files(
    project_id: str,
    job_id: str,
    checkpoint_id: str,
    *,
    limit: int | None = None,
    cursor: str | None = None,
    team: str | None = None,
) -> dict[str, Any]:
    """One checkpoint's files as presigned URLs, as ``GET …/checkpoints/{id}/files``."""
    from finetune_api.jobs.checkpoint_files import CheckpointFiles

    with _as_team(team):
        services = get_services()
    files = CheckpointFiles(services.settings.project_name_prefix, services.client)
    query = {"limit": limit, "cursor": cursor}
    return files.page(project_id, job_id, checkpoint_id, {k: v for k, v in query.items() if v})


def job_metrics_svg(
    project_id: str,
    job_id: str,
    *,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    points: int | str | None = None,
    team: str | None = None,
) -> str:
    """The same metrics drawn as an SVG chart (loss and eval loss; learning rate or GPU)."""
    with _as_team(team):
        values = {"since": since, "until": until, "points": points, "format": "svg"}
        _, svg = metrics_answer(project_id, job_id, values, prefix="")
        assert svg is not None
        return svg


def metrics_answer(
    project_id: str,
    job_id: str,
    values: dict[str, Any],
    *,
    prefix: str = "query.",
    accept: str | None = None,
) -> tuple[dict[str, Any], str | None]:
    """The metrics answer and, when SVG was asked for, its chart (HTTP and Python share this)."""
    from finetune_api.insights.job_insights import metrics_query

    query = metrics_query({k: v for k, v in values.items() if v is not None}, prefix, accept=accept)
    answer: dict[str, Any] = get_services().insights.metrics(project_id, job_id, query)
    if not query.svg:
        return answer, None
    # matplotlib is imported by the first chart, never at cold start.
    from finetune_api.insights.chart import render_svg

    return answer, render_svg(answer)
