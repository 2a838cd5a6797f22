"""Decoding untrusted JSON: the one place request bodies and messages become values.

Whatever the bytes are, the outcome is a value or an :class:`InvalidRequestError`
(HTTP 400, or an acknowledged bad Pub/Sub message), never another exception:
``json`` raises ``RecursionError`` (not a ``ValueError``) for deeply nested
input such as ``"[" * 3000``, and a 500 or a retried poison message must not
follow from a body a caller chose. Messages never quote the input.
"""

from __future__ import annotations

import json
from typing import Any

from finetune_api.core.errors import InvalidRequestError


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def decode_json(raw: bytes | bytearray | str, what: str = "request body") -> Any:
    """The JSON value in ``raw`` (UTF-8 bytes or text); InvalidRequestError if there is none."""
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequestError(f"{what} is not UTF-8 text") from None
    else:
        text = raw
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidRequestError(f"{what} is nested too deeply") from None
    except ValueError as error:
        raise InvalidRequestError(f"{what} is not valid JSON: {error}") from None
    except Exception:  # noqa: BLE001 - any other failure is still the input's fault
        raise InvalidRequestError(f"{what} could not be decoded") from None


__all__ = ["decode_json"]
