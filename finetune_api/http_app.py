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
from werkzeug.routing import Map, Rule

from . import logs
from .errors import (
    InternalError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceError,
    UnsupportedMediaTypeError,
)

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
        Rule(f"/jobs/<{_ID}:project_id>/<{_ID}:job_id>/logs", endpoint="logs", methods=["GET"]),
        Rule(
            f"/jobs/<{_ID}:project_id>/<{_ID}:job_id>/metrics", endpoint="metrics", methods=["GET"]
        ),
    ],
    strict_slashes=False,
)
POLL_ROUTES = Map(
    [
        Rule("/healthz", endpoint="healthz", methods=["GET"]),
        Rule("/", endpoint="poll", methods=["GET", "POST"]),
        Rule("/poll", endpoint="poll", methods=["GET", "POST"]),
    ],
    strict_slashes=False,
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
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError("request body is not valid UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as error:
        raise InvalidRequestError(f"request body is not valid JSON: {error}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def serve(
    request: Request,
    routes: Map,
    handlers: dict[str, Callable[..., Response]],
    *,
    public: frozenset[str] = frozenset({"healthz"}),
    authorize: Callable[[Request], None] | None = None,
    project: str | None = None,
) -> Response:
    """Route ``request``, run its handler, map every failure, log one line."""
    started = time.perf_counter()
    endpoint = "unmatched"
    with logs.context(**logs.trace_fields(dict(request.headers), project)):
        try:
            adapter = routes.bind("localhost", path_info=request.path)
            endpoint, arguments = adapter.match(method=request.method)
            if endpoint not in public and authorize is not None:
                authorize(request)
            response = handlers[endpoint](request, **arguments)
        except ServiceError as error:
            response = error_response(error)
        except MethodNotAllowed as error:
            allowed = ", ".join(sorted(error.valid_methods or []))
            response = error_response(
                MethodNotAllowedError(f"{request.method} is not allowed here; use {allowed}")
            )
            response.headers["Allow"] = allowed
        except NotFound:
            response = error_response(
                NotFoundError(f"no route for {request.method} {request.path}")
            )
        except HTTPException as error:
            response = error_response(InvalidRequestError(error.description or "bad request"))
        except Exception:
            _logger.exception("unhandled error", extra={"fields": {"route": endpoint}})
            response = error_response(InternalError("internal error"))
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
