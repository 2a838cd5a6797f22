"""The poll's memory between two polls: its format and where it is kept.

A poll that remembers which jobs were active last time needs to ask Baseten
only about the active ones (and the few that left the active set), instead of
downloading the whole job history. It also remembers which events it already
delivered, so the next, overlapping poll does not POST them again.

The state is one small JSON document (version 1)::

    {"version": 1,
     "baseten": "https://api.baseten.co",          # which Baseten it describes
     "until": "2026-11-28T12:05:00Z",              # end of the last saved poll's window
     "full_sweep_at": "2026-11-28T00:00:03Z",      # last poll that read every job
     "jobs": {"<job id>": {"project": "<project id>",
                           "status": "TRAINING_JOB_RUNNING",  # last status reported (or null)
                           "owed_since": null}},   # set while one of its events failed
     "sent": {"<event id>": "<event timestamp>"},  # delivered recently (inside the lookback)
     "projects": {"<project id>": "<id of its newest job>"}}  # as last seen

``jobs`` holds every job that was active at the last poll plus finished jobs
whose last notice failed (kept for one lookback so the next poll retries
them); ``sent`` holds the ids of events delivered (or logged, without a
webhook) whose time is still inside the lookback; ``projects`` the newest job
of each project (a project whose newest job changed may hold jobs that were
created and finished between two polls). All stay small: they grow with active
jobs, recent events and projects, never with job history.

Two stores, one interface (:class:`StateStore`): a Cloud Storage object
(``gcs_store.py``, when ``POLL_STATE_BUCKET`` is set) and a local file (the
default, so ``make run`` and the sandbox need no cloud). Both write with a
precondition on the version they read (Cloud Storage generation; the file's
identity for the local store), so a stale writer loses instead of overwriting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from finetune_api.core.buckets import ABSENT, BucketError, Folder, PreconditionFailed

VERSION = 1
#: The largest state read, and the most jobs it may track: a state past either was
#: not written by a poll (it grows with active jobs and recent events, never with
#: history), so it is unreadable: that poll sweeps and overwrites it.
MAX_STATE_BYTES = 8 * 1024 * 1024
MAX_TRACKED_JOBS = 10_000


class StateError(Exception):
    """The state could not be read or written; the message is safe to log."""


class StateUnavailable(StateError):
    """The store did not answer, or failed (an outage)."""


class StateConflict(StateError):
    """Someone saved the state after we read it: our write lost."""


@dataclass
class TrackedJob:
    project: str
    status: str | None
    owed_since: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"project": self.project, "status": self.status, "owed_since": self.owed_since}


@dataclass
class PollState:
    baseten: str
    until: str
    full_sweep_at: str
    jobs: dict[str, TrackedJob] = field(default_factory=dict)
    sent: dict[str, str] = field(default_factory=dict)
    projects: dict[str, str] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        document = {
            "version": VERSION,
            "baseten": self.baseten,
            "until": self.until,
            "full_sweep_at": self.full_sweep_at,
            "jobs": {job_id: job.to_json() for job_id, job in sorted(self.jobs.items())},
            "sent": dict(sorted(self.sent.items())),
            "projects": dict(sorted(self.projects.items())),
        }
        return json.dumps(document, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> PollState:
        """Parse a saved state; anything unexpected raises ``ValueError`` (treated as corrupt).

        Over :data:`MAX_STATE_BYTES`, nested too deeply for ``json`` (a
        ``RecursionError``), or naming more than :data:`MAX_TRACKED_JOBS` jobs
        is unexpected too: a poll must never fail on its state, nor read every
        job a planted state names.
        """
        if len(data) > MAX_STATE_BYTES:
            raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
        try:
            document = json.loads(data.decode("utf-8"))
        except RecursionError:
            raise ValueError("nested too deeply") from None
        if not isinstance(document, dict) or document.get("version") != VERSION:
            raise ValueError("not a version 1 poll state")
        jobs_raw = document.get("jobs")
        sent_raw = document.get("sent")
        if not isinstance(jobs_raw, dict) or not isinstance(sent_raw, dict):
            raise ValueError("jobs and sent must be objects")
        if len(jobs_raw) > MAX_TRACKED_JOBS:
            raise ValueError(f"tracks more than {MAX_TRACKED_JOBS} jobs")
        jobs: dict[str, TrackedJob] = {}
        for job_id, item in jobs_raw.items():
            if not isinstance(item, dict) or not isinstance(item.get("project"), str):
                raise ValueError("a job entry needs its project")
            status, owed = item.get("status"), item.get("owed_since")
            if not (status is None or isinstance(status, str)) or not (
                owed is None or isinstance(owed, str)
            ):
                raise ValueError("status and owed_since must be text or null")
            jobs[str(job_id)] = TrackedJob(item["project"], status, owed)
        sent = {str(key): value for key, value in sent_raw.items() if isinstance(value, str)}
        projects_raw = document.get("projects", {})
        if not isinstance(projects_raw, dict):
            raise ValueError("projects must be an object")
        projects = {str(k): v for k, v in projects_raw.items() if isinstance(v, str)}
        for key in ("baseten", "until", "full_sweep_at"):
            if not isinstance(document.get(key), str):
                raise ValueError(f"{key} must be text")
        _moment(document["until"])
        _moment(document["full_sweep_at"])
        return cls(
            document["baseten"],
            document["until"],
            document["full_sweep_at"],
            jobs,
            sent,
            projects,
        )


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("times must carry a time zone")
    return moment


@dataclass
class Loaded:
    """What a load found: the state (None when there is none to use) and why."""

    state: PollState | None
    token: str | None  # the version read, for the next write's precondition; None if unknown
    problem: str | None = None  # "missing", "unreadable: …", "unavailable: …"


class StateStore(Protocol):
    """Where the state lives. ``save`` raises StateConflict or StateUnavailable."""

    #: where, for logs and the poll's answer (never a credential)
    description: str
    #: least seconds between two writes of one poll (Cloud Storage: one write a second per object)
    min_write_interval: float

    def read(self) -> tuple[bytes | None, str | None]: ...
    def save(self, data: bytes, token: str) -> str: ...


def load(store: StateStore, baseten: str) -> Loaded:
    """Read and parse the state; never raises (problems are reported in ``Loaded``)."""
    try:
        data, token = store.read()
    except StateError as error:
        return Loaded(None, None, f"unavailable: {error}")
    if data is None:
        return Loaded(None, ABSENT, "missing")
    try:
        state = PollState.from_bytes(data)
    except (ValueError, UnicodeDecodeError) as error:
        # Overwritten by this poll (the token is known), after a full sweep.
        return Loaded(None, token, f"unreadable: {type(error).__name__}")
    if state.baseten != baseten:
        return Loaded(None, token, "unreadable: it describes another Baseten")
    return Loaded(state, token)


class LocalStateStore:
    """The state in a local file (a :class:`~finetune_api.core.buckets.Folder` object):
    created exclusively, then replaced atomically under a lock file (``<file>.lock``).

    The token is the file's identity (inode, modification time and size): every
    save writes a new file and renames it into place, so any save changes it.
    (No fsync: a lost state costs one full sweep.)
    """

    min_write_interval = 0.0

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"file {path}"
        self._folder = Folder(path.parent, lock_name=f"{path.name}.lock")

    def read(self) -> tuple[bytes | None, str | None]:
        try:
            # One byte past the cap is enough to know the state is unreadable.
            found = self._folder.read(self.path.name, limit=MAX_STATE_BYTES + 1)
        except BucketError as error:
            raise StateUnavailable(f"cannot read {self.path}: {error}") from None
        return (None, ABSENT) if found is None else found

    def save(self, data: bytes, token: str) -> str:
        try:
            if token == ABSENT:
                return str(self._folder.create(self.path.name, data))
            return str(self._folder.replace(self.path.name, data, token))
        except PreconditionFailed:
            raise StateConflict(f"{self.path} changed since it was read") from None
        except BucketError as error:
            raise StateUnavailable(f"cannot write {self.path}: {error}") from None


__all__ = [
    "ABSENT",
    "MAX_STATE_BYTES",
    "MAX_TRACKED_JOBS",
    "Loaded",
    "LocalStateStore",
    "PollState",
    "StateConflict",
    "StateError",
    "StateStore",
    "StateUnavailable",
    "TrackedJob",
    "load",
]
