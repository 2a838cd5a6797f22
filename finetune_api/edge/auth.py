"""Optional API-key protection (``API_KEYS`` / ``API_KEYS_SECRET_ID``), and the caller's team."""

from __future__ import annotations

import hmac
from typing import Any

from finetune_api.core.errors import ConfigurationError, UnauthorizedError
from finetune_api.core.teams import EVERYONE, Caller, KeyTable, key_table

HEADER = "X-Api-Key"


def require_api_key(provided: str | None, secrets: Any, admin_team: str | None = None) -> Caller:
    """The :class:`Caller` ``provided`` acts for; UnauthorizedError unless it is a configured key.

    With neither ``API_KEYS`` nor ``API_KEYS_SECRET_ID`` set every call passes
    (IAM protects the function) and acts for everyone. Once either is set the
    check fails closed: a blank or malformed list (a bad team name, an empty
    key, one key in two teams) is a ConfigurationError (500), never "no auth" —
    the settings and the secret store both validate it through
    :mod:`finetune_api.core.secret_values`, and it is checked again here.
    Several keys may be configured at once so they can be rotated without
    downtime. This is the only place a key is read: below the edge, the Caller.
    """
    configured = secrets.get("api_keys", required=False)
    if configured is None:
        return EVERYONE
    try:
        table = key_table(configured)
    except ValueError as error:
        raise ConfigurationError(f"API_KEYS {error}") from None
    if not provided:
        raise UnauthorizedError(f"missing {HEADER} header")
    team = match_key(table, provided)
    if team is None:
        raise UnauthorizedError(f"invalid {HEADER}")
    if not table.teams_on:
        return EVERYONE  # no team: entry anywhere: everything as before teams
    return Caller.of(team, admin_team)


def match_key(table: KeyTable, provided: str) -> str | None:
    """The team of the key ``provided`` equals, comparing with every key in constant time."""
    supplied = provided.encode("utf-8", "surrogateescape")
    found: str | None = None
    for team, key in table.entries:
        if hmac.compare_digest(supplied, key.encode("utf-8")):
            found = team
    return found
