"""A team's ceilings (``TEAM_LIMITS``), checked before anything is created.

Counting a team's use costs one Baseten request whatever its history: one job
search for the statuses that have not ended (``ACTIVE_STATUSES``), whose answer
holds every active job of every team with its ``instance_type.gpu_count`` and
``node_count``; the team's jobs are those in its projects (``<prefix><team>-``).
So the cost follows the number of active jobs, never the history.

Two submits of one team racing at its limit: at most one passes. A submit of a
team that has limits holds the team's **lease** while it counts and creates: a
small object in the files' bucket (or folder, see ``core/buckets.py``) written
create-only (``if_generation_match=0`` / an exclusive create on disk), so across instances
exactly one holds it; the other waits (up to ``LEASE_WAIT_SECONDS``) and then
counts again, now seeing the first job. A lease whose holder died is taken over
once it is ``LEASE_TTL_SECONDS`` old (a replace conditioned on its generation).
Teams without limits never touch the lease.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from finetune_api.core.buckets import BucketUnavailable, PreconditionFailed
from finetune_api.core.errors import QuotaExceededError, UpstreamUnavailableError
from finetune_api.core.logs import get_logger, log
from finetune_api.core.schemas import ACTIVE_STATUSES as LIVE_STATUSES
from finetune_api.core.teams import limits_for, team_prefix

_logger = get_logger("quota")

#: The live statuses the poll searches for, and a preempted job (it comes back).
ACTIVE_STATUSES = (*LIVE_STATUSES, "TRAINING_JOB_PREEMPTED")
LEASE_TTL_SECONDS = 300.0
LEASE_WAIT_SECONDS = 60.0
LEASES = "teams/leases/"


def job_gpus(raw: dict[str, Any]) -> int:
    """``gpu_count x node_count`` of a Baseten job (1 GPU when Baseten does not say)."""
    instance = raw.get("instance_type")
    gpus = instance.get("gpu_count") if isinstance(instance, dict) else None
    nodes = raw.get("node_count")
    gpus = gpus if isinstance(gpus, int) and not isinstance(gpus, bool) and gpus >= 0 else 1
    nodes = nodes if isinstance(nodes, int) and not isinstance(nodes, bool) and nodes >= 1 else 1
    return gpus * nodes


def team_use(active: list[dict[str, Any]], prefix: str) -> tuple[int, int]:
    """(jobs, GPUs) of the active jobs whose project name starts with ``prefix``."""
    jobs = gpus = 0
    for raw in active:
        project = raw.get("training_project")
        name = project.get("name") if isinstance(project, dict) else None
        if isinstance(name, str) and name.startswith(prefix):
            jobs += 1
            gpus += job_gpus(raw)
    return jobs, gpus


class TeamLease:
    """One team's submit lease over a create-only object store (see the module doc)."""

    def __init__(
        self,
        store: Any,
        *,
        ttl: float = LEASE_TTL_SECONDS,
        wait: float = LEASE_WAIT_SECONDS,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._wait = wait
        self._clock = clock
        self._sleep = sleep

    @contextlib.contextmanager
    def held(self, team: str) -> Iterator[None]:
        name = f"{LEASES}{team}.json"
        holder = uuid.uuid4().hex
        deadline = time.monotonic() + self._wait
        pause = 0.02
        try:
            while not self._take(name, holder):
                if time.monotonic() >= deadline:
                    raise UpstreamUnavailableError(
                        "another submission of this team is still being checked against "
                        "TEAM_LIMITS; retry",
                        retry_after=5,
                    )
                self._sleep(pause)
                pause = min(pause * 2, 0.25)
        except BucketUnavailable as error:
            raise UpstreamUnavailableError(
                f"could not take the team's submit lease (storage: {error})"
            ) from None
        try:
            yield
        finally:
            self._give_back(name, holder)

    def _take(self, name: str, holder: str) -> bool:
        now = self._clock()
        body = json.dumps({"holder": holder, "expires": now + self._ttl}).encode()
        try:
            self._store.create(name, body)
            return True
        except PreconditionFailed:
            pass
        found = self._store.read(name)
        if found is None:
            return False  # released and gone between our two calls: try again
        data, token = found
        try:
            current = json.loads(data)
        except ValueError:
            current = {}
        free = current.get("holder") is None or float(current.get("expires") or 0) < now
        if not free:
            return False
        try:
            self._store.replace(name, body, token)
            return True
        except PreconditionFailed:
            return False  # someone else took it first

    def _give_back(self, name: str, holder: str) -> None:
        try:
            found = self._store.read(name)
            if found is None:
                return
            data, token = found
            if json.loads(data).get("holder") != holder:
                return  # taken over after our TTL: not ours to free
            self._store.replace(name, json.dumps({"holder": None, "expires": 0}).encode(), token)
        except (PreconditionFailed, BucketUnavailable, ValueError):
            # It frees itself after LEASE_TTL_SECONDS.
            log(_logger, 30, "could not release a team's submit lease")


class TeamQuota:
    """``TEAM_LIMITS`` for one team. Thread-safe (stateless but for the shared store)."""

    def __init__(
        self,
        limits: dict[str, dict[str, int]] | None,
        team: str,
        base_prefix: str | None,
        client: Any,
        lease: TeamLease | None,
    ) -> None:
        self._limits = limits_for(limits, team)
        self._team = team
        self._prefix = team_prefix(base_prefix, team)
        self._client = client
        self._lease = lease

    @property
    def limited(self) -> bool:
        return bool(self._limits)

    def use(self) -> tuple[int, int]:
        """(active jobs, active GPUs) of this team: one Baseten job search."""
        active = self._client.search_jobs(statuses=list(ACTIVE_STATUSES))
        return team_use(active, self._prefix)

    def check(self, gpus: int) -> None:
        """QuotaExceededError when one more job of ``gpus`` GPUs would pass a limit."""
        if not self._limits:
            return
        jobs, used = self.use()
        max_jobs = self._limits.get("max_active_jobs")
        if max_jobs is not None and jobs + 1 > max_jobs:
            raise QuotaExceededError(
                f"team {self._team} is at its limit max_active_jobs={max_jobs} "
                f"({jobs} active jobs); wait for one to end"
            )
        max_gpus = self._limits.get("max_active_gpus")
        if max_gpus is not None and used + gpus > max_gpus:
            raise QuotaExceededError(
                f"team {self._team} would pass its limit max_active_gpus={max_gpus} "
                f"({used} GPUs active, this job asks for {gpus})"
            )

    @contextlib.contextmanager
    def admit(self, gpus: int) -> Iterator[None]:
        """Check, and hold the team's lease until the job exists (nothing when unlimited)."""
        if not self._limits:
            yield
            return
        if self._lease is None:
            self.check(gpus)
            yield
            return
        with self._lease.held(self._team):
            self.check(gpus)
            yield


__all__ = ["ACTIVE_STATUSES", "TeamLease", "TeamQuota", "job_gpus", "team_use"]
