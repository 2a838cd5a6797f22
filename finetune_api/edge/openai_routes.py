"""``/v1/``: the OpenAI-compatible routes of ``train_http`` (for the unmodified ``openai`` SDK).

Loaded on the first ``/v1/`` request only. Errors leave in OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, with the statuses the SDK maps
to its exception classes; messages are our own words (no caller input is echoed).
Auth: ``Authorization: Bearer <key>`` or ``X-Api-Key``, the same ``API_KEYS``.
"""

from __future__ import annotations

from typing import Any

from flask import Request, Response
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.routing import Map, Rule

from finetune_api.core.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    ServiceError,
    UnauthorizedError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
)
from finetune_api.core.query import bounded_int
from finetune_api.core.teams import Caller
from finetune_api.edge.auth import HEADER, require_api_key
from finetune_api.edge.http_app import json_response, read_json_body, serve
from finetune_api.runtime import get_services, openai_services

_ID = "string(minlength=1, maxlength=200)"
V1_ROUTES = Map(
    [
        Rule("/v1/files", endpoint="create_file", methods=["POST"]),
        Rule("/v1/files", endpoint="list_files", methods=["GET"]),
        Rule(f"/v1/files/<{_ID}:file_id>", endpoint="get_file", methods=["GET"]),
        Rule(f"/v1/files/<{_ID}:file_id>", endpoint="delete_file", methods=["DELETE"]),
        Rule(f"/v1/files/<{_ID}:file_id>/content", endpoint="file_content", methods=["GET"]),
        Rule("/v1/uploads", endpoint="create_upload", methods=["POST"]),
        Rule(f"/v1/uploads/<{_ID}:upload_id>/parts", endpoint="add_part", methods=["POST"]),
        Rule(
            f"/v1/uploads/<{_ID}:upload_id>/complete", endpoint="complete_upload", methods=["POST"]
        ),
        Rule(f"/v1/uploads/<{_ID}:upload_id>/cancel", endpoint="cancel_upload", methods=["POST"]),
        Rule("/v1/fine_tuning/jobs", endpoint="create_job", methods=["POST"]),
        Rule("/v1/fine_tuning/jobs", endpoint="list_jobs", methods=["GET"]),
        Rule(f"/v1/fine_tuning/jobs/<{_ID}:job_id>", endpoint="get_job", methods=["GET"]),
        Rule(
            f"/v1/fine_tuning/jobs/<{_ID}:job_id>/cancel", endpoint="cancel_job", methods=["POST"]
        ),
        Rule(f"/v1/fine_tuning/jobs/<{_ID}:job_id>/events", endpoint="job_events", methods=["GET"]),
        Rule(
            f"/v1/fine_tuning/jobs/<{_ID}:job_id>/checkpoints",
            endpoint="job_checkpoints",
            methods=["GET"],
        ),
        Rule("/v1/models", endpoint="list_models", methods=["GET"]),
        Rule("/v1/models/<path:model>", endpoint="get_model", methods=["GET"]),
        Rule("/v1/chat/completions", endpoint="chat", methods=["POST"]),
    ],
    strict_slashes=False,
    merge_slashes=False,
)
CHAT_BODY_BYTES = 1024 * 1024

# Our error type → OpenAI's (type, code).
_TYPES = {
    "invalid_request": ("invalid_request_error", None),
    "unauthorized": ("invalid_request_error", "invalid_api_key"),
    "not_found": ("invalid_request_error", "not_found"),
    "method_not_allowed": ("invalid_request_error", "method_not_allowed"),
    "payload_too_large": ("invalid_request_error", "payload_too_large"),
    "unsupported_media_type": ("invalid_request_error", "unsupported_media_type"),
    "conflict": ("invalid_request_error", "conflict"),
    "quota_exceeded": ("rate_limit_error", "quota_exceeded"),
    "upstream_rejected": ("invalid_request_error", "upstream_rejected"),
    "upstream_error": ("api_error", "upstream_error"),
    "upstream_unavailable": ("api_error", "upstream_unavailable"),
    "secret_unavailable": ("api_error", "secret_unavailable"),
    "internal": ("api_error", "internal"),
}


def openai_error(error: ServiceError) -> Response:
    """``{"error": {"message", "type", "param", "code"}}`` with the SDK's statuses."""
    kind, code = _TYPES.get(error.type, ("api_error", error.type))
    code = getattr(error, "openai_code", None) or code
    status = error.status
    if isinstance(error, UpstreamRateLimitedError):
        status, kind, code = 429, "rate_limit_error", "rate_limit_exceeded"
    elif isinstance(error, UpstreamRejectedError):
        status = 400  # Baseten refused the request as invalid
    param = None
    if error.details:
        location = str(error.details[0].get("location") or "")
        param = location.removeprefix("body.").removeprefix("query.") or None
    body = {"error": {"message": error.message, "type": kind, "param": param, "code": code}}
    return json_response(body, status, error.headers)


