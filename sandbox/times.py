"""The sandbox's one time format: RFC 3339 with microseconds, as Baseten writes it."""

from __future__ import annotations

from datetime import UTC, datetime

_US = 1_000_000


def rfc3339(us: int) -> str:
    """``2026-11-27T06:00:00.123456Z`` for integer microseconds since the epoch."""
    seconds, micros = divmod(us, _US)
    moment = datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
