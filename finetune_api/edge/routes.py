"""The handlers behind each route of ``train_http`` and ``poll_jobs``."""

from __future__ import annotations

from typing import Any

from flask import Request, Response
from werkzeug.exceptions import RequestEntityTooLarge

from finetune_api.api import submit_body
from finetune_api.core.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from finetune_api.core.query import bounded_int
from finetune_api.core.teams import EVERYONE, Caller
from finetune_api.edge.auth import HEADER, require_api_key
from finetune_api.edge.http_app import (
    POLL_ROUTES,
    TRAIN_ROUTES,
    json_response,
    read_json_body,
    serve,
)
from finetune_api.runtime import get_services


def _authorize(request: Request) -> Caller:
    services = get_services()
    return require_api_key(
        request.headers.get(HEADER), services.secrets, services.settings.admin_team
    )


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
    return json_response(job, 200 if job.get("dry_run") or job["idempotent_replay"] else 201)


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
    return json_response({"data": [_with_team(services, job) for job in jobs]})


def _with_team(services: Any, job: Any) -> dict[str, Any]:
    """The Job object; once teams are on, with its ``team`` (the admin sees several)."""
    shown: dict[str, Any] = job.model_dump(mode="json")
    if services.caller.teams_on:
        shown["team"] = services.teams.team_of(shown.get("training_project_name"))
    return shown


def get_job(request: Request, project_id: str, job_id: str) -> Response:
    services = get_services()
    return json_response(_with_team(services, services.jobs.get(project_id, job_id)))


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


def evaluation(request: Request, project_id: str, job_id: str) -> Response:
    from finetune_api.insights.job_insights import check_unknown

    check_unknown(_query(request), (), "query.")
    return json_response(get_services().insights.evaluation(project_id, job_id))


def checkpoint_files(
    request: Request, project_id: str, job_id: str, checkpoint_id: str
) -> Response:
    from finetune_api.jobs.checkpoint_files import CheckpointFiles

    services = get_services()
    files = CheckpointFiles(services.settings.project_name_prefix, services.client)
    return json_response(files.page(project_id, job_id, checkpoint_id, _query(request)))


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


# -- files (issue 20: your own data) ----------------------------------------------------

LARGE_FILE_PATH = (
    "for a larger file, POST /files with JSON {filename, bytes, purpose} to get an "
    "upload_url, PUT the bytes there, then POST /files/{id}/complete"
)


def create_file(request: Request) -> Response:
    """Multipart: the file itself, checked at once. JSON: open the large-file path."""
    services = get_services()
    files = services.files
    if request.mimetype == "multipart/form-data":
        limit = services.settings.max_upload_bytes
        too_big = PayloadTooLargeError(
            f"upload is larger than {limit} bytes (MAX_UPLOAD_BYTES); {LARGE_FILE_PATH}"
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_big
        request.max_content_length = limit
        try:
            upload = request.files.get("file")
            purpose = request.form.get("purpose")
        except RequestEntityTooLarge:
            raise too_big from None
        if upload is None:
            raise InvalidRequestError(
                "multipart body has no 'file' part",
                details=[{"location": "body.file", "reason": "required"}],
            )
        try:
            record = files.upload(upload.filename, upload.stream, purpose)
        finally:
            upload.close()
        return json_response(record, 201)
    if request.mimetype != "application/json" and request.content_length:
        raise UnsupportedMediaTypeError(
            "Content-Type must be multipart/form-data (the file) or application/json"
        )
    body = read_json_body(request, services.settings.max_body_bytes)
    if not isinstance(body, dict):
        raise InvalidRequestError("request body must be a JSON object")
    unknown = sorted(set(body) - {"filename", "bytes", "purpose"})
    if unknown:
        raise InvalidRequestError(
            "unknown field(s): " + ", ".join(unknown),
            details=[{"location": name, "reason": "not allowed"} for name in unknown],
        )
    # With the local store the session is this service's own PUT …/content?token=….
    record = files.start_upload(
        body.get("filename"),
        body.get("bytes"),
        body.get("purpose"),
        session_base=f"{request.url_root.rstrip('/')}/files/",
    )
    return json_response(record, 201)


def file_content(request: Request, file_id: str) -> Response:
    """The local store's upload session: the body streams to disk, never held in memory."""
    if request.content_length is None:
        raise InvalidRequestError("send Content-Length with the file's bytes")
    token = request.args.get("token")
    get_services().files.receive(file_id, request.stream, request.content_length, token)
    return Response(status=200)


def complete_file(request: Request, file_id: str) -> Response:
    """``200`` with the checked File, or ``202`` while its check goes on without the caller."""
    from finetune_api.files.service import VALIDATING

    record = get_services().files.complete(file_id)
    return json_response(record, 202 if record["status"] == VALIDATING else 200)


def list_files(request: Request) -> Response:
    query = _query(request)
    unknown = sorted(set(query) - {"limit", "after"})
    if unknown:
        raise InvalidRequestError(
            "unknown query parameter(s): " + ", ".join(unknown),
            details=[{"location": f"query.{name}", "reason": "not allowed"} for name in unknown],
        )
    limit = bounded_int(query.get("limit"), "limit", 1, 100, default=20)
    return json_response(get_services().files.list(limit, query.get("after") or None))


def get_file(request: Request, file_id: str) -> Response:
    return json_response(get_services().files.get(file_id))


def delete_file(request: Request, file_id: str) -> Response:
    return json_response(get_services().files.delete(file_id))


def poll(request: Request) -> Response:
    from finetune_api.polling.poller import parse_since
    from finetune_api.polling.poller import poll as run_poll

    # One poll across teams, whichever key started it: the base services, every job.
    services = get_services(EVERYONE)
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
    "evaluation": evaluation,
    "checkpoint_files": checkpoint_files,
    "deploy": deploy,
    "resume": resume,
    "get_deployment": get_deployment,
    "deactivate": deactivate,
    "create_file": create_file,
    "file_content": file_content,
    "complete_file": complete_file,
    "list_files": list_files,
    "get_file": get_file,
    "delete_file": delete_file,
}
POLL_HANDLERS: dict[str, Any] = {"healthz": healthz, "poll": poll}


def handle_train_http(request: Request) -> Response:
    if request.path == "/v1" or request.path.startswith("/v1/"):
        # The OpenAI-compatible surface loads on its first request only.
        from finetune_api.edge.openai_routes import handle_v1

        return handle_v1(request, _project())
    return serve(request, TRAIN_ROUTES, TRAIN_HANDLERS, authorize=_authorize, project=_project())


def handle_poll(request: Request) -> Response:
    return serve(request, POLL_ROUTES, POLL_HANDLERS, authorize=_authorize, project=_project())
