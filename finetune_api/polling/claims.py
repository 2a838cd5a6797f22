"""One failure, one retry: a create-only claim beside the poll's state, and its verdict.

Two ``poll_jobs`` instances polling at once (Cloud Scheduler retrying a slow poll, a
deploy overlapping the old revision) both see a failed job. Before pushing, a poll
creates ``retry-<failed job id>.json`` under the claims prefix, create-only (Cloud
Storage ``ifGenerationMatch=0``; on disk an exclusive link): exactly one poll wins and
pushes; every other leaves the job alone. The claim then keeps the verdict::

    {"state": "claimed" | "started" | "refused", "owner": "<random hex>",
     "at": "<RFC 3339>", "job": <the new Job> | null, "reason": "<why>" | null}

- ``started``: later polls, on any instance, answer that job without asking Baseten;
- ``refused``: the retry cannot succeed as it stands (our own rules or Baseten refused
  it: a 400, 404, 409 or 422); no later poll tries again, so a hopeless retry costs
  one attempt, not one per poll while its failure stays inside the lookback window;
- a transient failure (Baseten unavailable) removes the claim: the next poll tries
  again while the failure is inside its window;
- a claim still ``claimed`` after :data:`STALE_SECONDS` (its instance died mid-push)
  is taken over, with a precondition on the version read; the retry's idempotency
  key then finds the job if the dead instance had made it.

Where: ``gs://POLL_STATE_BUCKET/<POLL_STATE_OBJECT>.claims/`` beside a Cloud Storage
state, ``<POLL_STATE_FILE>.claims/`` beside the local file (both from
:mod:`finetune_api.core.buckets`). One small object per failure retried.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from finetune_api.core.buckets import BucketError, PreconditionFailed
from finetune_api.core.timestamps import parse_time

#: A claim left ``claimed`` this long was abandoned (its poll died); another poll takes it.
STALE_SECONDS = 900.0
CLAIMED, STARTED, REFUSED = "claimed", "started", "refused"
_MAX_CLAIM_BYTES = 256 * 1024


class ClaimObjects(Protocol):
    """:class:`~finetune_api.core.buckets.Bucket` or :class:`~finetune_api.core.buckets.Folder`."""

    description: str

    def read(self, name: str) -> tuple[bytes, str] | None: ...
    def create(self, name: str, data: bytes) -> Any: ...
    def replace(self, name: str, data: bytes, token: str) -> Any: ...
    def delete(self, name: str) -> None: ...


class ClaimsUnavailable(Exception):
    """The claims' store failed: nobody can tell whether another poll holds the retry."""


@dataclass(frozen=True)
class Ticket:
    """This poll holds the claim: it pushes, then says how it went."""

    name: str
    owner: str
    token: str


@dataclass(frozen=True)
class Verdict:
    """Someone holds or settled the claim; ``job``: the new job when ``started``."""

    state: str
    job: dict[str, Any] | None = None
    reason: str | None = None


class RetryClaims:
    """Claims of retries, one per failed job. Thread-safe (the store's calls are)."""

    def __init__(
        self,
        objects: ClaimObjects,
        *,
        prefix: str = "",
        stale_seconds: float = STALE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._objects = objects
        self._prefix = prefix
        self._stale = stale_seconds
        self._clock = clock
        self.description = f"{objects.description}/{prefix}".rstrip("/")

    def _name(self, failed_job_id: str) -> str:
        return f"{self._prefix}retry-{failed_job_id}.json"

    def _document(self, owner: str, state: str, **extra: Any) -> bytes:
        at = datetime.fromtimestamp(self._clock(), UTC).isoformat().replace("+00:00", "Z")
        record = {"state": state, "owner": owner, "at": at, "job": None, "reason": None}
        return json.dumps({**record, **extra}).encode("utf-8")

    def take(self, failed_job_id: str) -> Ticket | Verdict:
        """The claim for this poll (a :class:`Ticket`), or what another poll left."""
        name = self._name(failed_job_id)
        owner = secrets.token_hex(8)
        try:
            try:
                token = self._objects.create(name, self._document(owner, CLAIMED))
                return Ticket(name, owner, str(token))
            except PreconditionFailed:
                pass
            found = self._objects.read(name)
            if found is None:  # released between our create and read: the next poll takes it
                return Verdict(CLAIMED)
            record = _parse(found[0])
            if record is not None and record.get("owner") == owner and record["state"] == CLAIMED:
                return Ticket(name, owner, found[1])  # our own create, answered 412 on a retry
            if record is None or self._abandoned(record):
                token = self._objects.replace(name, self._document(owner, CLAIMED), found[1])
                return Ticket(name, owner, str(token))
        except PreconditionFailed:
            return Verdict(CLAIMED)  # another poll took it over first
        except BucketError as error:
            raise ClaimsUnavailable(str(error)) from None
        return Verdict(record["state"], record.get("job"), record.get("reason"))

    def _abandoned(self, record: dict[str, Any]) -> bool:
        if record["state"] != CLAIMED:
            return False
        at = parse_time(record.get("at"))
        return at is None or self._clock() - at.timestamp() > self._stale

    def started(self, ticket: Ticket, job: dict[str, Any]) -> None:
        """The retry made ``job``: later polls answer it (best effort: the key finds it too)."""
        self._settle(ticket, self._document(ticket.owner, STARTED, job=job))

    def refused(self, ticket: Ticket, reason: str) -> None:
        """The retry cannot succeed as it stands: no later poll tries again."""
        self._settle(ticket, self._document(ticket.owner, REFUSED, reason=reason[:500]))

    def release(self, ticket: Ticket) -> None:
        """A transient failure: the next poll may try again."""
        try:
            found = self._objects.read(ticket.name)
            if found is not None and found[1] == ticket.token:
                self._objects.delete(ticket.name)
        except BucketError:
            pass  # the claim goes stale and is taken over later

    def _settle(self, ticket: Ticket, data: bytes) -> None:
        # On failure the claim goes stale; the key finds the job (or the refusal recurs once).
        with contextlib.suppress(BucketError):
            self._objects.replace(ticket.name, data, ticket.token)


def _parse(data: bytes) -> dict[str, Any] | None:
    """A claim as written by :class:`RetryClaims`, else None (taken over as abandoned)."""
    if len(data) > _MAX_CLAIM_BYTES:
        return None
    try:
        record = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(record, dict) or record.get("state") not in (CLAIMED, STARTED, REFUSED):
        return None
    if record.get("job") is not None and not isinstance(record["job"], dict):
        return None
    if record.get("reason") is not None and not isinstance(record["reason"], str):
        return None
    return record


__all__ = [
    "CLAIMED",
    "REFUSED",
    "STALE_SECONDS",
    "STARTED",
    "ClaimsUnavailable",
    "RetryClaims",
    "Ticket",
    "Verdict",
]
