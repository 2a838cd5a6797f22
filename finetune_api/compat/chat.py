"""``POST /v1/chat/completions``: forward to the Baseten deployment a model name names.

The caller sends this service's key; the request goes on with the Baseten API key
(``Authorization: Api-Key …``), which never leaves the service. ``stream: true``
answers are passed through as they arrive: each chunk read from Baseten is
written to the caller at once (``read1``: whatever bytes are there, never a
fixed-size wait), nothing is buffered or re-encoded. One pooled session per
process keeps the connection to Baseten warm.

Baseten's 429 is retried here (twice, honouring a short ``Retry-After``) and then
reaches the caller as a 429; an inactive deployment is a 404.

Bounded whatever the deployment does: one answer may take ``CHAT_MAX_SECONDS``
(each silence also ends at the read timeout) and hold ``CHAT_MAX_BYTES``. A stream
past either ends with one server-sent event ``data: {"error": {…}}`` (the OpenAI SDK
raises it as an ``APIError``) and the connection to the model is closed; a whole
answer past either is a 502. An error answer is read up to :data:`MAX_ERROR_BYTES`,
never further.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from finetune_api.core.errors import (
    InvalidRequestError,
    NotFoundError,
    ServiceError,
    UpstreamError,
    UpstreamRateLimitedError,
    UpstreamUnavailableError,
)
from finetune_api.core.logs import get_logger, log

_logger = get_logger("chat")
_session: Any = None
_session_lock = threading.Lock()
ATTEMPTS = 3
MAX_RETRY_WAIT = 1.0
READ_BYTES = 64 * 1024
#: The most of a model's error answer read (for its ``code``); the rest is never read.
MAX_ERROR_BYTES = 64 * 1024


def _pooled() -> Any:
    global _session
    with _session_lock:
        if _session is None:
            import requests
            from requests.adapters import HTTPAdapter

            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            _session = session
        return _session


class ChatProxy:
    def __init__(
        self,
        inference_url: str,
        api_key: Callable[[], str],
        models: Any,
        *,
        timeout: tuple[float, float] = (5.0, 300.0),
        sleep: Callable[[float], None] = time.sleep,
        max_seconds: float = 600.0,
        max_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self._inference_url = inference_url
        self._api_key = api_key
        self._models = models
        self._timeout = (timeout[0], min(timeout[1], max_seconds))
        self._sleep = sleep
        self._max_seconds = max_seconds
        self._max_bytes = max_bytes

    def forward(self, raw_body: bytes) -> tuple[int, str, Iterator[bytes]]:
        """``(status, content type, body chunks)``; errors before any byte are raised."""
        try:
            body = json.loads(raw_body)
        except (ValueError, UnicodeDecodeError):
            raise InvalidRequestError("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise InvalidRequestError("request body must be a JSON object")
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            raise InvalidRequestError(
                "messages: required, a non-empty list",
                details=[{"location": "messages", "reason": "required"}],
            )
        model_id, deployment_id = self._models.check(body.get("model"))
        host = self._inference_url.replace("{model_id}", model_id)
        url = f"{host}/deployment/{deployment_id}/sync/v1/chat/completions"
        headers = {
            "Authorization": f"Api-Key {self._api_key()}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if body.get("stream") is True else "application/json",
        }
        deadline = time.monotonic() + self._max_seconds
        response = self._send(url, raw_body, headers)
        status = response.status_code
        if status >= 400:
            self._fail(response, model_id, deployment_id)
        content_type = response.headers.get("Content-Type", "application/json")
        bounded = _bounded(response, deadline, self._max_seconds, self._max_bytes)
        if not content_type.startswith("text/event-stream"):
            # A whole answer: read (within the bounds) before the caller gets a byte, so
            # one past them is a clear 502 rather than half a JSON document.
            try:
                body = b"".join(bounded)
            except _OutOfBounds as problem:
                raise UpstreamError(f"the model's answer {problem}") from None
            return status, content_type, iter([body])
        return status, content_type, _stream(bounded)

    def _send(self, url: str, raw_body: bytes, headers: dict[str, str]) -> Any:
        import requests

        session = _pooled()
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = session.post(
                    url,
                    data=raw_body,
                    headers=headers,
                    timeout=self._timeout,
                    stream=True,
                    allow_redirects=False,
                )
            except requests.ConnectTimeout:
                error: ServiceError = UpstreamUnavailableError("the model could not be reached")
            except requests.Timeout:
                raise UpstreamUnavailableError("the model did not answer in time") from None
            except requests.RequestException:
                error = UpstreamUnavailableError("the model could not be reached")
            else:
                if response.status_code != 429 or attempt == ATTEMPTS:
                    return response
                asked = _retry_after(response)
                response.close()
                wait = float(asked) if asked is not None else MAX_RETRY_WAIT + 1
                if wait > MAX_RETRY_WAIT:
                    wait = min(MAX_RETRY_WAIT, 0.2 * attempt)
                log(_logger, 20, "retrying a rate-limited chat request", attempt=attempt)
                self._sleep(wait)
                continue
            if attempt == ATTEMPTS:
                raise error
            self._sleep(0.2 * attempt)
        raise UpstreamUnavailableError("the model could not be reached")  # pragma: no cover

    def _fail(self, response: Any, model_id: str, deployment_id: str) -> None:
        status = response.status_code
        payload: Any = {}
        try:
            # One byte past the cap says it is too long to look into: never read further.
            head = response.raw.read(MAX_ERROR_BYTES + 1, decode_content=True)
            if len(head) <= MAX_ERROR_BYTES:
                payload = json.loads(head)
        except Exception:  # noqa: BLE001 - not JSON, or the read failed: no code to look at
            payload = {}
        finally:
            response.close()
        code = payload.get("code") if isinstance(payload, dict) else None
        if status == 429:
            raise UpstreamRateLimitedError(
                "the model is rate-limiting requests; retry later",
                retry_after=_retry_after(response) or 1,
            )
        if status == 404 or code == "MODEL_NOT_READY":
            self._models.forget(model_id, deployment_id)
            raise NotFoundError("this model is not active (deploy or reactivate it first)")
        if status in (401, 403):
            raise UpstreamError("Baseten refused the service's credentials for this model")
        if 400 <= status < 500:
            raise InvalidRequestError(f"the model refused the request (HTTP {status})")
        raise UpstreamError(f"the model failed (HTTP {status})")


def _retry_after(response: Any) -> int | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0, int(float(value))) if value is not None else None
    except ValueError:
        return None


class _OutOfBounds(Exception):
    """The answer went past CHAT_MAX_SECONDS or CHAT_MAX_BYTES; says which, as a phrase."""


def _bounded(response: Any, deadline: float, max_seconds: float, max_bytes: int) -> Iterator[bytes]:
    """Each piece as it arrives, until the answer ends or passes a bound (raises
    :class:`_OutOfBounds`); the connection is released at the end either way."""
    raw = response.raw
    total = 0
    try:
        while True:
            if time.monotonic() > deadline:
                raise _OutOfBounds(f"took longer than {max_seconds:g} s (CHAT_MAX_SECONDS)")
            chunk = raw.read1(READ_BYTES, decode_content=True)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise _OutOfBounds(f"is larger than {max_bytes} bytes (CHAT_MAX_BYTES)")
            yield chunk
    finally:
        response.close()


def _stream(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """A streamed answer: past a bound, one error event ends it (the SDK raises it)."""
    try:
        yield from chunks
    except _OutOfBounds as problem:
        message = f"the model's answer {problem}; it was cut off"
        log(_logger, 30, "cut off a chat stream", reason=str(problem))
        error = {"error": {"message": message, "type": "server_error", "code": "answer_too_long"}}
        yield b"\n\ndata: " + json.dumps(error).encode() + b"\n\n"
