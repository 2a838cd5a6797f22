"""Optional API-key protection (``API_KEYS`` / ``API_KEYS_SECRET_ID``)."""

from __future__ import annotations

import hmac
from typing import Any

from .errors import UnauthorizedError

HEADER = "X-Api-Key"


def require_api_key(provided: str | None, secrets: Any) -> None:
    """Raise UnauthorizedError unless ``provided`` is one of the configured keys.

    With no keys configured every call passes (IAM protects the function).
    Several keys may be configured at once so they can be rotated without downtime.
    """
    configured = secrets.get("api_keys", required=False)
    if not configured:
        return
    keys = [key.strip() for key in configured.split(",") if key.strip()]
    if not provided:
        raise UnauthorizedError(f"missing {HEADER} header")
    supplied = provided.encode("utf-8", "surrogateescape")
    # Compare against every key (constant time each) so timing reveals nothing.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(supplied, key.encode("utf-8"))
    if not matched:
        raise UnauthorizedError(f"invalid {HEADER}")
