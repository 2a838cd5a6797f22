"""Fixtures and helpers for the Baseten client, webhook and poller tests.

Import the fixture functions into a test module (``from tests.poll_fixtures
import baseten_fixture  # noqa: F401``); pytest then finds them there under
their names (``baseten``, ``baseten_server``, ``receiver``).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from finetune_api.baseten.client import BasetenClient, RateLimiter
from finetune_api.core.logs import LOGGER_NAME, JsonFormatter, configure
from finetune_api.core.settings import Settings, load_settings
from loopback.servers import start_sandbox
from loopback.webhook_receiver import WebhookReceiver
from sandbox import Sandbox

API_KEY = "bt-poll-" + secrets.token_hex(16)
WEBHOOK_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
APP_URL = "https://app.baseten.co"


@pytest.fixture(scope="module", name="baseten_server")
def baseten_server_fixture() -> Iterator[Sandbox]:
    server = start_sandbox(API_KEY, None)
    yield server
    server.stop()


@pytest.fixture(name="baseten")
def baseten_fixture(baseten_server: Sandbox) -> Sandbox:
    """The module's sandbox, emptied: no jobs, no faults, default config."""
    baseten_server.reset()
    return baseten_server


@pytest.fixture(name="receiver")
def receiver_fixture() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(WEBHOOK_SECRET) as server:
        yield server


def make_settings(sandbox: Sandbox, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "baseten_api_url": sandbox.url,
        "baseten_remote_url": APP_URL,
        "baseten_timeout_seconds": 5.0,
        "baseten_max_requests_per_second": 90,
        "baseten_max_retries": 2,
        "poll_concurrency": 8,
    }
    values.update(overrides)
    return load_settings(**values)


def make_client(
    settings: Settings,
    *,
    api_key: str = API_KEY,
    rate: float = 1000.0,
    sleeps: list[float] | None = None,
) -> BasetenClient:
    """A client with its own limiter; retry backoffs are recorded in ``sleeps``, not slept."""
    sleep = sleeps.append if sleeps is not None else None
    limiter = RateLimiter(rate, sleep=sleep) if sleep is not None else RateLimiter(rate)
    if sleep is None:
        return BasetenClient(settings, lambda: api_key, limiter=limiter)
    return BasetenClient(settings, lambda: api_key, limiter=limiter, sleep=sleep)


class LogLines:
    """The service's log lines, formatted exactly as on stdout."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]


@pytest.fixture(name="service_logs")
def service_logs_fixture() -> Iterator[LogLines]:
    configure()
    lines = LogLines()
    handler = logging.StreamHandler(lines.stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
