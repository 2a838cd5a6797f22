"""HTTP layer of ``train_http`` and ``poll_jobs``: routing, body rules, error mapping.

Routing is werkzeug's; every error, whatever raised it, leaves here as the
CONTRACT JSON body with its status. Nothing below this module sees Flask.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from flask import Request, Response
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, RequestRedirect, Rule

from finetune_api.core import logs
from finetune_api.core.decoding import decode_json
from finetune_api.core.errors import (
    InternalError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceError,
    UnsupportedMediaTypeError,
)
from finetune_api.core.teams import EVERYONE, Caller
from finetune_api.runtime import acting_for

_logger = logs.get_logger("http")

_ID = "string(minlength=1, maxlength=64)"  # ids are further checked by Baseten itself
TRAIN_ROUTES = Map(
    [
        Rule("/healthz", endpoint="healthz", methods=["GET"]),
        Rule("/openapi.json", endpoint="openapi", methods=["GET"]),
        Rule("/jobs", endpoint="submit", methods=["POST"]),
        Rule("/jobs", endpoint="list_jobs", methods=["GET"]),
        Rule(f"/jobs/<{_ID}:project_id>/<{_ID}:job_id>", endpoint="get_job", methods=["GET"]),
        Rule(
            f"/jobs/<{_ID}:project_id>/<{_ID}:job_id>/checkpoints",
            endpoint="checkpoints",
            methods=["GET"],
        ),
        Rule(f"/jobs/<{_ID}:project_id>/<{_ID}:job_id>/stop", endpoint="stop", methods=["POST"]),
        Rule(
            f"/jobs/<{_ID}:project_id>/<{_ID}:job_id>/deployments",
            endpoint="deploy",
            methods=["POST"],
        ),
        Rule(
            f"/jobs/<{_ID}:project_id>/<{_ID}:job_id>/resume",
            endpoint="resume",
            methods=["POST"],
        ),
        Rule(
            f"/deployments/<{_ID}:model_id>/<{_ID}:deployment_id>",
            endpoint="get_deployment",
            methods=["GET"],
        ),
        Rule(
            f"/deployments/<{_ID}:model_id>/<{_ID}:deployment_id>/deactivate",
            endpoint="deactivate",
            methods=["POST"],
        ),
        Rule(f"/jobs/<{_ID}:project_id>/<{_ID}:job_id>/logs", endpoint="logs", methods=["GET"]),
        Rule(
            f"/jobs/<{_ID}:project_id>/<{_ID}:job_id>/evaluation",
            endpoint="evaluation",
            methods=["GET"],
        ),
        Rule(
            f"/jobs/<{_ID}:project_id>/<{_ID}:job_id>/checkpoints/<{_ID}:checkpoint_id>/files",
            endpoint="checkpoint_files",
            methods=["GET"],
        ),
        Rule("/files", endpoint="create_file", methods=["POST"]),
        Rule("/files", endpoint="list_files", methods=["GET"]),
        Rule(f"/files/<{_ID}:file_id>", endpoint="get_file", methods=["GET"]),
        Rule(f"/files/<{_ID}:file_id>", endpoint="delete_file", methods=["DELETE"]),
        Rule(f"/files/<{_ID}:file_id>/complete", endpoint="complete_file", methods=["POST"]),
        Rule(f"/files/<{_ID}:file_id>/content", endpoint="file_content", methods=["PUT"]),
        Rule(
            f"/jobs/<{_ID}:project_id>/<{_ID}:job_id>/metrics", endpoint="metrics", methods=["GET"]
        ),
    ],
    strict_slashes=False,
    # "/jobs//p/j" is no route: merging would answer a redirect naming a URL.
    merge_slashes=False,
)
POLL_ROUTES = Map(
    [
        Rule("/healthz", endpoint="healthz", methods=["GET"]),
        Rule("/", endpoint="poll", methods=["GET", "POST"]),
        Rule("/poll", endpoint="poll", methods=["GET", "POST"]),
    ],
    strict_slashes=False,
    merge_slashes=False,
)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")),
        status=status,
        headers=headers or {},
        mimetype="application/json",
    )


def error_response(error: ServiceError) -> Response:
    return json_response(error.body, error.status, error.headers)


def framework_error_response(error: Exception) -> Response:
    """What ``main.py`` answers for an error raised inside functions-framework itself."""
    if isinstance(error, HTTPException):
        return http_error_response(error)
    # The framework decodes a CloudEvent body itself (json raises RecursionError,
    # not ValueError, for deep nesting). Pub/Sub builds real envelopes, so only a
    # direct invoker can send these: a logged 400, not a 500 with a traceback.
    logs.log(_logger, 40, "request body could not be decoded", error_type=type(error).__name__)
    if isinstance(error, RecursionError) or isinstance(error.__cause__, RecursionError):
        return error_response(InvalidRequestError("request body is nested too deeply"))
    return error_response(InvalidRequestError("request body could not be decoded"))


def http_error_response(
    error: HTTPException, render: Callable[[ServiceError], Response] = error_response
) -> Response:
    """A werkzeug routing or protocol error as the CONTRACT JSON body.

    Used for our own routing and for the framework's (``main.py`` registers it
    for errors raised before an entry point runs, e.g. a path its own router
    cannot match). Messages are fixed texts: neither the path nor the method
    the caller sent is quoted back.
    """
    if isinstance(error, MethodNotAllowed):
        allowed = ", ".join(sorted(error.valid_methods or []))
        response = render(MethodNotAllowedError(f"this method is not allowed here; use {allowed}"))
        response.headers["Allow"] = allowed
        return response
    if isinstance(error, NotFound | RequestRedirect) or (error.code or 0) < 400:
        return render(NotFoundError("no such route"))
    if error.code == 413:
        return render(PayloadTooLargeError("request body is too large"))
    if error.code == 415:
        return render(UnsupportedMediaTypeError("Content-Type must be application/json"))
    if (error.code or 500) >= 500:
        return render(InternalError("internal error"))
    return render(InvalidRequestError("the request is malformed"))


def read_json_body(request: Request, max_bytes: int, *, required: bool = True) -> Any:
    """Enforce the CONTRACT's body rules in order: size, media type, UTF-8 JSON."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLargeError(f"request body is larger than {max_bytes} bytes")
    raw = request.stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise PayloadTooLargeError(f"request body is larger than {max_bytes} bytes")
    if not raw:
        if required:
            raise InvalidRequestError("request body is empty; send a JSON object")
        return None
    if request.mimetype != "application/json":
        raise UnsupportedMediaTypeError("Content-Type must be application/json")
    return decode_json(raw, "request body")


