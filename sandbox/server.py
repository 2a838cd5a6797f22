"""HTTP front of the sandbox: Baseten's REST routes under ``v1/``, control under ``_sandbox/``.

Built on the standard library's ``ThreadingHTTPServer`` (one thread per
connection, HTTP/1.1 keep-alive), bound to 127.0.0.1 only. All state lives in
:class:`sandbox.state.SandboxState`, which locks around every operation; slow
things (``latency_ms``, ``create_delay_ms``, fault hangs, S3 calls) happen
outside that lock, so one slow request never blocks the others.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from sandbox.errors import SandboxApiError
from sandbox.s3 import S3Gateway
from sandbox.state import Fault, SandboxState
from sandbox.validation import artifacts_of, validate_create_job_body

HOST = "127.0.0.1"
DEFAULT_BUCKET = "baseten-sandbox-training"
MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    raw_body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The parsed body; ``None`` when empty. Bad JSON is a 400."""
        if not self.raw_body.strip():
            return None
        try:
            return json.loads(self.raw_body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SandboxApiError(
                400, "VALIDATION_ERROR", "request body is not valid JSON"
            ) from exc


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler

    @property
    def label(self) -> str:
        return f"{self.method} {self.template}"


def _route(method: str, template: str, handler: Handler) -> Route:
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
    return Route(method, template, re.compile(regex), handler)


def _match(routes: list[Route], method: str, path: str) -> tuple[Route | None, dict[str, str]]:
    """The route for ``method path``; a route of another method means 405."""
    path_matched: Route | None = None
    for route in routes:
        found = route.pattern.fullmatch(path)
        if found is None:
            continue
        if route.method == method:
            return route, {k: unquote(v) for k, v in found.groupdict().items()}
        path_matched = route
    if path_matched is not None:
        raise SandboxApiError(
            405, "METHOD_NOT_ALLOWED", f"method {method} is not allowed on {path}"
        )
    return None, {}


def _bearer_or_api_key(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() in ("api-key", "bearer") and value.strip():
        return value.strip()
    return None


class SandboxApp:
    """Routing and request handling, independent of the socket server."""

    def __init__(self, state: SandboxState, stop_event: threading.Event) -> None:
        self.state = state
        self.stop_event = stop_event
        self.api_routes = [
            _route("POST", "v1/training_projects", self._upsert_project),
            _route("GET", "v1/training_projects", self._list_projects),
            _route("POST", "v1/teams/{team_id}/training_projects", self._upsert_project),
            _route("GET", "v1/blobs/credentials/{blob_type}", self._blob_credentials),
            _route("POST", "v1/training_projects/{project_id}/jobs", self._create_job),
            _route("GET", "v1/training_projects/{project_id}/jobs", self._list_jobs),
            _route("GET", "v1/training_projects/{project_id}/jobs/{job_id}", self._get_job),
            _route("POST", "v1/training_projects/{project_id}/jobs/{job_id}/stop", self._stop),
            _route(
                "GET",
                "v1/training_projects/{project_id}/jobs/{job_id}/checkpoints",
                self._checkpoints,
            ),
            _route("POST", "v1/training_jobs/search", self._search),
        ]
        s = self.state
        self.control_routes = [
            _route("GET", "_sandbox/health", lambda r: Response(200, {"status": "ok"})),
            _route("POST", "_sandbox/reset", self._reset),
            _route("GET", "_sandbox/config", lambda r: Response(200, s.get_config())),
            _route("POST", "_sandbox/config", lambda r: Response(200, s.update_config(r.json()))),
            _route("GET", "_sandbox/faults", lambda r: Response(200, {"faults": s.list_faults()})),
            _route(
                "POST", "_sandbox/faults", lambda r: Response(201, {"fault": s.add_fault(r.json())})
            ),
            _route("DELETE", "_sandbox/faults", self._clear_faults),
            _route("GET", "_sandbox/jobs", lambda r: Response(200, s.all_jobs())),
            _route(
                "POST",
                "_sandbox/jobs/{job_id}/status",
                lambda r: Response(200, s.force_status(r.params["job_id"], r.json())),
            ),
            _route(
                "POST",
                "_sandbox/jobs/{job_id}/checkpoints",
                lambda r: Response(
                    201, {"checkpoint": s.add_checkpoint(r.params["job_id"], r.json())}
                ),
            ),
            _route(
                "POST",
                "_sandbox/jobs/{job_id}/advance",
                lambda r: Response(200, s.advance(r.params["job_id"], r.json())),
            ),
            _route("POST", "_sandbox/advance", lambda r: Response(200, s.advance(None, r.json()))),
            _route("POST", "_sandbox/seed", lambda r: Response(201, s.seed(r.json()))),
            _route("GET", "_sandbox/stats", lambda r: Response(200, s.stats())),
        ]

    # ------------------------------------------------------------------ entry

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake up early when the server stops."""
        if seconds > 0:
            self.stop_event.wait(seconds)

    def handle_control(self, method: str, path: str, raw_body: bytes) -> Response:
        try:
            route, params = _match(self.control_routes, method, path)
            if route is None:
                raise SandboxApiError(404, "NOT_FOUND", f"no control endpoint /{path}")
            return route.handler(Request(method, path, params, raw_body))
        except SandboxApiError as exc:
            return Response(exc.status, exc.body(), exc.headers)

    def route_label(self, method: str, path: str) -> str:
        for route in self.api_routes:
            if route.method == method and route.pattern.fullmatch(path):
                return route.label
        return f"{method} <unmatched>"

    def take_fault(self, method: str, path: str) -> Fault | None:
        return self.state.take_fault(method, path)

    def handle_api(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Response:
        """Everything after latency and faults: auth, rate limit, routing, the handler."""
        try:
            presented = _bearer_or_api_key(headers.get("authorization"))
            if not self.state.check_api_key(presented):
                raise SandboxApiError(
                    401,
                    "UNAUTHENTICATED",
                    "missing or invalid API key; send 'Authorization: Api-Key <key>'",
                )
            self.state.check_rate_limit()
            route, params = _match(self.api_routes, method, path)
            if route is None:
                raise SandboxApiError(404, "NOT_FOUND", f"no route {method} /{path}")
            return route.handler(Request(method, path, params, raw, headers))
        except SandboxApiError as exc:
            return Response(exc.status, exc.body(), exc.headers)

    # --------------------------------------------------------------- v1 API

    def _upsert_project(self, req: Request) -> Response:
        return Response(200, self.state.upsert_project(req.json(), req.params.get("team_id")))

    def _list_projects(self, req: Request) -> Response:
        return Response(200, self.state.list_projects())

    def _blob_credentials(self, req: Request) -> Response:
        blob_type = req.params["blob_type"]
        if blob_type != "train":
            raise SandboxApiError(
                400, "VALIDATION_ERROR", f"unsupported blob type {blob_type!r} (only 'train')"
            )
        s3 = self.state.s3
        creds = s3.credentials()
        s3.ensure_bucket()
        key = f"training/{self.state.now_us()}-{secrets.token_hex(8)}.tgz"
        return Response(200, {"s3_bucket": s3.bucket, "s3_key": key, "creds": creds})

    def _create_job(self, req: Request) -> Response:
        project_id = req.params["project_id"]
        self.state.require_project(project_id)
        training_job = validate_create_job_body(req.json())
        for index, (bucket, key) in enumerate(artifacts_of(training_job)):
            if not self.state.s3.object_exists(bucket, key):
                raise SandboxApiError(
                    400,
                    "VALIDATION_ERROR",
                    f"training_job.runtime.artifacts[{index}]: s3://{bucket}/{key} does not exist",
                )
        # After validation, before recording: concurrent creates overlap here.
        self.sleep(self.state.get_config()["create_delay_ms"] / 1000)
        return Response(200, self.state.record_job(project_id, training_job))

    def _list_jobs(self, req: Request) -> Response:
        return Response(200, self.state.list_jobs(req.params["project_id"]))

    def _get_job(self, req: Request) -> Response:
        return Response(200, self.state.get_job(req.params["project_id"], req.params["job_id"]))

    def _stop(self, req: Request) -> Response:
        req.json()  # a malformed body is still a 400
        return Response(200, self.state.stop_job(req.params["project_id"], req.params["job_id"]))

    def _checkpoints(self, req: Request) -> Response:
        return Response(200, self.state.checkpoints(req.params["project_id"], req.params["job_id"]))

    def _search(self, req: Request) -> Response:
        return Response(200, self.state.search(req.json()))

    # ---------------------------------------------------------------- control

    def _reset(self, req: Request) -> Response:
        self.state.reset()
        return Response(200, {"reset": True})

    def _clear_faults(self, req: Request) -> Response:
        self.state.clear_faults()
        return Response(200, {"faults": []})


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, port: int, app: SandboxApp, verbose: bool) -> None:
        self.app = app
        self.verbose = verbose
        super().__init__((HOST, port), _RequestHandler)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "BasetenSandbox/1.0"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes | None:
        length_header = self.headers.get("Content-Length")
        if not length_header:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            return None
        if length < 0 or length > MAX_BODY_BYTES:
            return None
        return self.rfile.read(length)

    def _dispatch(self) -> None:
        try:
            self._dispatch_inner()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            # The client gave up (typically on a hang fault); nothing to answer.
            self.close_connection = True

    def _dispatch_inner(self) -> None:
        app = self.server.app
        method = self.command.upper()
        path = self.path.split("?", 1)[0].lstrip("/")
        if path.endswith("/") and path != "":
            path = path.rstrip("/")
        raw = self._read_body()
        if raw is None:
            self.close_connection = True
            self._send(Response(413, {"code": "PAYLOAD_TOO_LARGE", "message": "bad body"}))
            return
        if path == "_sandbox" or path.startswith("_sandbox/"):
            self._send(app.handle_control(method, path, raw))
            return

        state = app.state
        state.record_request(app.route_label(method, path))
        app.sleep(state.get_config()["latency_ms"] / 1000)
        fault = app.take_fault(method, path)
        if fault is not None and not fault.after_handling:
            self._answer_fault(fault)
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        response = app.handle_api(method, path, headers, raw)
        if fault is not None:
            self._answer_fault(fault)
            return
        state.record_response(response.status)
        self._send(response)

    def _answer_fault(self, fault: Fault) -> None:
        app = self.server.app
        app.sleep(fault.hang_seconds)
        if fault.close:
            app.state.record_response(0)
            self.close_connection = True
            return
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(fault.retry_after))
        app.state.record_response(fault.status)
        self._send(Response(fault.status, fault.body, headers))

    def _send(self, response: Response) -> None:
        if isinstance(response.body, str):
            payload = response.body.encode()
            content_type = "text/plain; charset=utf-8"
        else:
            payload = json.dumps(response.body).encode()
            content_type = "application/json"
        self.send_response(response.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()


class Sandbox:
    """A local stand-in for ``https://api.baseten.co``'s training API.

    ``Sandbox(api_key="k", s3_endpoint="http://127.0.0.1:PORT").start()`` serves on
    127.0.0.1 in a background thread (``port=0`` picks a free port; see ``url``).
    ``state`` exposes the same operations as the ``/_sandbox/`` control API for
    in-process callers. Also a context manager (starts on enter, stops on exit).
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
    ) -> None:
        self._stop_event = threading.Event()
        self.state = SandboxState(
            api_key=api_key,
            s3=S3Gateway(s3_endpoint, s3_bucket),
            step_seconds=step_seconds,
        )
        self.app = SandboxApp(self.state, self._stop_event)
        self._requested_port = port
        self._verbose = verbose
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------- lifecycle

    def start(self) -> Sandbox:
        """Bind and serve in a daemon thread; returns ``self``."""
        if self._server is not None:
            raise RuntimeError("sandbox already started")
        self._stop_event.clear()
        self._server = _HTTPServer(self._requested_port, self.app, self._verbose)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
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
        job: dict[str, Any] = self.state.force_status(
            job_id, {"status": status, "error_message": error_message}
        )["training_job"]
        return job

    def add_checkpoint(self, job_id: str, **overrides: Any) -> dict[str, Any]:
        return self.state.add_checkpoint(job_id, overrides)

    def advance(self, job_id: str | None = None, steps: int = 1) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self.state.advance(job_id, {"steps": steps})["training_jobs"]
        return jobs

    def seed(self, **spec: Any) -> dict[str, Any]:
        return self.state.seed(spec)

    def stats(self) -> dict[str, Any]:
        return self.state.stats()
