"""Training progress from a job's own log lines: the line format, series, summary, ETA.

Baseten's metrics are system metrics only (CPU, memory, GPUs); loss, step and
learning rate exist only because our template prints them. Each such line is
the fixed marker ``FT_METRICS`` followed by one JSON object::

    FT_METRICS {"type": "step", "step": 12, "total_steps": 40, "epoch": 0.3, "loss": 1.92,
                "learning_rate": 0.0002, "grad_norm": 0.81, "tokens_per_second": 5321.4}
    FT_METRICS {"type": "eval", "step": 20, "total_steps": 40, "epoch": 1.0, "eval_loss": 1.7}
    FT_METRICS {"type": "summary", "step": 40, "total_steps": 40, "epoch": 2.0,
                "final_loss": 1.2, "best_eval_loss": 1.6, "runtime_seconds": 812.5}

A DPO job's step lines add TRL's ``rewards/chosen``, ``rewards/rejected``,
``rewards/margins`` and ``rewards/accuracies`` (:data:`REWARD_FIELDS`): a series
that has seen one gets that column (earlier steps null), its step records and
summaries carry it; a supervised series has none, so its answers keep their shape.

Anything before the marker (a logging prefix) is ignored, so a custom template
can print the same lines through its own logger. Numbers may be null. A line
without the marker is an ordinary log line; one with the marker that cannot be
read (bad or over-deep JSON, over :data:`MAX_RECORD_CHARS`, a step or total
outside 0 to :data:`MAX_STEP`) is skipped and counted (``skipped``), never an
error: anything the job prints (a dataset's column names) can plant one.
Nothing is ever invented from either.

Series are held as columns of floats (``array('d')``), not one dict per step,
so a run of 100,000 steps costs a few megabytes.
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from finetune_api.core.timestamps import parse_time

MARKER = "FT_METRICS "
STEP = "step"
EVAL = "eval"
SUMMARY = "summary"
STEP_FIELDS = ("epoch", "loss", "learning_rate", "grad_norm", "tokens_per_second")
#: TRL's DPO metrics (exact key names), kept only by series whose lines carry them.
REWARD_FIELDS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
_NAN = math.nan
_BIG_INT = 2**1000  # a larger int does not convert to a float
_DECODER = json.JSONDecoder()
# Steps over which the recent pace (ETA, tokens/s) is measured.
PACE_WINDOW = 50


def format_line(record: dict[str, Any]) -> str:
    """The line a template prints for ``record`` (the inverse of :func:`parse_line`)."""
    return MARKER + json.dumps(record, separators=(",", ":"), allow_nan=False)


#: The largest step (and total) a line may name: beyond it a line is not believed
#: (and would not fit the series' 64-bit columns).
MAX_STEP = 2**53
#: The longest text after the marker that is decoded; a longer line is skipped.
MAX_RECORD_CHARS = 4096


def parse_line(message: str) -> dict[str, Any] | None:
    """The record of a metrics line, or None for any other line (see :func:`read_line`)."""
    record, _ = read_line(message)
    return record


def read_line(message: str) -> tuple[dict[str, Any] | None, bool]:
    """``(record, poisoned)``: a metrics line's record, or None and whether it was unreadable.

    A line that carries the marker but cannot be read (bad or too deep JSON, a
    step or total out of range, an over-long record) is *poisoned*: the caller
    skips and counts it, and never fails on it. Such a line can be planted by
    anything the job prints, e.g. a dataset's column names.
    """
    index = message.find(MARKER)
    if index < 0:
        return None, False
    start = index + len(MARKER)
    if len(message) - start > MAX_RECORD_CHARS:
        return None, True
    try:
        record, _ = _DECODER.raw_decode(message, start)
    except (ValueError, RecursionError):
        return None, True
    if not isinstance(record, dict) or record.get("type") not in (STEP, EVAL, SUMMARY):
        return None, True
    step = record.get("step")
    if type(step) is not int or not 0 <= step <= MAX_STEP:
        return None, True
    total = record.get("total_steps")
    if type(total) is int and not 0 <= total <= MAX_STEP:
        return None, True
    return record, False


def _number(value: Any) -> float:
    """A finite float, or NaN for anything else (null, text, bool, inf); on the hot path."""
    kind = type(value)
    if kind is float:
        return value if value - value == 0.0 else _NAN  # inf - inf and nan - nan are nan
    if kind is int:
        return float(value) if -_BIG_INT <= value <= _BIG_INT else _NAN
    return _NAN


def _maybe(value: float) -> float | None:
    return None if math.isnan(value) else value


def ns_to_rfc3339(ns: int) -> str:
    """Epoch nanoseconds → ``2026-11-27T06:00:00.123456789Z`` (every digit kept)."""
    seconds, rest = divmod(ns, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{rest:09d}Z"


@dataclass
class TrainingSeries:
    """Step and evaluation records of one job, as columns, in log order."""

    step_ns: array[int] = field(default_factory=lambda: array("q"))
    steps: array[int] = field(default_factory=lambda: array("q"))
    columns: dict[str, array[float]] = field(
        default_factory=lambda: {name: array("d") for name in STEP_FIELDS}
    )
    total_steps: int | None = None
    eval_ns: array[int] = field(default_factory=lambda: array("q"))
    eval_steps: array[int] = field(default_factory=lambda: array("q"))
    eval_epochs: array[float] = field(default_factory=lambda: array("d"))
    eval_losses: array[float] = field(default_factory=lambda: array("d"))
    final: dict[str, Any] | None = None
    #: metrics lines that carried the marker but could not be read (skipped)
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def empty(self) -> bool:
        return not self.steps and not self.eval_steps and self.final is None

    def add(self, record: dict[str, Any], ns: int) -> None:
        total = record.get("total_steps")
        if type(total) is int and total > 0:
            self.total_steps = total
        kind = record["type"]
        if kind == STEP:
            self.step_ns.append(ns)
            self.steps.append(record["step"])
            get = record.get
            for name in STEP_FIELDS:
                self.columns[name].append(_number(get(name)))
            for name in REWARD_FIELDS:
                value = get(name)
                column = self.columns.get(name)
                if column is None:
                    if value is None:
                        continue
                    column = self.columns[name] = _nan_column(len(self.steps) - 1)
                column.append(_number(value))
        elif kind == EVAL:
            self.eval_ns.append(ns)
            self.eval_steps.append(record["step"])
            self.eval_epochs.append(_number(record.get("epoch")))
            self.eval_losses.append(_number(record.get("eval_loss")))
        else:
            self.final = record

    def add_message(self, message: str, ns: int) -> bool:
        record, poisoned = read_line(message)
        if record is None:
            self.skipped += poisoned
            return False
        self.add(record, ns)
        return True

    def extend(self, other: TrainingSeries) -> None:
        """Append ``other`` (the next stretch of the same log)."""
        for name in REWARD_FIELDS:
            if name in self.columns or name in other.columns:
                mine = self.columns.setdefault(name, _nan_column(len(self.steps)))
                mine.extend(other.columns.get(name) or _nan_column(len(other.steps)))
        self.step_ns.extend(other.step_ns)
        self.steps.extend(other.steps)
        for name in STEP_FIELDS:
            self.columns[name].extend(other.columns[name])
        self.eval_ns.extend(other.eval_ns)
        self.eval_steps.extend(other.eval_steps)
        self.eval_epochs.extend(other.eval_epochs)
        self.eval_losses.extend(other.eval_losses)
        if other.total_steps is not None:
            self.total_steps = other.total_steps
        if other.final is not None:
            self.final = other.final
        self.skipped += other.skipped

    # -- views ------------------------------------------------------------

    def step_record(self, index: int) -> dict[str, Any]:
        record: dict[str, Any] = {
            "step": self.steps[index],
            "timestamp": ns_to_rfc3339(self.step_ns[index]),
        }
        for name, column in self.columns.items():
            record[name] = _maybe(column[index])
        return record

    def latest_rewards(self) -> dict[str, float | None]:
        """The newest value of each DPO reward metric the series has (none: ``{}``)."""
        latest: dict[str, float | None] = {}
        for name in REWARD_FIELDS:
            column = self.columns.get(name)
            if column is not None:
                latest[name] = next((v for v in reversed(column) if not math.isnan(v)), None)
        return latest

    def eval_record(self, index: int) -> dict[str, Any]:
        return {
            "step": self.eval_steps[index],
            "epoch": _maybe(self.eval_epochs[index]),
            "eval_loss": _maybe(self.eval_losses[index]),
            "timestamp": ns_to_rfc3339(self.eval_ns[index]),
        }

    def best_eval_loss(self) -> float | None:
        finite = [value for value in self.eval_losses if not math.isnan(value)]
        if finite:
            return min(finite)
        if self.final is not None:
            best = _number(self.final.get("best_eval_loss"))
            return _maybe(best)
        return None

    def latest_loss(self) -> float | None:
        for value in reversed(self.columns["loss"]):
            if not math.isnan(value):
                return value
        if self.final is not None:
            return _maybe(_number(self.final.get("final_loss")))
        return None

    def seconds_per_step(self) -> float | None:
        """The recent pace, from the last :data:`PACE_WINDOW` steps."""
        if len(self.steps) < 2:
            return None
        first = max(0, len(self.steps) - 1 - PACE_WINDOW)
        steps = self.steps[-1] - self.steps[first]
        seconds = (self.step_ns[-1] - self.step_ns[first]) / 1e9
        if steps <= 0 or seconds < 0:
            return None
        return seconds / steps

    def tokens_per_second(self) -> float | None:
        values = [v for v in self.columns["tokens_per_second"][-PACE_WINDOW:] if not math.isnan(v)]
        return sum(values) / len(values) if values else None


def _nan_column(length: int) -> array[float]:
    return array("d", [_NAN]) * length


def parse_series(lines: Iterable[tuple[int, str]]) -> TrainingSeries:
    """The series of ``(timestamp_ns, message)`` lines, in the order given."""
    series = TrainingSeries()
    for ns, message in lines:
        series.add_message(message, ns)
    return series


def progress(
    series: TrainingSeries, *, finished: bool, completed: bool, now_ns: int
) -> dict[str, Any] | None:
    """CONTRACT ``progress``: step, total_steps, percent, epoch, latest_loss, eta_seconds."""
    if not len(series) and series.final is None:
        return None
    if len(series):
        step = series.steps[-1]
        epoch = _maybe(series.columns["epoch"][-1])
    else:
        final = series.final or {}
        step = int(final.get("step") or 0)
        epoch = _maybe(_number(final.get("epoch")))
    total = series.total_steps
    percent = round(min(100.0, 100.0 * step / total), 1) if total else None
    eta: float | None = None
    if completed:
        eta = 0.0
    elif not finished and total:
        pace = series.seconds_per_step()
        if pace is not None:
            since_last = max(0.0, (now_ns - series.step_ns[-1]) / 1e9) if len(series) else 0.0
            eta = round(max(0.0, (total - step) * pace - since_last), 1)
    return {
        "step": step,
        "total_steps": total,
        "percent": percent,
        "epoch": epoch,
        "latest_loss": series.latest_loss(),
        "eta_seconds": eta,
    }


def summary(
    series: TrainingSeries, *, finished: bool, completed: bool, now_ns: int
) -> dict[str, Any] | None:
    """The metrics answer's summary: progress plus best eval loss and tokens/s."""
    base = progress(series, finished=finished, completed=completed, now_ns=now_ns)
    if base is None:
        return None
    return {
        **base,
        "best_eval_loss": series.best_eval_loss(),
        "tokens_per_second": _round(series.tokens_per_second()),
        **series.latest_rewards(),
    }


