"""Signed webhook delivery per Standard Webhooks (https://www.standardwebhooks.com).

Each attempt is signed afresh (``webhook-timestamp`` is the attempt's time)
with the ``standardwebhooks`` package; ``webhook-id`` is the event id and stays
the same on every retry, so receivers dedupe on it. Delivery is retried a few
times inside the invocation with exponential backoff and jitter: 2xx is
success; 3xx is a failure (redirects are not followed); 410 means the receiver
wants no more deliveries; other 4xx (except 408 and 429) are not retried;
5xx, timeouts and connection failures are. Nothing here ever raises to the
caller: the outcome is a :class:`DeliveryResult`.

A receiver that keeps failing must not stall a poll for minutes (every event
could otherwise spend its full retry budget): after a few failed attempts in
a row, retries stop and further events fail fast for a short pause (a circuit
breaker; the first attempt after the pause is a single probe), and a 410
pauses deliveries for longer. Failed events are re-sent by the next poll
whose window still covers them, under the same ``webhook-id``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from standardwebhooks import Webhook
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_result,
    stop_after_attempt,
    wait_exponential_jitter,
)

from finetune_api.core.errors import ServiceError
from finetune_api.core.logs import get_logger, log

_logger = get_logger("webhooks")

# After a 410 the receiver is left alone for this long (per sender, i.e. per instance).
GONE_PAUSE_SECONDS = 600.0
# This many failed attempts in a row pause deliveries for BREAKER_PAUSE_SECONDS.
BREAKER_FAILURES = 5
BREAKER_PAUSE_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 3.0
_RETRY_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class DeliveryResult:
    """What became of one event's delivery.

    ``delivered`` and ``failed`` are both False when no webhook is configured.
    """

    event_id: str
    delivered: bool
    failed: bool
    attempts: int = 0
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class _Outcome:
    delivered: bool
    retry: bool
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    gone: bool = False


class WebhookSender:
    """POSTs signed events to one URL, with bounded retries. Thread-safe."""

    def __init__(
        self,
        url: str,
        secret: Callable[[], str],
        *,
        timeout_seconds: float = 5.0,
        max_attempts: int = 3,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        pool_size: int = 16,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        breaker_failures: int = BREAKER_FAILURES,
        breaker_pause_seconds: float = BREAKER_PAUSE_SECONDS,
    ) -> None:
        self.url = url
        self._secret = secret
        self._timeout = (min(CONNECT_TIMEOUT_SECONDS, timeout_seconds), timeout_seconds)
        self._max_attempts = max(1, max_attempts)
        self._backoff_max = backoff_max
        self._backoff = wait_exponential_jitter(
            multiplier=backoff_initial, max=backoff_max, jitter=backoff_initial
        )
        self._sleep = sleep
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(pool_size, 4), max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        self._session = session
        self._clock = clock
        self._breaker_failures = max(1, breaker_failures)
        self._breaker_pause = breaker_pause_seconds
        self._lock = threading.Lock()
        self._paused_until = 0.0
        self._pause_reason = ""
        self._failures_in_a_row = 0
        self._signers: dict[str, Webhook] = {}

    @classmethod
    def from_settings(cls, settings: Any, secret: Callable[[], str]) -> WebhookSender:
        """A sender for ``settings.webhook_url`` with the configured timeout and attempts."""
        return cls(
            settings.webhook_url,
            secret,
            timeout_seconds=settings.webhook_timeout_seconds,
            max_attempts=settings.webhook_max_attempts,
            pool_size=settings.poll_concurrency,
        )

    def send(self, msg_id: str, body: str) -> DeliveryResult:
        """Deliver ``body`` (JSON text) as message ``msg_id``; never raises."""
        with self._lock:
            paused = self._clock() < self._paused_until
            reason = self._pause_reason
        if paused:
            log(_logger, logging.ERROR, f"webhook not sent: {reason}", event_id=msg_id)
            return DeliveryResult(msg_id, delivered=False, failed=True, error=reason)

        attempts = 0

        def attempt() -> _Outcome:
            nonlocal attempts
            with self._lock:
                paused = self._clock() < self._paused_until
                reason = self._pause_reason
            if paused:  # the breaker opened during this delivery's retries
                return _Outcome(False, False, error=reason)
            attempts += 1
            outcome = self._attempt(msg_id, body)
            self._record(outcome)
            return outcome

        retrying = Retrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait,
            retry=retry_if_result(lambda outcome: outcome.retry),
            sleep=self._sleep,
            before_sleep=lambda state: self._log_retry(msg_id, state),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        try:
            outcome: _Outcome | None = retrying(attempt)
        except Exception as error:  # noqa: BLE001 - a webhook must never fail its caller
            outcome = _Outcome(False, False, error=f"unexpected {type(error).__name__}")
        if outcome is None:  # pragma: no cover - tenacity always yields an outcome
            outcome = _Outcome(False, False, error="no attempt made")

        # Success is silent: the event's own log line already says what happened.
        if not outcome.delivered:
            log(
                _logger,
                logging.ERROR,
                "webhook delivery failed",
                event_id=msg_id,
                attempts=attempts,
                status=outcome.status,
                reason=outcome.error,
            )
        return DeliveryResult(
            msg_id,
            delivered=outcome.delivered,
            failed=not outcome.delivered,
            attempts=attempts,
            status=outcome.status,
            error=outcome.error,
        )

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> WebhookSender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals --------------------------------------------------------

    def _record(self, outcome: _Outcome) -> None:
        """Feed the circuit breaker with one attempt's outcome.

        Attempts, not deliveries, are counted: a receiver that fails stops
        being retried as soon as the breaker opens, and the probe after a
        pause is one attempt, not a whole delivery's worth.
        """
        with self._lock:
            if outcome.delivered:
                self._failures_in_a_row = 0
                return
            self._failures_in_a_row += 1
            if outcome.gone:
                pause, reason = GONE_PAUSE_SECONDS, "the receiver answered 410 Gone"
            elif self._failures_in_a_row >= self._breaker_failures:
                pause = self._breaker_pause
                reason = f"{self._failures_in_a_row} delivery attempts in a row failed"
            else:
                return
            self._paused_until = self._clock() + pause
            self._pause_reason = f"{reason}; deliveries paused for {pause:g} s"
            # The next delivery after the pause is a single probe.
            self._failures_in_a_row = self._breaker_failures - 1
        log(_logger, logging.ERROR, f"webhook {self._pause_reason}")

    def _signer(self) -> Webhook:
        secret = self._secret()
        with self._lock:
            signer = self._signers.get(secret)
            if signer is None:
                # Rotation replaces the secret; keep only the current signer.
                signer = Webhook(secret)
                self._signers = {secret: signer}
            return signer

    def _attempt(self, msg_id: str, body: str) -> _Outcome:
        try:
            signer = self._signer()
        except ServiceError as error:
            return _Outcome(False, False, error=f"webhook secret unavailable: {error.message}")
        except Exception:  # noqa: BLE001 - the package raises several types for a bad secret
            return _Outcome(
                False, False, error="WEBHOOK_SECRET is not a Standard Webhooks secret (whsec_…)"
            )
        now = datetime.now(UTC)
        headers = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(math.floor(now.timestamp())),
            "webhook-signature": signer.sign(msg_id, now, body),
            "content-type": "application/json",
            "user-agent": "finetune-api-webhooks/1",
        }
        try:
            response = self._session.post(
                self.url,
                data=body.encode("utf-8"),
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.Timeout:
            return _Outcome(False, True, error=f"no answer within {self._timeout[1]:g} s")
        except requests.ConnectionError:
            return _Outcome(False, True, error="could not connect to the receiver")
        except requests.RequestException as error:
            return _Outcome(False, True, error=f"request failed ({type(error).__name__})")
        status = response.status_code
        response.close()
        if 200 <= status < 300:
            return _Outcome(True, False, status=status)
        if status == 410:
            return _Outcome(
                False, False, status=status, error="receiver answered 410 Gone", gone=True
            )
        if 300 <= status < 400:
            return _Outcome(False, False, status=status, error=f"redirect ({status}) not followed")
        if status in _RETRY_STATUSES or status >= 500:
            return _Outcome(
                False,
                True,
                status=status,
                error=f"receiver answered {status}",
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )
        return _Outcome(False, False, status=status, error=f"receiver answered {status}")

    def _wait(self, state: RetryCallState) -> float:
        backoff = float(self._backoff(state))
        outcome = state.outcome.result() if state.outcome and not state.outcome.failed else None
        if isinstance(outcome, _Outcome) and outcome.retry_after is not None:
            return min(self._backoff_max, max(backoff, outcome.retry_after))
        return backoff

    def _log_retry(self, msg_id: str, state: RetryCallState) -> None:
        outcome = state.outcome.result() if state.outcome and not state.outcome.failed else None
        log(
            _logger,
            logging.WARNING,
            "webhook attempt failed; retrying",
            event_id=msg_id,
            attempt=state.attempt_number,
            reason=outcome.error if isinstance(outcome, _Outcome) else None,
            wait_seconds=round(state.upcoming_sleep, 3),
        )


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


__all__ = ["DeliveryResult", "WebhookSender"]