def _authorize(request: Request) -> Caller:
    key = request.headers.get(HEADER)
    header = request.headers.get("Authorization") or ""
    scheme, _, value = header.strip().partition(" ")
    if key is None and scheme.lower() == "bearer" and value.strip():
        key = value.strip()
    services = get_services()
    try:
        return require_api_key(key, services.secrets, services.settings.admin_team)
    except UnauthorizedError:
        raise UnauthorizedError(
            "missing or invalid API key: send Authorization: Bearer <key>"
        ) from None


def _query(request: Request, allowed: set[str]) -> dict[str, str]:
    args = request.args
    unknown = [name for name in args if name not in allowed and not name.startswith("metadata[")]
    if unknown:
        raise InvalidRequestError(
            f"{len(unknown)} unsupported query parameter(s)",
            details=[{"location": "query", "reason": "unsupported parameter"} for _ in unknown],
        )
    if any(len(args.getlist(name)) > 1 for name in args):
        raise InvalidRequestError("a query parameter was given more than once")
    return args.to_dict()


def _limit(query: dict[str, str], default: int) -> int:
    return bounded_int(query.get("limit"), "limit", 1, 100, default=default)


def _list(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "has_more": more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


# -- files -----------------------------------------------------------------------------


def _multipart(request: Request, field: str, limit: int) -> tuple[Any, Any]:
    """The named file part of a multipart body bounded by ``limit`` (+ form overhead)."""
    if request.mimetype != "multipart/form-data":
        raise InvalidRequestError("send multipart/form-data")
    too_big = PayloadTooLargeError(f"a file or part may hold at most {limit} bytes")
    bound = limit + 64 * 1024  # the multipart framing and the small fields
    if request.content_length is not None and request.content_length > bound:
        raise too_big
    request.max_content_length = bound
    try:
        upload = request.files.get(field)
        form = request.form
    except RequestEntityTooLarge:
        raise too_big from None
    if upload is None:
        raise InvalidRequestError(
            f"multipart body has no '{field}' part",
            details=[{"location": field, "reason": "required"}],
        )
    return upload, form


def create_file(request: Request) -> Response:
    services = get_services()
    upload, form = _multipart(request, "file", services.settings.max_upload_bytes)
    try:
        record = services.files.upload(upload.filename, upload.stream, form.get("purpose"))
    finally:
        upload.close()
    return json_response(record)


def list_files(request: Request) -> Response:
    query = _query(request, {"limit", "after", "purpose", "order"})
    if query.get("purpose") not in (None, "fine-tune"):
        return json_response(_list([], False))
    if query.get("order") not in (None, "desc"):
        raise InvalidRequestError(
            "order: only desc (newest first) is supported",
            details=[{"location": "order", "reason": "only desc"}],
        )
    page = get_services().files.list(_limit(query, 100), query.get("after") or None)
    return json_response(_list(page["data"], page["has_more"]))


def _results() -> Any:
    from finetune_api.compat.results import ResultFiles

    return ResultFiles(get_services().insights)


def get_file(request: Request, file_id: str) -> Response:
    from finetune_api.compat.results import is_results_id

    if is_results_id(file_id):
        return json_response(_results().retrieve(file_id))
    return json_response(get_services().files.get(file_id))


def delete_file(request: Request, file_id: str) -> Response:
    from finetune_api.compat.results import is_results_id

    if is_results_id(file_id):
        return json_response(_results().delete(file_id))
    return json_response(get_services().files.delete(file_id))


def file_content(request: Request, file_id: str) -> Response:
    """The stored bytes, streamed from storage (never held whole in memory)."""
    import queue
    import threading

    from finetune_api.compat.results import is_results_id

    if is_results_id(file_id):
        # OpenAI's results file: CSV, made from the job's log (kept once it finished).
        return Response(_results().content(file_id), status=200, mimetype="text/csv")

    files = get_services().files
    files.readable(file_id)  # 404, or 409 while pending or validating, before any byte
    chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=4)

    def pump() -> None:
        try:
            files.stream(file_id, chunks.put)
            chunks.put(None)
        except BaseException as error:  # noqa: BLE001 - handed to the reader
            chunks.put(error)

    threading.Thread(target=pump, daemon=True, name="file-content").start()

    def body() -> Any:
        while True:
            item = chunks.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                return  # the status is sent; a short body tells the client
            yield item

    return Response(body(), status=200, mimetype="application/octet-stream")


