"""Optional API-key protection (``API_KEYS`` / ``API_KEYS_SECRET_ID``)."""

from __future__ import annotations

import hmac
from typing import Any

from finetune_api.core import secret_values
from finetune_api.core.errors import ConfigurationError, UnauthorizedError

HEADER = "X-Api-Key"


def require_api_key(provided: str | None, secrets: Any) -> None:
    """Raise UnauthorizedError unless ``provided`` is one of the configured keys.

    With neither ``API_KEYS`` nor ``API_KEYS_SECRET_ID`` set every call passes
    (IAM protects the function). Once either is set the check fails closed: a
    blank or malformed list is a ConfigurationError (500), never "no auth" —
    the settings and the secret store both validate it through
    :mod:`.secret_values`, and it is checked again here. Several keys may be
    configured at once so they can be rotated without downtime.
    """
    configured = secrets.get("api_keys", required=False)
    if configured is None:
        return
    try:
        keys = secret_values.api_keys(configured)
    except ValueError as error:
        raise ConfigurationError(f"API_KEYS {error}") from None
    if not provided:
        raise UnauthorizedError(f"missing {HEADER} header")
    supplied = provided.encode("utf-8", "surrogateescape")
    # Compare against every key (constant time each) so timing reveals nothing.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(supplied, key.encode("utf-8"))
    if not matched:
        raise UnauthorizedError(f"invalid {HEADER}")