def serve(
    request: Request,
    routes: Map,
    handlers: dict[str, Callable[..., Response]],
    *,
    public: frozenset[str] = frozenset({"healthz"}),
    authorize: Callable[[Request], Caller | None] | None = None,
    project: str | None = None,
    render: Callable[[ServiceError], Response] = error_response,
) -> Response:
    """Route ``request``, run its handler, map every failure (through ``render``), log one line."""
    started = time.perf_counter()
    endpoint = "unmatched"
    with logs.context(**logs.trace_fields(dict(request.headers), project)):
        try:
            adapter = routes.bind("localhost", path_info=request.path)
            endpoint, arguments = adapter.match(method=request.method)
            caller = None
            if endpoint not in public and authorize is not None:
                caller = authorize(request)  # the team, decided once, from the key
            with acting_for(caller or EVERYONE):
                response = handlers[endpoint](request, **arguments)
        except ServiceError as error:
            response = render(error)
        except HTTPException as error:
            response = http_error_response(error, render)
        except Exception:
            _logger.exception("unhandled error", extra={"fields": {"route": endpoint}})
            response = render(InternalError("internal error"))
        latency = time.perf_counter() - started
        logs.log(
            _logger,
            40 if response.status_code >= 500 else 20,
            f"{request.method} {request.path} {response.status_code}",
            route=endpoint,
            status=response.status_code,
            latency_ms=round(latency * 1000, 1),
            httpRequest={
                "requestMethod": request.method,
                "requestUrl": request.path,
                "status": response.status_code,
                "latency": f"{latency:.6f}s",
                "userAgent": request.user_agent.string,
            },
        )
    return response
