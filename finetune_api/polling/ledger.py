"""One poll's bookkeeping against the saved state: what it knew, learns and writes.

The ledger loads the state once, answers "was this job tracked, and as what?"
and "was this event already delivered?", records what the poll delivers and
what it learns about each job, and writes:

* after deliveries, the previous state plus the new delivery records (at most
  once per ``store.min_write_interval``), so a poll that dies halfway leaves
  behind which notices it already sent, and the next poll redoes the rest;
* at the end, the new state (active jobs, jobs still owed a notice, recent
  delivery records).

Every write carries the version read as a precondition; once a write loses
(someone else saved since), the ledger stops writing and says so. Thread-safe:
the poll's workers share one ledger.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from finetune_api.core.logs import get_logger, log
from finetune_api.core.timestamps import parse_time
from finetune_api.notify.events import Event, rfc3339
from finetune_api.polling.state import (
    ABSENT,
    PollState,
    StateConflict,
    StateError,
    StateStore,
    TrackedJob,
    load,
)

_logger = get_logger("poll_state")

#: Delivery records are kept this long beyond the lookback (clock skew, slow polls).
SENT_MARGIN = timedelta(minutes=10)
_EPOCH = "1970-01-01T00:00:00Z"


class PollLedger:
    def __init__(
        self,
        store: StateStore | None,
        baseten: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.baseten = baseten
        self._clock = clock
        self._lock = threading.Lock()
        if store is None:
            self.previous: PollState | None = None
            self.problem: str | None = "no state store"
            self._token: str | None = None
        else:
            loaded = load(store, baseten)
            self.previous, self.problem, self._token = loaded.state, loaded.problem, loaded.token
            if loaded.problem and loaded.problem != "missing":
                log(
                    _logger,
                    logging.WARNING,
                    "poll state not usable; this poll reads every job",
                    store=store.description,
                    problem=loaded.problem,
                )
        self._new_sent: dict[str, str] = {}
        self._jobs: dict[str, TrackedJob] = {}
        self._projects: dict[str, str] | None = None
        self._last_write = -math.inf
        self._dirty = False
        self._lost = False
        self.saved = False
        self.save_problem: str | None = None if store is not None else "no state store"

    # -- what the previous poll knew --------------------------------------------------

    def tracked(self, job_id: str) -> TrackedJob | None:
        return self.previous.jobs.get(job_id) if self.previous is not None else None

    def already_sent(self, event_id: str) -> bool:
        with self._lock:
            if event_id in self._new_sent:
                return True
        return self.previous is not None and event_id in self.previous.sent

    # -- what this poll learns ----------------------------------------------------------

    def track(self, job_id: str, job: TrackedJob) -> None:
        with self._lock:
            self._jobs[job_id] = job

    def see_projects(self, newest_jobs: dict[str, str]) -> None:
        """The newest job of every project, as this poll saw them."""
        with self._lock:
            self._projects = dict(newest_jobs)

    def record_sent(self, event: Event, *, delivered: bool) -> None:
        """Remember ``event`` as sent; a webhook delivery is written down promptly."""
        with self._lock:
            self._new_sent[event.id] = event.timestamp
            self._dirty = True
            if not delivered or self._lost or self.store is None or self._token is None:
                return
            if self._clock() - self._last_write < self.store.min_write_interval:
                return
            self._write_locked(self._progress_state(), final=False)

    def _progress_state(self) -> PollState:
        """The previous state plus this poll's deliveries (what a crash must not lose)."""
        sent = {**(self.previous.sent if self.previous else {}), **self._new_sent}
        if self.previous is None:
            # Nothing usable was loaded: whoever reads this must still read every job.
            return PollState(self.baseten, _EPOCH, _EPOCH, {}, sent)
        return PollState(
            self.baseten,
            self.previous.until,
            self.previous.full_sweep_at,
            dict(self.previous.jobs),
            sent,
            dict(self.previous.projects),
        )

    # -- writing ------------------------------------------------------------------------

    def finish(self, *, until: datetime, lookback: timedelta, full_sweep: bool) -> None:
        """Save the new state; the outcome is in ``saved`` / ``save_problem``."""
        if self.store is None:
            return
        with self._lock:
            if self._lost:
                return
            oldest = until - lookback - SENT_MARGIN
            sent = {**(self.previous.sent if self.previous else {}), **self._new_sent}
            if self._token is None and not self._recover_token_locked(until, sent):
                return
            kept = {
                event_id: stamp
                for event_id, stamp in sent.items()
                if (moment := parse_time(stamp)) is not None and moment >= oldest
            }
            swept_at = (
                rfc3339(until)
                if full_sweep
                else (self.previous.full_sweep_at if self.previous else _EPOCH)
            )
            projects = self._projects
            if projects is None:  # not looked at (a full sweep): keep what was known
                projects = dict(self.previous.projects) if self.previous else {}
            state = PollState(
                self.baseten, rfc3339(until), swept_at, dict(self._jobs), kept, projects
            )
            self._write_locked(state, final=True)

    def _recover_token_locked(self, until: datetime, sent: dict[str, str]) -> bool:
        """The state could not be read at the start: read it again before overwriting it."""
        assert self.store is not None
        loaded = load(self.store, self.baseten)
        if loaded.token is None:
            self.save_problem = f"not saved: the store is still {loaded.problem}"
            log(_logger, logging.ERROR, "poll state not saved", problem=self.save_problem)
            return False
        if loaded.state is not None:
            saved_until = parse_time(loaded.state.until)
            if saved_until is not None and saved_until >= until:
                self._lose_locked()
                return False
            sent.update({k: v for k, v in loaded.state.sent.items() if k not in sent})
        self._token = loaded.token
        return True

    def _write_locked(self, state: PollState, *, final: bool) -> None:
        assert self.store is not None and self._token is not None
        try:
            self._token = self.store.save(state.to_bytes(), self._token)
        except StateConflict:
            self._lose_locked()
            return
        except StateError as error:
            self.save_problem = f"not saved: {error}"
            if final:
                log(_logger, logging.ERROR, "poll state not saved", problem=self.save_problem)
            return
        self._last_write = self._clock()
        if final:
            self.saved = True
            self.save_problem = None

    def _lose_locked(self) -> None:
        self._lost = True
        self.saved = False
        self.save_problem = "not saved: another poll saved the state after this one read it"
        log(
            _logger,
            logging.WARNING,
            "poll state was saved by another poll; this poll's state is dropped",
        )


__all__ = ["ABSENT", "SENT_MARGIN", "PollLedger"]
