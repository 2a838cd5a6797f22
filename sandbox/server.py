"""HTTP front of the sandbox: Baseten's REST routes under ``/v1/``, control under ``/_sandbox/``.

A werkzeug WSGI app served by werkzeug's threaded server on 127.0.0.1 only
(one thread per request; the dev server closes every connection after its
response). All state lives in :class:`sandbox.state.SandboxState`, which locks
around each operation; slow things (``latency_ms``, ``create_delay_ms``, fault
hangs, S3 calls) happen outside that lock, so one slow request never blocks
the others.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from werkzeug.exceptions import (
    HTTPException,
    MethodNotAllowed,
    RequestEntityTooLarge,
)
from werkzeug.routing import Map, MapAdapter, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from sandbox import deployments
from sandbox.checkpoint_files import checkpoint_files
from sandbox.conformance import (
    LEDGER,
    PROBE_HEADER,
    BadAnswer,
    Operation,
    Rejection,
    RequestCheck,
    vendored_spec,
)
from sandbox.errors import SandboxApiError
from sandbox.s3 import S3Gateway
from sandbox.state import Fault, SandboxState
from sandbox.validation import artifacts_of, validate_create_job_body

log = logging.getLogger("sandbox")

HOST = "127.0.0.1"
#: The unknown field ``forward_compat`` mode adds to every object of an answer.
UNKNOWN_FIELD = "sandbox_future_field"
#: Objects left alone in that mode: truss passes ``creds`` to ``boto3.resource(**creds)``,
#: so Baseten cannot add a field there without breaking every truss release; the
#: metrics' GPU maps are keyed by GPU rank (a new key there would be a new GPU).
_NO_UNKNOWN_FIELD_UNDER = frozenset({"creds", "gpu_utilization", "gpu_memory_usage_bytes"})
DEFAULT_BUCKET = "baseten-sandbox-training"
MAX_BODY_BYTES = 16 * 1024 * 1024

_JOB = "/v1/training_projects/<project_id>/jobs/<job_id>"

API_ROUTES = Map(
    [
        Rule("/v1/training_projects", methods=["POST"], endpoint="upsert_project"),
        Rule("/v1/training_projects", methods=["GET"], endpoint="list_projects"),
        Rule("/v1/teams/<team_id>/training_projects", methods=["POST"], endpoint="upsert_project"),
        Rule("/v1/blobs/credentials/<blob_type>", methods=["GET"], endpoint="blob_credentials"),
        Rule("/v1/training_projects/<project_id>/jobs", methods=["POST"], endpoint="create_job"),
        Rule("/v1/training_projects/<project_id>/jobs", methods=["GET"], endpoint="list_jobs"),
        Rule(_JOB, methods=["GET"], endpoint="get_job"),
        Rule(f"{_JOB}/stop", methods=["POST"], endpoint="stop_job"),
        Rule(f"{_JOB}/checkpoints", methods=["GET"], endpoint="checkpoints"),
        Rule(f"{_JOB}/checkpoint_files", methods=["GET"], endpoint="checkpoint_files"),
        # GET is current; the POST forms (JSON body) are deprecated but truss still calls them.
        Rule(f"{_JOB}/logs", methods=["GET", "POST"], endpoint="logs"),
        Rule(f"{_JOB}/metrics", methods=["GET", "POST"], endpoint="metrics"),
        Rule("/v1/training_jobs/search", methods=["POST"], endpoint="search"),
        *deployments.API_RULES,
    ]
)

CONTROL_ROUTES = Map(
    [
        Rule("/_sandbox/health", methods=["GET"], endpoint="health"),
        Rule("/_sandbox/reset", methods=["POST"], endpoint="reset"),
        Rule("/_sandbox/config", methods=["GET"], endpoint="get_config"),
        Rule("/_sandbox/config", methods=["POST"], endpoint="update_config"),
        Rule("/_sandbox/faults", methods=["GET"], endpoint="list_faults"),
        Rule("/_sandbox/faults", methods=["POST"], endpoint="add_fault"),
        Rule("/_sandbox/faults", methods=["DELETE"], endpoint="clear_faults"),
        Rule("/_sandbox/jobs", methods=["GET"], endpoint="jobs"),
        Rule("/_sandbox/jobs/<job_id>/status", methods=["POST"], endpoint="force_status"),
        Rule("/_sandbox/jobs/<job_id>/checkpoints", methods=["POST"], endpoint="add_checkpoint"),
        Rule("/_sandbox/jobs/<job_id>/advance", methods=["POST"], endpoint="advance_job"),
        Rule("/_sandbox/jobs/<job_id>/logs", methods=["POST"], endpoint="append_logs"),
        Rule("/_sandbox/jobs/<job_id>/logs/synthetic", methods=["POST"], endpoint="synthetic_logs"),
        Rule("/_sandbox/advance", methods=["POST"], endpoint="advance_all"),
        Rule("/_sandbox/seed", methods=["POST"], endpoint="seed"),
        Rule("/_sandbox/stats", methods=["GET"], endpoint="stats"),
        *deployments.CONTROL_RULES,
        Rule("/_sandbox/conformance", methods=["GET"], endpoint="conformance"),
    ]
)


@dataclass
class Reply:
    """What a handler answers: a status, a JSON-able body (a ``str`` is sent as text)."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request, dict[str, str]], Reply]


