"""A local Baseten training API for tests, demos and benchmarks (like stripe-mock).

In-process::

    from sandbox import Sandbox

    sb = Sandbox(api_key="sk-test", s3_endpoint="http://127.0.0.1:5000").start()
    sb.url  # the REST base, plays https://api.baseten.co
    sb.stop()

As a process: ``python -m sandbox --port 8123 --api-key KEY --s3-endpoint URL``.
The control API under ``/_sandbox/`` is documented in ``sandbox/README.md``.
This package never imports the service (``finetune_api``).
"""

from sandbox.errors import SandboxApiError
from sandbox.server import DEFAULT_BUCKET, Sandbox
from sandbox.state import (
    ADVANCING_STATUSES,
    COMPLETED,
    CREATED,
    DEPLOY_FAILED,
    DEPLOYING,
    FAILED,
    PENDING,
    QUEUED,
    RUNNING,
    STOPPED,
    TERMINAL_STATUSES,
    SandboxState,
)

__all__ = [
    "ADVANCING_STATUSES",
    "COMPLETED",
    "CREATED",
    "DEFAULT_BUCKET",
    "DEPLOYING",
    "DEPLOY_FAILED",
    "FAILED",
    "PENDING",
    "QUEUED",
    "RUNNING",
    "STOPPED",
    "TERMINAL_STATUSES",
    "Sandbox",
    "SandboxApiError",
    "SandboxState",
]
