"""Exact paging over Baseten's training-job logs.

Baseten's GET logs operation filters by a window of epoch **milliseconds** (at
most 7 days wide), returns at most 1,000 lines oldest- or newest-first, and
stamps each line in **nanoseconds**. It has no cursor. Reading it naively
(start the next request at the last line's millisecond, stop at the first
empty window, as truss's own reader does) repeats or skips lines that share a
timestamp across a page boundary and stops early after a quiet spell.

Here a position is ``(ns, delivered)``: every line before ``ns`` (after it,
newest-first) has been delivered, plus the first ``delivered`` lines stamped
exactly ``ns``. The next request starts at ``ns``'s millisecond; what comes
back before the position, and the ``delivered`` lines at it, are dropped. This
relies only on Baseten answering lines of one timestamp in the same order
every time. A window that answers fewer lines than asked is exhausted and the
next window (7 days further) is read, until the end of the range: an empty
window never ends the listing. Lines are filtered client-side to the window
actually meant, whatever Baseten's end bound includes. Replicas of a
multi-node job are interleaved in timestamp order, as Baseten answers them.

The one case this cannot page through: more than 1,000 lines inside a single
millisecond before the position; the reader then moves to the next
millisecond and logs a warning (never silently).
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from finetune_api.core.errors import InvalidRequestError
from finetune_api.core.logs import get_logger, log

_logger = get_logger("log_pages")

MS = 1_000_000  # nanoseconds per millisecond
WINDOW_MS = 7 * 24 * 3600 * 1000  # Baseten: a window may not exceed 7 days
BASETEN_MAX_LIMIT = 1000
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# The largest timestamp a cursor may hold (2200-01-01T00:00:00Z), and the most lines
# of one nanosecond it may count as delivered: a decoded cursor outside them is forged.
MAX_CURSOR_NS = 7_258_118_400 * 1_000_000_000
MAX_CURSOR_DELIVERED = 1_000_000
# Extra lines asked for beyond what a page needs, for the lines of the same
# millisecond that precede the position (dropped on our side).
_SLACK = 16


class Line(NamedTuple):
    ns: int
    message: str
    replica: str | None
    level: str | None


@dataclass(frozen=True)
class Position:
    ns: int
    delivered: int = 0


@dataclass
class Page:
    lines: list[Line]
    position: Position
    exhausted: bool
    requests: int


class LogSource(Protocol):
    def get_logs(
        self,
        project_id: str,
        job_id: str,
        *,
        start_ms: int,
        end_ms: int,
        direction: str = "asc",
        limit: int = 1000,
        min_level: str | None = None,
    ) -> list[dict[str, Any]]: ...


Fetch = Callable[[int, int, str, int, str | None], list[dict[str, Any]]]


def job_fetch(client: LogSource, project_id: str, job_id: str) -> Fetch:
    def fetch(
        start_ms: int, end_ms: int, direction: str, limit: int, level: str | None
    ) -> list[dict[str, Any]]:
        return client.get_logs(
            project_id,
            job_id,
            start_ms=start_ms,
            end_ms=end_ms,
            direction=direction,
            limit=limit,
            min_level=level,
        )

    return fetch


def to_line(raw: dict[str, Any]) -> Line | None:
    """A Baseten log entry as a :class:`Line`; None when its timestamp is unreadable.

    On the hot path (every line of every page): exact type checks, no isinstance.
    """
    stamp: Any = raw.get("timestamp")
    kind = type(stamp)
    if kind is str:
        try:
            ns = int(stamp)
        except ValueError:
            return None
    elif kind is int:
        ns = int(stamp)
    else:
        return None
    message = raw.get("message")
    replica = raw.get("replica")
    level = raw.get("level")
    return Line(
        ns,
        message if type(message) is str else "",
        replica if type(replica) is str else None,
        level if type(level) is str else None,
    )


def read_page(
    fetch: Fetch,
    *,
    order: str,
    lo_ns: int,
    hi_ns: int,
    position: Position,
    limit: int,
    level: str | None = None,
    max_requests: int = 20,
    top_up: bool = True,
) -> Page:
    """Up to ``limit`` lines of ``[lo_ns, hi_ns]`` from ``position`` on, in ``order``.

    ``top_up=False`` (a reader going through every page, :func:`iter_lines`) returns
    as soon as one full Baseten answer gave new lines, rather than asking again for
    the few lines of the position's millisecond it had already delivered: without
    it every page of such a read cost two requests.
    """
    ascending = order == "asc"
    lines: list[Line] = []
    cur, delivered = position.ns, position.delivered
    requests = 0
    want_all = False
    while True:
        if (cur > hi_ns) if ascending else (cur < lo_ns):
            return Page(lines, Position(cur, delivered), True, requests)
        if len(lines) >= limit or requests >= max_requests:
            return Page(lines, Position(cur, delivered), False, requests)
        if ascending:
            start_ms = cur // MS
            end_ms = min(start_ms + WINDOW_MS, hi_ns // MS + 1)
            window_lo, window_hi = cur, min(hi_ns, (start_ms + WINDOW_MS) * MS - 1)
        else:
            end_ms = cur // MS + 1
            start_ms = max(end_ms - WINDOW_MS, lo_ns // MS)
            window_lo, window_hi = max(lo_ns, start_ms * MS), cur
        need = limit - len(lines)
        want = BASETEN_MAX_LIMIT if want_all else min(BASETEN_MAX_LIMIT, need + delivered + _SLACK)
        raw = fetch(start_ms, end_ms, order, want, level)
        requests += 1
        batch = [line for line in map(to_line, raw) if line is not None]
        batch.sort(key=lambda line: line.ns, reverse=not ascending)  # stable: ties keep order
        base, skip = cur, delivered
        accepted = 0
        beyond = False  # a line past the window: everything inside it was answered
        full = False
        for line in batch:
            if (line.ns > window_hi) if ascending else (line.ns < window_lo):
                beyond = True
                break
            if (line.ns < base) if ascending else (line.ns > base):
                continue
            if line.ns == base and skip:
                skip -= 1
                continue
            if len(lines) >= limit:
                full = True
                break
            lines.append(line)
            accepted += 1
            if line.ns == cur:
                delivered += 1
            else:
                cur, delivered = line.ns, 1
        if full:
            return Page(lines, Position(cur, delivered), False, requests)
        if not top_up and accepted and not beyond and len(raw) >= want:
            return Page(lines, Position(cur, delivered), False, requests)
        if beyond or len(raw) < want:
            # The window holds nothing more after the position: on to the next one.
            cur, delivered = (window_hi + 1, 0) if ascending else (window_lo - 1, 0)
            want_all = False
            continue
        if accepted == 0:
            if not want_all:
                want_all = True
                continue
            # More than 1,000 lines in one millisecond before the position.
            log(
                _logger,
                logging.WARNING,
                "more log lines in one millisecond than Baseten pages; skipping to the next",
                millisecond=base // MS,
            )
            next_ms = base // MS + 1 if ascending else base // MS
            cur, delivered = (next_ms * MS, 0) if ascending else (next_ms * MS - 1, 0)
        want_all = False


def iter_lines(
    fetch: Fetch,
    lo_ns: int,
    hi_ns: int,
    *,
    position: Position | None = None,
    level: str | None = None,
) -> Iterator[list[Line]]:
    """Every line of ``[lo_ns, hi_ns]`` oldest first, one Baseten page at a time."""
    current = position or Position(lo_ns)
    while True:
        page = read_page(
            fetch,
            order="asc",
            lo_ns=lo_ns,
            hi_ns=hi_ns,
            position=current,
            limit=BASETEN_MAX_LIMIT,
            level=level,
            # Two: a page that accepted nothing (over 1,000 lines in the millisecond
            # before the position) asks again for all of them, then moves on.
            # With one, the same request would repeat for ever.
            max_requests=2,
            top_up=False,
        )
        if page.lines:
            yield page.lines
        if page.exhausted:
            return
        current = page.position


def scan_parallel(
    fetch: Fetch,
    lo_ns: int,
    hi_ns: int,
    consume: Callable[[Iterator[list[Line]]], Any],
    *,
    workers: int = 8,
    pages_per_part: int = 4,
    max_parts: int = 32,
) -> list[Any]:
    """Read ``[lo_ns, hi_ns]`` with up to ``workers`` concurrent readers.

    The first page is read alone; a short range ends there (one request). For a
    longer one, the density of that page estimates how many pages remain, and
    the rest of the range is cut into time slices (about ``pages_per_part``
    pages each, at most ``max_parts``) read concurrently, each by its own exact
    pager. ``consume`` gets each slice's pages in order and returns its result;
    the results come back in time order, so concatenating them is the log in
    order. Only one page per reader is held at a time.
    """
    first = read_page(
        fetch,
        order="asc",
        lo_ns=lo_ns,
        hi_ns=hi_ns,
        position=Position(lo_ns),
        limit=BASETEN_MAX_LIMIT,
        max_requests=1,
    )
    head = consume(iter([first.lines] if first.lines else []))
    if first.exhausted:
        return [head]
    start = first.position
    span = hi_ns - start.ns + 1
    if first.lines and first.lines[-1].ns > first.lines[0].ns:
        density = len(first.lines) / (first.lines[-1].ns - first.lines[0].ns + 1)
        pages = span * density / BASETEN_MAX_LIMIT
    else:
        pages = float(max_parts * pages_per_part)
    parts = max(1, min(max_parts, math.ceil(pages / pages_per_part)))
    bounds = [start.ns + span * i // parts for i in range(parts)] + [hi_ns + 1]
    slices = [
        (Position(bounds[i], start.delivered if i == 0 else 0), bounds[i + 1] - 1)
        for i in range(parts)
        if bounds[i + 1] > bounds[i]
    ]

    def run(position: Position, end: int) -> Any:
        return consume(iter_lines(fetch, position.ns, end, position=position))

    if len(slices) == 1:
        return [head, run(*slices[0])]
    with ThreadPoolExecutor(
        max_workers=min(workers, len(slices)), thread_name_prefix="logs"
    ) as pool:
        futures = [
            pool.submit(contextvars.copy_context().run, run, position, end)
            for position, end in slices
        ]
        return [head, *(future.result() for future in futures)]


# -- cursors ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    order: str
    position: Position
    lo_ns: int
    hi_ns: int | None  # None: up to "now" on every call (tailing a running job)
    level: str | None
    job: str = ""  # a digest of the job it belongs to

    def encode(self) -> str:
        payload = {
            "v": 1,
            "j": self.job,
            "o": self.order,
            "n": self.position.ns,
            "k": self.position.delivered,
            "lo": self.lo_ns,
            "hi": self.hi_ns,
            "l": self.level,
        }
        raw = json.dumps(payload, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        bad = InvalidRequestError(
            "cursor is not a cursor this API handed out",
            details=[{"location": "query.cursor", "reason": "invalid or corrupted cursor"}],
        )
        if not text or len(text) > 512:
            raise bad
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            payload = json.loads(raw)
        except (ValueError, binascii.Error):
            raise bad from None
        if not isinstance(payload, dict) or payload.get("v") != 1:
            raise bad

        def integer(value: Any, high: int, optional: bool = False) -> bool:
            if optional and value is None:
                return True
            return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= high

        if (
            payload.get("o") not in ("asc", "desc")
            or not integer(payload.get("n"), MAX_CURSOR_NS)
            or not integer(payload.get("k"), MAX_CURSOR_DELIVERED)
            or not integer(payload.get("lo"), MAX_CURSOR_NS)
            or not integer(payload.get("hi"), MAX_CURSOR_NS, optional=True)
            or payload.get("l") not in (None, *LEVELS)
            or not isinstance(payload.get("j", ""), str)
        ):
            raise bad
        lo, hi, n = payload["lo"], payload["hi"], payload["n"]
        # A cursor this API hands out has its position inside its range (one past
        # an end once that end is read): anything else was made up, never sent on.
        if n < lo - 1 or (hi is not None and (lo > hi or n > hi + 1)):
            raise bad
        return cls(
            order=payload["o"],
            position=Position(payload["n"], payload["k"]),
            lo_ns=payload["lo"],
            hi_ns=payload["hi"],
            level=payload["l"],
            job=payload.get("j", ""),
        )


def job_tag(project_id: str, job_id: str) -> str:
    """A short digest naming the job a cursor belongs to."""
    return hashlib.sha256(f"{project_id}/{job_id}".encode()).hexdigest()[:12]


__all__ = [
    "BASETEN_MAX_LIMIT",
    "LEVELS",
    "WINDOW_MS",
    "Cursor",
    "Line",
    "Page",
    "Position",
    "iter_lines",
    "job_fetch",
    "job_tag",
    "read_page",
    "scan_parallel",
    "to_line",
]
