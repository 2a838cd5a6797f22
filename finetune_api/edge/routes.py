"""The handlers behind each route of ``train_http`` and ``poll_jobs``."""

from __future__ import annotations

from typing import Any

from flask import Request, Response

from finetune_api.api import submit_body
from finetune_api.core.errors import InvalidRequestError
from finetune_api.core.query import bounded_int
from finetune_api.edge.auth import HEADER, require_api_key
from finetune_api.edge.http_app import (
    POLL_ROUTES,
    TRAIN_ROUTES,
    json_response,
    read_json_body,
    serve,
)
from finetune_api.runtime import get_services


def _authorize(request: Request) -> None:
    require_api_key(request.headers.get(HEADER), get_services().secrets)


def _project() -> str | None:
    from finetune_api.core.settings import get_settings

    try:
        return get_settings().google_cloud_project
    except Exception:  # noqa: BLE001 - a settings error is reported by the handler
        return None


def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


def openapi(request: Request) -> Response:
    from finetune_api.edge.openapi import openapi_document

    return json_response(openapi_document())


def submit(request: Request) -> Response:
    services = get_services()
    body = read_json_body(request, services.settings.max_body_bytes)
    key = request.headers.get("Idempotency-Key")
    job = submit_body(body, idempotency_key=key)
    return json_response(job, 200 if job["idempotent_replay"] else 201)


def list_jobs(request: Request) -> Response:
    services = get_services()
    args = request.args
    unknown = sorted(set(args) - {"project_id", "status", "limit"})
    if unknown:
        raise InvalidRequestError(
            "unknown query parameter(s): " + ", ".join(unknown),
            details=[{"location": f"query.{name}", "reason": "not allowed"} for name in unknown],
        )
    # Without project_id, every project's jobs are listed.
    project_id = args.get("project_id") or None
    limit = bounded_int(args.get("limit"), "limit", 1, 100, default=20)
    statuses = [part for value in args.getlist("status") for part in value.split(",") if part]
    jobs = services.jobs.list(project_id, statuses, limit)
    return json_response({"data": [job.model_dump(mode="json") for job in jobs]})


def get_job(request: Request, project_id: str, job_id: str) -> Response:
    job = get_services().jobs.get(project_id, job_id)
    return json_response(job.model_dump(mode="json"))


def checkpoints(request: Request, project_id: str, job_id: str) -> Response:
    items = get_services().jobs.checkpoints(project_id, job_id)
    return json_response({"data": [item.model_dump(mode="json") for item in items]})


def stop(request: Request, project_id: str, job_id: str) -> Response:
    job = get_services().jobs.stop(project_id, job_id)
    return json_response(job.model_dump(mode="json"))


def _query(request: Request) -> dict[str, str]:
    """The query parameters, each at most once (a repeated one is a 400 naming it)."""
    repeated = sorted(name for name in request.args if len(request.args.getlist(name)) > 1)
    if repeated:
        raise InvalidRequestError(
            "query parameter(s) given more than once: " + ", ".join(repeated),
            details=[
                {"location": f"query.{name}", "reason": "given more than once"} for name in repeated
            ],
        )
    return request.args.to_dict()


def logs(request: Request, project_id: str, job_id: str) -> Response:
    from finetune_api.insights.job_insights import log_query

    query = log_query(_query(request))
    return json_response(get_services().insights.logs(project_id, job_id, query))


def metrics(request: Request, project_id: str, job_id: str) -> Response:
    from finetune_api.api import metrics_answer

    answer, svg = metrics_answer(
        project_id, job_id, _query(request), accept=request.headers.get("Accept")
    )
    if svg is not None:
        return Response(svg, status=200, mimetype="image/svg+xml", headers={"Vary": "Accept"})
    response = json_response(answer)
    response.headers["Vary"] = "Accept"
    return response


def deploy(request: Request, project_id: str, job_id: str) -> Response:
    from finetune_api.api import deploy_body

    services = get_services()
    body = read_json_body(request, services.settings.max_body_bytes, required=False)
    key = request.headers.get("Idempotency-Key")
    deployment = deploy_body(project_id, job_id, body, idempotency_key=key)
    replay_or_dry = deployment["idempotent_replay"] or deployment["status"] == "dry_run"
    return json_response(deployment, 200 if replay_or_dry else 202)


def resume(request: Request, project_id: str, job_id: str) -> Response:
    from finetune_api.api import resume_body

    services = get_services()
    body = read_json_body(request, services.settings.max_body_bytes, required=False)
    key = request.headers.get("Idempotency-Key")
    job = resume_body(project_id, job_id, body, idempotency_key=key)
    return json_response(job, 200 if job["idempotent_replay"] else 201)


def get_deployment(request: Request, model_id: str, deployment_id: str) -> Response:
    deployment = get_services().deployments.get(model_id, deployment_id)
    return json_response(deployment.model_dump(mode="json"))


def deactivate(request: Request, model_id: str, deployment_id: str) -> Response:
    deployment = get_services().deployments.deactivate(model_id, deployment_id)
    return json_response(deployment.model_dump(mode="json"))


def poll(request: Request) -> Response:
    from finetune_api.polling.poller import parse_since
    from finetune_api.polling.poller import poll as run_poll

    services = get_services()
    body = read_json_body(request, services.settings.max_body_bytes, required=False)
    since = parse_since(body)
    report = run_poll(
        services.settings,
        services.client,
        services.events,
        since,
        serving=services.serving,
        explain=services.insights.event_details,
        store=services.poll_state,
        retry=services.retry,
    )
    return json_response(report.model_dump(mode="json"))


TRAIN_HANDLERS: dict[str, Any] = {
    "healthz": healthz,
    "openapi": openapi,
    "submit": submit,
    "list_jobs": list_jobs,
    "get_job": get_job,
    "checkpoints": checkpoints,
    "stop": stop,
    "logs": logs,
    "metrics": metrics,
    "deploy": deploy,
    "resume": resume,
    "get_deployment": get_deployment,
    "deactivate": deactivate,
}
POLL_HANDLERS: dict[str, Any] = {"healthz": healthz, "poll": poll}


def handle_train_http(request: Request) -> Response:
    return serve(request, TRAIN_ROUTES, TRAIN_HANDLERS, authorize=_authorize, project=_project())


def handle_poll(request: Request) -> Response:
    return serve(request, POLL_ROUTES, POLL_HANDLERS, authorize=_authorize, project=_project())
