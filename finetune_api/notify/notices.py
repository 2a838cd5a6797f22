"""Webhook delivery off the request path, for the notices a submission sends.

A submit announces its job (``training_job.submitted``), but the caller must
not wait for the receiver: a slow or failing one cost every submit up to
``WEBHOOK_MAX_ATTEMPTS`` x ``WEBHOOK_TIMEOUT_SECONDS`` plus backoff. The event
is logged in the request (so it is never lost from the logs) and its delivery
is queued here, for one background thread per process.

Bounded: at most ``capacity`` notices wait; one more is dropped at once and
logged at ERROR. On a normal shutdown (Cloud Run's SIGTERM stops gunicorn's
worker, which exits through ``atexit``; a script simply ends) the queue is
flushed for up to ``shutdown_seconds``. The loss window: notices still queued
when the process is killed (a crash, or Cloud Run's SIGKILL 10 s after SIGTERM)
or when the flush runs out of time are not delivered; their log lines were
written and the next poll still reports the job's status changes.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from finetune_api.core.logs import get_logger, log

_logger = get_logger("notices")

DEFAULT_CAPACITY = 1000
# Cloud Run sends SIGKILL 10 s after SIGTERM; leave the rest of it to gunicorn.
DEFAULT_SHUTDOWN_SECONDS = 8.0


class BackgroundDelivery:
    """A bounded queue of items handed to ``deliver`` on one daemon thread. Thread-safe."""

    def __init__(
        self,
        deliver: Callable[[Any], object],
        *,
        capacity: int = DEFAULT_CAPACITY,
        shutdown_seconds: float = DEFAULT_SHUTDOWN_SECONDS,
        describe: Callable[[Any], dict[str, Any]] = lambda item: {},
    ) -> None:
        self._deliver = deliver
        self._describe = describe
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self._shutdown_seconds = shutdown_seconds
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def put(self, item: Any) -> bool:
        """Queue ``item``; False (logged) when the queue is full. Never blocks."""
        self._start()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._lock:
                self.dropped += 1
            log(
                _logger,
                logging.ERROR,
                "webhook queue is full; this notice is not delivered (it is logged)",
                **self._describe(item),
            )
            return False
        return True

    def pending(self) -> int:
        """Items queued or being delivered."""
        return self._queue.unfinished_tasks

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for the queue to drain; the number still pending."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._queue.all_tasks_done.wait(left)
            return self._queue.unfinished_tasks

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="notices", daemon=True)
                thread.start()
                atexit.register(self._at_exit)
                self._thread = thread

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                self._deliver(item)
            except Exception:
                _logger.exception("delivering a notice failed", extra={"fields": {}})
            finally:
                self._queue.task_done()

    def _at_exit(self) -> None:
        if not self._queue.unfinished_tasks:
            return
        left = self.flush(self._shutdown_seconds)
        if left:
            log(
                _logger,
                logging.ERROR,
                "shutting down with undelivered webhook notices (they are logged)",
                undelivered=left,
            )


__all__ = ["BackgroundDelivery"]
