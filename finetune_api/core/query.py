"""Strict parsing of query-string values.

``str.isdigit()`` and ``int()`` accept far more than a caller means: ``"²"``
passes ``isdigit()`` and then fails ``int()`` (a 500), Arabic-Indic digits
parse as numbers, and a 4,000-digit value costs a quadratic conversion before
any range check. A number here is 1 to a few ASCII digits, checked before it is
converted, and a bad one is an ``invalid_request`` that does not quote it.
"""

from __future__ import annotations

import re

from finetune_api.core.errors import InvalidRequestError

_ASCII_DIGITS = re.compile(r"[0-9]+")


def bounded_int(
    raw: str | int | None,
    name: str,
    low: int,
    high: int,
    default: int,
    *,
    location: str = "query.",
) -> int:
    """``raw`` (a query value, or an int from the Python API) in ``[low, high]``.

    ``default`` when absent; ``location`` prefixes ``name`` in the error's details.
    """
    if raw is None:
        return default
    rule = f"must be an integer from {low} to {high}"
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    # No more digits than the bound has (leading zeros aside), so int() stays cheap.
    elif isinstance(raw, str) and len(raw) <= len(str(high)) and _ASCII_DIGITS.fullmatch(raw):
        value = int(raw)
    if value is not None and low <= value <= high:
        return value
    raise InvalidRequestError(
        f"{name} {rule}", details=[{"location": f"{location}{name}", "reason": rule}]
    )


__all__ = ["bounded_int"]
