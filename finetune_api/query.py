"""Strict parsing of query-string values.

``str.isdigit()`` and ``int()`` accept far more than a caller means: ``"²"``
passes ``isdigit()`` and then fails ``int()`` (a 500), Arabic-Indic digits
parse as numbers, and a 4,000-digit value costs a quadratic conversion before
any range check. A number here is 1 to a few ASCII digits, checked before it is
converted, and a bad one is an ``invalid_request`` that does not quote it.
"""

from __future__ import annotations

import re

from .errors import InvalidRequestError

_ASCII_DIGITS = re.compile(r"[0-9]+")


def bounded_int(raw: str | None, name: str, low: int, high: int, default: int) -> int:
    """``raw`` (a query value) as an integer in ``[low, high]``; ``default`` when absent."""
    if raw is None:
        return default
    rule = f"must be an integer from {low} to {high}"
    # No more digits than the bound has (leading zeros aside), so int() stays cheap.
    if len(raw) <= len(str(high)) and _ASCII_DIGITS.fullmatch(raw):
        value = int(raw)
        if low <= value <= high:
            return value
    raise InvalidRequestError(
        f"{name} {rule}", details=[{"location": f"query.{name}", "reason": rule}]
    )


__all__ = ["bounded_int"]