class _DropConnection(ConnectionResetError):
    """Raised to make the server close the socket without answering."""


def _json_body(request: Request) -> Any:
    """The parsed body; ``None`` when empty. Bad JSON is a 400."""
    try:
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge as exc:
        raise SandboxApiError(413, "PAYLOAD_TOO_LARGE", "request body is too large") from exc
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SandboxApiError(400, "VALIDATION_ERROR", "request body is not valid JSON") from exc


def _params(request: Request) -> dict[str, Any]:
    """Query parameters of a GET; the JSON body of the deprecated POST form."""
    if request.method == "GET":
        return dict(request.args.items())
    body = _json_body(request)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise SandboxApiError(400, "VALIDATION_ERROR", "body: expected a JSON object")
    return body


def _presented_key(header: str | None) -> str | None:
    """The key of ``Api-Key <key>`` or ``Bearer <key>``."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() in ("api-key", "bearer") and value.strip():
        return value.strip()
    return None


def _to_response(reply: Reply) -> Response:
    if isinstance(reply.body, deployments.EventStream):
        response = Response(reply.body.chunks, reply.status, content_type="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
    elif isinstance(reply.body, str):
        response = Response(reply.body, reply.status, content_type="text/plain; charset=utf-8")
    else:
        response = Response(json.dumps(reply.body), reply.status, content_type="application/json")
    for name, value in reply.headers.items():
        response.headers[name] = value
    return response


def _error_reply(exc: SandboxApiError) -> Reply:
    return Reply(exc.status, exc.body(), exc.headers)


def with_unknown_fields(value: Any) -> Any:
    """``value`` with :data:`UNKNOWN_FIELD` added to every object in it (``forward_compat``)."""
    if isinstance(value, list):
        return [with_unknown_fields(item) for item in value]
    if not isinstance(value, dict):
        return value
    out = {
        key: item if key in _NO_UNKNOWN_FIELD_UNDER else with_unknown_fields(item)
        for key, item in value.items()
    }
    out[UNKNOWN_FIELD] = {"note": "a field this client does not know yet"}
    return out


def conformance_report() -> dict[str, Any]:
    """What every sandbox of this process saw against the spec (``GET /_sandbox/conformance``)."""
    return {
        **LEDGER.snapshot(),
        "rejected": [vars(r) for r in list(LEDGER.rejections)[-100:]],
        "bad_answers": [vars(b) for b in list(LEDGER.bad_answers)[-100:]],
    }


def _routing_error(exc: HTTPException, method: str, path: str) -> SandboxApiError:
    if isinstance(exc, MethodNotAllowed):
        return SandboxApiError(
            405, "METHOD_NOT_ALLOWED", f"method {method} is not allowed on {path}"
        )
    return SandboxApiError(404, "NOT_FOUND", f"no route {method} {path}")


class SandboxApp:
    """The WSGI application: routing, auth, faults, limits, handlers."""

    def __init__(self, state: SandboxState, stop_event: threading.Event) -> None:
        self.state = state
        self.stop_event = stop_event
        s = state
        self._api: dict[str, Handler] = {
            "upsert_project": lambda r, p: Reply(
                200, s.upsert_project(_json_body(r), p.get("team_id"))
            ),
            "list_projects": lambda r, p: Reply(200, s.list_projects()),
            "blob_credentials": self._blob_credentials,
            "create_job": self._create_job,
            "list_jobs": lambda r, p: Reply(200, s.list_jobs(p["project_id"])),
            "get_job": lambda r, p: Reply(200, s.get_job(p["project_id"], p["job_id"])),
            "stop_job": self._stop_job,
            "checkpoints": lambda r, p: Reply(200, s.checkpoints(p["project_id"], p["job_id"])),
            "checkpoint_files": lambda r, p: Reply(
                200, checkpoint_files(s, p["project_id"], p["job_id"], _params(r))
            ),
            "search": lambda r, p: Reply(200, s.search(_json_body(r))),
            "logs": lambda r, p: Reply(200, s.job_logs(p["project_id"], p["job_id"], _params(r))),
            "metrics": lambda r, p: Reply(
                200, s.job_metrics(p["project_id"], p["job_id"], _params(r))
            ),
            **deployments.api_handlers(s.deployments, _json_body, Reply),
        }
        self._control: dict[str, Handler] = {
            "health": lambda r, p: Reply(200, {"status": "ok"}),
            "reset": self._reset,
            "get_config": lambda r, p: Reply(200, s.get_config()),
            "update_config": lambda r, p: Reply(200, s.update_config(_json_body(r))),
            "list_faults": lambda r, p: Reply(200, {"faults": s.list_faults()}),
            "add_fault": lambda r, p: Reply(201, {"fault": s.add_fault(_json_body(r))}),
            "clear_faults": self._clear_faults,
            "jobs": lambda r, p: Reply(200, s.all_jobs()),
            "force_status": lambda r, p: Reply(200, s.force_status(p["job_id"], _json_body(r))),
            "add_checkpoint": lambda r, p: Reply(
                201, {"checkpoint": s.add_checkpoint(p["job_id"], _json_body(r))}
            ),
            "advance_job": lambda r, p: Reply(200, s.advance(p["job_id"], _json_body(r))),
            "append_logs": lambda r, p: Reply(201, s.append_logs(p["job_id"], _json_body(r))),
            "synthetic_logs": lambda r, p: Reply(
                201, s.synthesize_logs(p["job_id"], _json_body(r))
            ),
            "advance_all": lambda r, p: Reply(200, s.advance(None, _json_body(r))),
            "seed": lambda r, p: Reply(201, s.seed(_json_body(r))),
            "stats": lambda r, p: Reply(200, s.stats()),
            **deployments.control_handlers(s.deployments, _json_body, Reply),
            "conformance": lambda r, p: Reply(200, conformance_report()),
        }

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        request.max_content_length = MAX_BODY_BYTES
        path = request.path
        if path == "/_sandbox" or path.startswith("/_sandbox/"):
            reply = self._dispatch(CONTROL_ROUTES.bind_to_environ(environ), self._control, request)
        else:
            reply = self._api_request(request, API_ROUTES.bind_to_environ(environ))
        response: Iterable[bytes] = _to_response(reply)(environ, start_response)
        return response

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake up early when the server stops."""
        if seconds > 0:
            self.stop_event.wait(seconds)

    # ---------------------------------------------------------------- dispatch

    def _dispatch(
        self, adapter: MapAdapter, handlers: dict[str, Handler], request: Request
    ) -> Reply:
        try:
            try:
                endpoint, params = adapter.match()
            except HTTPException as exc:
                raise _routing_error(exc, request.method, request.path) from exc
            return handlers[str(endpoint)](request, {k: str(v) for k, v in params.items()})
        except SandboxApiError as exc:
            return _error_reply(exc)

    def _api_request(self, request: Request, adapter: MapAdapter) -> Reply:
        """Stats, spec check, latency, faults, then auth, rate limit and the handler.

        Every answer goes out through :meth:`_answer`, which checks it against
        the operation's response schema in the vendored spec.
        """
        method, path = request.method, request.path
        try:
            rule, _ = adapter.match(return_rule=True)
            label = f"{method} {rule.rule}"
        except HTTPException:
            label = f"{method} <unmatched>"
        self.state.record_request(label)
        try:
            raw_body = request.get_data(cache=True)
        except RequestEntityTooLarge:
            raw_body = b""  # answered 413 by the handler
        # Baseten's OpenAPI document covers /v1/ only (GraphQL and others are not in it).
        check = (
            vendored_spec().check_request(method, path, request.args.to_dict(flat=False), raw_body)
            if path.startswith("/v1/")
            else RequestCheck(None, None)
        )
        operation = check.operation
        if operation is not None:
            LEDGER.requested(operation.label)
        if check.violation is not None:
            LEDGER.rejected(
                Rejection(
                    method,
                    request.full_path.rstrip("?"),
                    check.violation.status,
                    check.violation.message,
                    probe=PROBE_HEADER in request.headers,
                )
            )
        self.sleep(self.state.get_config()["latency_ms"] / 1000)
        # Faults match the path without its leading slash, e.g. "v1/training_jobs/search".
        fault = self.state.take_fault(method, path.lstrip("/"))
        if fault is not None and not fault.after_handling:
            return self._answer(operation, *self._fault_reply(fault))
        try:
            if not self.state.check_api_key(_presented_key(request.headers.get("Authorization"))):
                raise SandboxApiError(
                    401,
                    "UNAUTHENTICATED",
                    "missing or invalid API key; send 'Authorization: Api-Key <key>'",
                )
            self.state.check_rate_limit()
            if check.violation is not None:
                violation = check.violation
                raise SandboxApiError(violation.status, violation.code, violation.message)
            if operation is not None and label.endswith("<unmatched>"):
                raise SandboxApiError(
                    501,
                    "NOT_IMPLEMENTED",
                    f"{operation.label} is in Baseten's API but the sandbox does not implement "
                    "it (sandbox/README.md: 'Adding an operation')",
                )
            reply = self._dispatch(adapter, self._api, request)
        except SandboxApiError as exc:
            reply = _error_reply(exc)
        if fault is not None:
            # The request took effect; the client only sees the fault.
            return self._answer(operation, *self._fault_reply(fault))
        self.state.record_response(reply.status)
        return self._answer(operation, reply, deliberate=False)

    def _answer(self, operation: Operation | None, reply: Reply, deliberate: bool) -> Reply:
        """Check ``reply`` against the spec (unless a test chose its body), then send it."""
        if self.state.get_config()["forward_compat"] and not isinstance(reply.body, str):
            reply = Reply(reply.status, with_unknown_fields(reply.body), reply.headers)
        if (
            operation is None
            or deliberate
            or isinstance(reply.body, str)
            or not self.state.get_config()["check_answers"]
        ):
            LEDGER.answered(validated=False)
            return reply
        validated, problem = vendored_spec().check_response(operation, reply.status, reply.body)
        LEDGER.answered(validated=validated, operation=operation.label)
        if problem is not None:
            LEDGER.bad_answer(BadAnswer(operation.label, reply.status, problem))
            log.error(
                "sandbox answer breaks the spec: %s %s: %s", operation.label, reply.status, problem
            )
        return reply

    def _fault_reply(self, fault: Fault) -> tuple[Reply, bool]:
        """The fault's answer, and whether a test chose its body (then it is not checked)."""
        self.sleep(fault.hang_seconds)
        if fault.close:
            self.state.record_response(0)
            raise _DropConnection("sandbox fault: connection closed without a response")
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(fault.retry_after))
        self.state.record_response(fault.status)
        # A body the test chose, or a success status (a hang/latency tool): not Baseten's answer.
        return Reply(fault.status, fault.body, headers), fault.custom_body or fault.status < 400

    # --------------------------------------------------------------- handlers

    def _blob_credentials(self, request: Request, params: dict[str, str]) -> Reply:
        if params["blob_type"] != "train":
            raise SandboxApiError(
                400,
                "VALIDATION_ERROR",
                f"unsupported blob type {params['blob_type']!r} (only 'train')",
            )
        s3 = self.state.s3
        creds = s3.credentials()
        s3.ensure_bucket()
        key = f"training/{self.state.now_us()}-{secrets.token_hex(8)}.tgz"
        return Reply(200, {"s3_bucket": s3.bucket, "s3_key": key, "creds": creds})

    def _create_job(self, request: Request, params: dict[str, str]) -> Reply:
        project_id = params["project_id"]
        self.state.require_project(project_id)
        training_job = validate_create_job_body(_json_body(request))
        for index, (bucket, key) in enumerate(artifacts_of(training_job)):
            if not self.state.s3.object_exists(bucket, key):
                raise SandboxApiError(
                    400,
                    "VALIDATION_ERROR",
                    f"training_job.runtime.artifacts[{index}]: s3://{bucket}/{key} does not exist",
                )
        # After validation, before recording: concurrent creates overlap here.
        self.sleep(self.state.get_config()["create_delay_ms"] / 1000)
        return Reply(200, self.state.record_job(project_id, training_job))

    def _stop_job(self, request: Request, params: dict[str, str]) -> Reply:
        _json_body(request)  # a malformed body is still a 400
        return Reply(200, self.state.stop_job(params["project_id"], params["job_id"]))

    def _reset(self, request: Request, params: dict[str, str]) -> Reply:
        self.state.reset()
        return Reply(200, {"reset": True})

    def _clear_faults(self, request: Request, params: dict[str, str]) -> Reply:
        self.state.clear_faults()
        return Reply(200, {"faults": []})