def final_summary(
    series: TrainingSeries, *, created_at: str | None, finished_at: str | None
) -> dict[str, Any] | None:
    """``training_job.completed``'s ``summary``: steps, final loss, best eval loss, duration.

    Built from the whole log (read once per completed job): the last step line's
    step and loss, so it agrees with the metrics route; the template's summary
    line only for what the step lines do not carry (its runtime).
    """
    if series.empty:
        return None
    final = series.final or {}
    # The step lines come first: the summary then says what the metrics route
    # says of the same log. The template's summary line fills what they lack.
    steps: Any = series.steps[-1] if len(series) else final.get("step")
    final_loss = series.latest_loss()
    duration = _maybe(_number(final.get("runtime_seconds"))) if final else None
    if duration is None:
        duration = seconds_between(created_at, finished_at)
    return {
        "steps": steps,
        "total_steps": series.total_steps,
        "final_loss": final_loss,
        "best_eval_loss": series.best_eval_loss(),
        "duration_seconds": _round(duration),
        **series.latest_rewards(),
    }


def seconds_between(start: str | None, end: str | None) -> float | None:
    first, last = parse_time(start), parse_time(end)
    if first is None or last is None:
        return None
    return max(0.0, (last - first).total_seconds())


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def downsample_indices(values: Sequence[float], points: int) -> list[int]:
    """At most ``points`` indices of ``values`` that keep its shape.

    Min/max buckets: the first and last points, then for each of
    ``(points - 2) // 2`` equal buckets its lowest and highest value in order,
    so spikes and dips survive (a plain stride would drop them). NaN values
    count as neither.
    """
    n = len(values)
    if n <= points:
        return list(range(n))
    if points < 2:
        return [n - 1]
    buckets = max(1, (points - 2) // 2)
    chosen = {0, n - 1}
    inner = n - 2
    for bucket in range(buckets):
        start = 1 + bucket * inner // buckets
        end = 1 + (bucket + 1) * inner // buckets
        low = high = -1
        for index in range(start, end):
            value = values[index]
            if value != value:  # NaN
                continue
            if low < 0 or value < values[low]:
                low = index
            if high < 0 or value > values[high]:
                high = index
        if low < 0:
            low = high = start
        chosen.add(low)
        chosen.add(high)
    return sorted(chosen)


def training_answer(
    series: TrainingSeries, points: int, *, finished: bool, completed: bool, now_ns: int
) -> dict[str, Any] | None:
    """The ``training`` part of the metrics answer, or None when the job printed no lines."""
    if series.empty:
        return None
    step_indices = downsample_indices(series.columns["loss"], points)
    eval_indices = downsample_indices(series.eval_losses, points)
    return {
        "steps": [series.step_record(i) for i in step_indices],
        "evaluations": [series.eval_record(i) for i in eval_indices],
        "points": {
            "steps": len(series),
            "evaluations": len(series.eval_steps),
            "skipped_lines": series.skipped,
        },
        "summary": summary(series, finished=finished, completed=completed, now_ns=now_ns),
    }


def downsample_series(series: list[dict[str, Any]], points: int) -> list[dict[str, Any]]:
    """A Baseten ``[{value, timestamp}]`` series cut to at most ``points``, shape kept."""
    values = [_number(item.get("value")) for item in series]
    return [series[i] for i in downsample_indices(values, points)]


__all__ = [
    "MARKER",
    "REWARD_FIELDS",
    "TrainingSeries",
    "downsample_indices",
    "downsample_series",
    "final_summary",
    "format_line",
    "ns_to_rfc3339",
    "parse_line",
    "parse_series",
    "progress",
    "read_line",
    "summary",
    "training_answer",
]
