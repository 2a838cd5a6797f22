"""Structured logging: one JSON object per line on stdout, as Cloud Logging reads it.

Request-scoped fields (trace, route) travel in a context variable so that log
lines written deep in the service carry them without being passed around.
Secret values registered with :func:`register_secret` are scrubbed from every
line as a last line of defence, and so is anything shaped like a credential
(:mod:`.redaction`); the code never logs them on purpose. Scrubbing
runs on the fields before they are serialised and again on the JSON text, and
looks for each secret as written, as ``repr()`` writes it (exception messages
quote header values that way) and as JSON escapes either form.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from finetune_api.core.redaction import REDACTED, redact_credentials

LOGGER_NAME = "finetune_api"
TRACE_FIELD = "logging.googleapis.com/trace"
SPAN_FIELD = "logging.googleapis.com/spanId"

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "finetune_api_log_context", default=_EMPTY
)
# Every form a registered secret may take in a line, longest first.
_needles: tuple[str, ...] = ()
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_configured = False
_configure_lock = threading.Lock()

_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}


def _forms(value: str) -> set[str]:
    written = {value, repr(value)[1:-1], repr(value.encode("utf-8", "surrogatepass"))[2:-1]}
    escaped = {
        json.dumps(form, ensure_ascii=ascii)[1:-1] for form in written for ascii in (True, False)
    }
    return {form for form in written | escaped if len(form) >= 6}


def register_secret(value: str | None) -> None:
    """Never let ``value`` appear in a log line (values shorter than 6 chars are ignored)."""
    global _needles
    if value and len(value) >= 6:
        with _secrets_lock:
            if value in _secrets:
                return
            _secrets.add(value)
            forms = set(_needles) | _forms(value)
            _needles = tuple(sorted(forms, key=len, reverse=True))


def scrub(text: str) -> str:
    """``text`` with every form of every registered secret replaced by ``[REDACTED]``."""
    for needle in _needles:
        if needle in text:
            text = text.replace(needle, REDACTED)
    return text


def scrub_text(text: str) -> str:
    """Every registered secret, then anything shaped like a credential, redacted.

    The one scrubber for text that leaves the service: log lines, a job's log
    lines, Baseten's ``error_message`` (see :mod:`.redaction` for the shapes).
    """
    return redact_credentials(scrub(text))


def _scrub_value(value: Any) -> Any:
    """Scrub the strings inside a log entry, before it becomes JSON."""
    if isinstance(value, str):
        return redact_credentials(scrub(value), load=False)
    if isinstance(value, Mapping):
        return {_scrub_value(key): _scrub_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub_value(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact_credentials(scrub(str(value)), load=False)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelno, "DEFAULT"),
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        entry.update(_context.get())
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        text = json.dumps(_scrub_value(entry), default=str)
        return scrub(text) if _needles else text


def configure() -> None:
    """Install the JSON handler on our logger once per process."""
    global _configured
    if _configured:
        return
    with _configure_lock:
        if _configured:
            return
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonFormatter())
        logger = logging.getLogger(LOGGER_NAME)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
        _configured = True


def get_logger(name: str) -> logging.Logger:
    configure()
    return logging.getLogger(f"{LOGGER_NAME}.{name}")


def log(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Write ``message`` with extra structured ``fields``."""
    logger.log(level, message, extra={"fields": fields})


@contextlib.contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every log line written inside the block (this thread only)."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def trace_fields(headers: Mapping[str, str], project: str | None) -> dict[str, str]:
    """Cloud Logging trace fields from ``X-Cloud-Trace-Context`` or W3C ``traceparent``."""
    trace_id = span_id = None
    cloud = headers.get("X-Cloud-Trace-Context")
    if cloud:
        trace_part, _, rest = cloud.partition("/")
        trace_id = trace_part or None
        span_id = rest.split(";", 1)[0] or None
    else:
        parent = headers.get("traceparent")
        if parent:
            parts = parent.split("-")
            if len(parts) >= 3:
                trace_id, span_id = parts[1], parts[2]
    if not trace_id or not trace_id.isalnum():
        return {}
    trace = f"projects/{project}/traces/{trace_id}" if project else trace_id
    fields = {TRACE_FIELD: trace}
    if span_id and span_id.isalnum():
        fields[SPAN_FIELD] = span_id
    return fields
