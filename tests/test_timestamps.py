"""The one timestamp parser: Baseten's times, our poll state's, never an exception."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from finetune_api.core.timestamps import parse_time
from finetune_api.insights.training_metrics import seconds_between

NOON = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-29T12:00:00Z",
        "2026-11-29T12:00:00z",
        "2026-11-29T12:00:00+00:00",
        "2026-11-29T13:00:00+01:00",
        "2026-11-29T12:00:00",  # no zone: UTC
        "2026-11-29T12:00:00.000000Z",
    ],
)
def test_readable_times_are_aware_utc(text: str) -> None:
    moment = parse_time(text)
    assert moment == NOON and moment is not None and moment.tzinfo == UTC


@pytest.mark.parametrize(
    "value", [None, "", "yesterday", "2026-13-01T00:00:00Z", "0001-01-01T00:00:00+01:00", 17]
)
def test_unreadable_times_are_none(value: Any) -> None:
    assert parse_time(value) is None


def test_durations_mix_zoned_and_unzoned_times() -> None:
    assert seconds_between("2026-11-29T12:00:00", "2026-11-29T12:01:30Z") == 90.0
    assert seconds_between("2026-11-29T12:00:00Z", "not a time") is None