class _RequestHandler(WSGIRequestHandler):
    """Quiet unless verbose; a dropped connection (a ``close`` fault) closes the socket."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if getattr(self.server, "sandbox_verbose", False):
            super().log_request(code, size)

    def connection_dropped(
        self, error: BaseException, environ: dict[str, Any] | None = None
    ) -> None:
        self.close_connection = True


class Sandbox:
    """A local stand-in for ``https://api.baseten.co``'s training API.

    ``Sandbox(api_key="k", s3_endpoint="http://127.0.0.1:PORT").start()`` serves on
    127.0.0.1 in a background thread (``port=0`` picks a free port; see ``url``).
    The methods below mirror the ``/_sandbox/`` control API for in-process callers;
    ``state`` is the underlying :class:`SandboxState`. Also a context manager.

    ``clock`` (nanoseconds since the epoch, default ``time.time_ns``) drives
    timestamps and the status clock; tests may pass a fake one.
    """

    def __init__(
        self,
        api_key: str,
        s3_endpoint: str | None = None,
        *,
        port: int = 0,
        step_seconds: float | None = None,
        s3_bucket: str = DEFAULT_BUCKET,
        verbose: bool = False,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._stop_event = threading.Event()
        self.state = SandboxState(
            api_key=api_key,
            s3=S3Gateway(s3_endpoint, s3_bucket),
            step_seconds=step_seconds,
            clock=clock,
        )
        self.app = SandboxApp(self.state, self._stop_event)
        self._requested_port = port
        self._verbose = verbose
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------- lifecycle

    def start(self) -> Sandbox:
        """Bind and serve in a daemon thread; returns ``self``."""
        if self._server is not None:
            raise RuntimeError("sandbox already started")
        self._stop_event.clear()
        server = make_server(
            HOST, self._requested_port, self.app, threaded=True, request_handler=_RequestHandler
        )
        server.sandbox_verbose = self._verbose  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"baseten-sandbox-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; idempotent. Hung fault handlers wake up."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stop_event.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Sandbox:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("sandbox not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, no trailing slash: the REST base (``api.baseten.co``)."""
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    # ------------------------------------------------ in-process control API

    def reset(self) -> None:
        self.state.reset()

    def configure(self, **changes: Any) -> dict[str, Any]:
        return self.state.update_config(changes)

    def add_fault(self, **spec: Any) -> dict[str, Any]:
        return self.state.add_fault(spec)

    def clear_faults(self) -> None:
        self.state.clear_faults()

    def jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self.state.all_jobs()["jobs"]
        return jobs

    def set_status(
        self, job_id: str, status: str, error_message: str | None = None
    ) -> dict[str, Any]:
        reply = self.state.force_status(job_id, {"status": status, "error_message": error_message})
        job: dict[str, Any] = reply["training_job"]
        return job

    def add_checkpoint(self, job_id: str, **overrides: Any) -> dict[str, Any]:
        return self.state.add_checkpoint(job_id, overrides)

    def advance(self, job_id: str | None = None, steps: int = 1) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self.state.advance(job_id, {"steps": steps})["training_jobs"]
        return jobs

    def seed(self, **spec: Any) -> dict[str, Any]:
        return self.state.seed(spec)

    def append_logs(self, job_id: str, lines: list[Any], spacing_ns: int = 1000) -> dict[str, Any]:
        """Add lines to a job's log (strings, or ``{message, replica?, level?, timestamp?}``)."""
        return self.state.append_logs(job_id, {"lines": lines, "spacing_ns": spacing_ns})

    def synthesize_logs(self, job_id: str, **spec: Any) -> dict[str, Any]:
        """Replace a job's log with a finished run of ``steps`` steps ending now."""
        return self.state.synthesize_logs(job_id, spec)

    def stats(self) -> dict[str, Any]:
        return self.state.stats()
