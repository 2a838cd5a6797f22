"""Retry on failure: the poll starts a failed job again when its submit asked for it.

A submit may carry ``"retry": {"max_attempts": 1..5}``; it travels inside the
job as ``runtime_config.json`` (with ``attempt``: how many retries led to this
job, 0 or null for the submitted one). When the poll sees such a job reach
``failed`` (never ``stopped``: a stop is the user's decision), it

1. reads the job's runtime_config.json (``GET …/download`` plus the archive
   from storage; remembered per instance, the archive never changes), which
   also tells the ``training_job.failed`` event how many attempts are left;
2. when attempts are left, resumes the job through
   :meth:`~finetune_api.jobs.resume.ResumeService.retry`: from its newest
   checkpoint (the poll has just read them), or from the start when it has none; the
   new job's runtime_config.json says ``attempt`` + 1 and ``resume_from`` names
   the failed job, so the chain is visible;
3. emits ``training_job.retried`` (id ``evt_<failed job>_retried``).

Once per failure, across polls and instances: polls that share a state (one
``POLL_STATE_BUCKET``, or one ``POLL_STATE_FILE``) claim the retry first
(``polling/claims.py``: create-only, one winner, the verdict kept); and the retry's
idempotency key, an internal one derived from the failed job's id, lets a poll
without that state (another instance: it finds the job by the key's digest in
its Baseten name, or, racing, keeps the earliest and stops its own) answer the job
the first one created. A retry that fails for now (Baseten unavailable) keeps the
job in the poll's view, and the next poll tries again while the failure is inside
its window; one refused for good (400, 404, 409, 422) is remembered in its claim
and not tried again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from finetune_api.core.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    ServiceError,
    UpstreamRejectedError,
    UpstreamUnavailableError,
)
from finetune_api.core.schemas import Job, ResumedJob
from finetune_api.jobs.resume import ResumeService
from finetune_api.jobs.runtime_config import RuntimeConfigs
from finetune_api.polling.claims import STARTED, ClaimsUnavailable, RetryClaims, Ticket

FAILED = "TRAINING_JOB_FAILED"
_MEMORY = 4096


@dataclass(frozen=True)
class RetryPlan:
    """What a failed job's own request says about retrying it."""

    config: dict[str, Any]
    attempts_used: int  # retries that led to the failed job (0: it was the submitted one)
    max_attempts: int

    @property
    def attempts_left(self) -> int:
        return max(0, self.max_attempts - self.attempts_used)

    @property
    def next_attempt(self) -> int:
        return self.attempts_used + 1

    def details(self) -> dict[str, Any]:
        """What the ``training_job.failed`` event adds (``attempts_left`` 0: the last failure)."""
        left = self.attempts_left
        return {
            "retry": {
                "attempts_used": self.attempts_used,
                "max_attempts": self.max_attempts,
                "attempts_left": left,
                "will_retry": left > 0,
            }
        }


def _positive(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def plan_from_config(config: dict[str, Any] | None) -> RetryPlan | None:
    """None when the job asked for no retry (or is not this service's)."""
    if config is None:
        return None
    retry = config.get("retry")
    if not isinstance(retry, dict):
        return None
    max_attempts = _positive(retry.get("max_attempts"))
    if max_attempts is None or max_attempts < 1:
        return None
    used = _positive(config.get("attempt")) or 0
    return RetryPlan(config=config, attempts_used=max(0, used), max_attempts=max_attempts)


#: Refusals no later attempt changes (the request as it stands, or the job, is the problem).
PERMANENT = (InvalidRequestError, NotFoundError, ConflictError, UpstreamRejectedError)


def is_permanent(error: BaseException) -> bool:
    """Whether a retry refused with ``error`` can never succeed as it stands."""
    return isinstance(error, PERMANENT)


class RetryWatch:
    """Process-wide and thread-safe; what it remembers only saves Baseten calls.

    ``claims``: shared with the other polls of the same state (see ``claims.py``).
    """

    def __init__(
        self, resume: ResumeService, configs: RuntimeConfigs, claims: RetryClaims | None = None
    ) -> None:
        self._resume = resume
        self._configs = configs
        self._claims = claims
        self._lock = threading.Lock()
        self._started: OrderedDict[str, Job] = OrderedDict()

    def plan(self, raw: dict[str, Any]) -> RetryPlan | None:
        """The retry plan of a failed job (one download, remembered); raises ServiceError."""
        project_id = str(raw.get("training_project_id") or "")
        return plan_from_config(self._configs.read(project_id, str(raw["id"])))

    def retry(
        self,
        raw: dict[str, Any],
        plan: RetryPlan,
        checkpoints: list[dict[str, Any]] | None = None,
    ) -> Job | None:
        """The job that continues ``raw`` (created once; later calls answer the same job).

        None: nothing to do here (another poll holds the claim, or the retry was
        refused for good before). Raises the refusal (a ServiceError) the one time a
        retry is refused. ``checkpoints``: the failed job's, when the poll has just read them.
        """
        job_id = str(raw["id"])
        with self._lock:
            known = self._started.get(job_id)
        if known is not None:
            return known
        if self._claims is None:
            return self._remember(job_id, self._start(raw, plan, checkpoints))
        try:
            ticket = self._claims.take(job_id)
        except ClaimsUnavailable as error:
            raise UpstreamUnavailableError(
                f"the retry claims ({self._claims.description}) are unavailable: {error}"
            ) from None
        if not isinstance(ticket, Ticket):
            if ticket.state == STARTED and ticket.job is not None:
                return self._remember(job_id, ResumedJob.model_validate(ticket.job))
            return None
        try:
            job = self._start(raw, plan, checkpoints)
        except ServiceError as error:
            if is_permanent(error):
                self._claims.refused(ticket, f"{error.type}: {error.message}")
            else:
                self._claims.release(ticket)
            raise
        except BaseException:
            self._claims.release(ticket)
            raise
        self._claims.started(ticket, job.model_dump(mode="json"))
        return self._remember(job_id, job)

    def _start(
        self, raw: dict[str, Any], plan: RetryPlan, checkpoints: list[dict[str, Any]] | None
    ) -> Job:
        return self._resume.retry(
            raw, plan.config, attempt=plan.next_attempt, checkpoints=checkpoints
        )

    def _remember(self, job_id: str, job: Job) -> Job:
        with self._lock:
            self._started[job_id] = job
            while len(self._started) > _MEMORY:
                self._started.popitem(last=False)
        return job


__all__ = ["FAILED", "RetryPlan", "RetryWatch", "is_permanent", "plan_from_config"]
