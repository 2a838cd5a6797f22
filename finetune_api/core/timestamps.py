"""Reading the timestamps Baseten and our own poll state carry: one forgiving parser."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def parse_time(value: Any) -> datetime | None:
    """An aware UTC datetime from ISO 8601 / RFC 3339 text; None when absent or unreadable.

    A time without a zone is taken as UTC. Unreadable text (including a year
    out of range, which raises ``OverflowError``) is None, never an exception:
    a bad timestamp is one record's problem, not the caller's.
    """
    if not isinstance(value, str) or not value:
        return None
    if value.endswith("z"):  # RFC 3339 allows a lower-case zone letter; fromisoformat does not
        value = value[:-1] + "Z"
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


__all__ = ["parse_time"]