# -- uploads ---------------------------------------------------------------------------


def create_upload(request: Request) -> Response:
    services = get_services()
    body = read_json_body(request, services.settings.max_body_bytes)
    return json_response(openai_services().uploads.create(body))


def add_part(request: Request, upload_id: str) -> Response:
    services = get_services()
    uploads = openai_services().uploads
    part, _ = _multipart(request, "data", services.settings.max_upload_bytes)
    try:
        return json_response(uploads.add_part(upload_id, part.stream))
    finally:
        part.close()


def complete_upload(request: Request, upload_id: str) -> Response:
    body = read_json_body(request, get_services().settings.max_body_bytes)
    return json_response(openai_services().uploads.complete(upload_id, body))


def cancel_upload(request: Request, upload_id: str) -> Response:
    return json_response(openai_services().uploads.cancel(upload_id))


# -- fine-tuning jobs -------------------------------------------------------------------


def create_job(request: Request) -> Response:
    body = read_json_body(request, get_services().settings.max_body_bytes)
    key = request.headers.get("Idempotency-Key")
    return json_response(openai_services().jobs.create(body, idempotency_key=key))


def list_jobs(request: Request) -> Response:
    query = _query(request, {"limit", "after", "metadata"})
    if "metadata" in query:
        # OpenAI's metadata=null (jobs without metadata) would need a scan: not offered.
        raise InvalidRequestError(
            "metadata: filter with metadata[key]=value (metadata=null is not supported)",
            details=[{"location": "metadata", "reason": "use metadata[key]=value"}],
        )
    metadata = {
        name[len("metadata[") : -1]: value
        for name, value in query.items()
        if name.startswith("metadata[") and name.endswith("]") and len(name) > len("metadata[]")
    }
    page = openai_services().jobs.list(query.get("after") or None, _limit(query, 20), metadata)
    return json_response(page)


def get_job(request: Request, job_id: str) -> Response:
    return json_response(openai_services().jobs.retrieve(job_id))


def cancel_job(request: Request, job_id: str) -> Response:
    return json_response(openai_services().jobs.cancel(job_id))


def job_events(request: Request, job_id: str) -> Response:
    query = _query(request, {"limit", "after"})
    page = openai_services().jobs.events(job_id, query.get("after") or None, _limit(query, 20))
    return json_response(page)


def job_checkpoints(request: Request, job_id: str) -> Response:
    query = _query(request, {"limit", "after"})
    page = openai_services().jobs.checkpoints(job_id, query.get("after") or None, _limit(query, 10))
    return json_response(page)


# -- models and chat ---------------------------------------------------------------------


def list_models(request: Request) -> Response:
    data = openai_services().models.list()
    return json_response({"object": "list", "data": data})


def get_model(request: Request, model: str) -> Response:
    from finetune_api.core.errors import NotFoundError

    for item in openai_services().models.list():
        if item["id"] == model:
            return json_response(item)
    raise NotFoundError("no such model")


def chat(request: Request) -> Response:
    length = request.content_length
    if length is not None and length > CHAT_BODY_BYTES:
        raise PayloadTooLargeError(f"request body is larger than {CHAT_BODY_BYTES} bytes")
    raw = request.stream.read(CHAT_BODY_BYTES + 1)
    if len(raw) > CHAT_BODY_BYTES:
        raise PayloadTooLargeError(f"request body is larger than {CHAT_BODY_BYTES} bytes")
    status, content_type, chunks = openai_services().chat.forward(raw)
    response = Response(chunks, status=status, content_type=content_type)
    if content_type.startswith("text/event-stream"):
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
    return response


V1_HANDLERS: dict[str, Any] = {
    "create_file": create_file,
    "list_files": list_files,
    "get_file": get_file,
    "delete_file": delete_file,
    "file_content": file_content,
    "create_upload": create_upload,
    "add_part": add_part,
    "complete_upload": complete_upload,
    "cancel_upload": cancel_upload,
    "create_job": create_job,
    "list_jobs": list_jobs,
    "get_job": get_job,
    "cancel_job": cancel_job,
    "job_events": job_events,
    "job_checkpoints": job_checkpoints,
    "list_models": list_models,
    "get_model": get_model,
    "chat": chat,
}


def handle_v1(request: Request, project: str | None) -> Response:
    return serve(
        request,
        V1_ROUTES,
        V1_HANDLERS,
        public=frozenset(),
        authorize=_authorize,
        project=project,
        render=openai_error,
    )
