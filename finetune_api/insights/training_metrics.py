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
"Did it get better?" adds: ``mean_token_accuracy`` on step lines;
``eval_mean_token_accuracy`` and ``model`` (``"base"`` or ``"tuned"``; absent: tuned,
as old jobs print) on eval lines, the base model's evaluation being the line with
``"model": "base"``; one sample line per held-out prompt answered by both models::

    FT_METRICS {"type": "sample", "index": 0, "prompt": "...", "reference": "...",
                "base": "...", "tuned": "..."}

and ``base_eval_loss``, ``eval_loss``, ``base_eval_mean_token_accuracy``,
``eval_mean_token_accuracy`` on the summary line. A sample line may be up to
:data:`MAX_SAMPLE_RECORD_CHARS` long (four texts of up to 2,000 characters each).

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
import re
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
#: TRL's DPO metrics (exact key names), kept only by series whose lines carry them.
REWARD_FIELDS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
SAMPLE = "sample"
STEP_FIELDS = (
    "epoch",
    "loss",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "mean_token_accuracy",
)
#: The ``model`` of an eval line: the base model (before training) or the tuned one.
BASE = "base"
TUNED = "tuned"
#: Sample lines read: indexes 0 to MAX_SAMPLES - 1 (``eval_samples`` is at most 50).
MAX_SAMPLES = 50
#: The texts of a sample, as the evaluation route answers them, are cut at this length.
SAMPLE_TEXT_CHARS = 2000
SAMPLE_TEXTS = ("prompt", "reference", "base", "tuned")
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
#: The longest sample line decoded: four texts of 2,000 characters, each escaped
#: (``\\uXXXX``) at worst, and the keys.
MAX_SAMPLE_RECORD_CHARS = 64 * 1024
# What a line that cannot be read claimed to be (to say what was skipped).
_CLAIMED_TYPE = re.compile(r'"type"\s*:\s*"(step|eval|sample|summary)"')
_SAMPLE_START = re.compile(r'\s*\{\s*"type"\s*:\s*"sample"')


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
    size = len(message) - start
    if size > MAX_RECORD_CHARS and (
        size > MAX_SAMPLE_RECORD_CHARS or not _SAMPLE_START.match(message, start)
    ):
        return None, True
    try:
        record, _ = _DECODER.raw_decode(message, start)
    except (ValueError, RecursionError):
        return None, True
    if not isinstance(record, dict):
        return None, True
    kind = record.get("type")
    if kind == SAMPLE:
        return (record, False) if _good_sample(record) else (None, True)
    if kind not in (STEP, EVAL, SUMMARY) or size > MAX_RECORD_CHARS:
        return None, True
    if kind == EVAL and not _good_eval(record):
        return None, True
    step = record.get("step")
    if type(step) is not int or not 0 <= step <= MAX_STEP:
        return None, True
    total = record.get("total_steps")
    if type(total) is int and not 0 <= total <= MAX_STEP:
        return None, True
    return record, False


def _good_sample(record: dict[str, Any]) -> bool:
    index = record.get("index")
    if type(index) is not int or not 0 <= index < MAX_SAMPLES:
        return False
    return all(isinstance(record.get(name), str | None) for name in SAMPLE_TEXTS)


def _numeric_or_null(value: Any) -> bool:
    return value is None or (type(value) in (int, float))


def _good_eval(record: dict[str, Any]) -> bool:
    """An eval line names a known model and carries numbers (or nulls) where it reports."""
    if record.get("model") not in (None, BASE, TUNED):
        return False
    return _numeric_or_null(record.get("eval_loss")) and _numeric_or_null(
        record.get("eval_mean_token_accuracy")
    )


def claimed_type(message: str) -> str:
    """The ``type`` an unreadable metrics line seems to claim (``unknown`` when none)."""
    index = message.find(MARKER)
    match = _CLAIMED_TYPE.search(message, index + len(MARKER), index + len(MARKER) + 200)
    return match.group(1) if match else "unknown"


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
    eval_accuracies: array[float] = field(default_factory=lambda: array("d"))
    #: the base model's evaluation (``"model": "base"``), the newest one
    base_eval: dict[str, Any] | None = None
    #: sample lines by index (a later line of the same index replaces an earlier one)
    samples: dict[int, dict[str, Any]] = field(default_factory=dict)
    final: dict[str, Any] | None = None
    #: metrics lines that carried the marker but could not be read (skipped)
    skipped: int = 0
    #: the skipped lines by the type they claimed: step, eval, sample, summary, unknown
    skipped_types: dict[str, int] = field(default_factory=dict)

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
            if record.get("model") == BASE:
                self.base_eval = {
                    "step": record["step"],
                    "epoch": _maybe(_number(record.get("epoch"))),
                    "eval_loss": _maybe(_number(record.get("eval_loss"))),
                    "eval_mean_token_accuracy": _maybe(
                        _number(record.get("eval_mean_token_accuracy"))
                    ),
                    "timestamp": ns_to_rfc3339(ns),
                }
                return
            self.eval_ns.append(ns)
            self.eval_steps.append(record["step"])
            self.eval_epochs.append(_number(record.get("epoch")))
            self.eval_losses.append(_number(record.get("eval_loss")))
            self.eval_accuracies.append(_number(record.get("eval_mean_token_accuracy")))
        elif kind == SAMPLE:
            self.samples[record["index"]] = {
                name: record.get(name) for name in ("index", *SAMPLE_TEXTS)
            }
        else:
            self.final = record

    def add_message(self, message: str, ns: int) -> bool:
        record, poisoned = read_line(message)
        if record is None:
            if poisoned:
                self.skipped += 1
                kind = claimed_type(message)
                self.skipped_types[kind] = self.skipped_types.get(kind, 0) + 1
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
        self.eval_accuracies.extend(other.eval_accuracies)
        if other.base_eval is not None:
            self.base_eval = other.base_eval
        self.samples.update(other.samples)
        if other.total_steps is not None:
            self.total_steps = other.total_steps
        if other.final is not None:
            self.final = other.final
        self.skipped += other.skipped
        for kind, count in other.skipped_types.items():
            self.skipped_types[kind] = self.skipped_types.get(kind, 0) + count

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
            "eval_mean_token_accuracy": _maybe(self.eval_accuracies[index]),
            "timestamp": ns_to_rfc3339(self.eval_ns[index]),
        }

    def last_eval(self) -> dict[str, Any] | None:
        """The tuned model's newest evaluation (the summary line's when none was read)."""
        if self.eval_steps:
            return self.eval_record(len(self.eval_steps) - 1)
        final = self.final or {}
        if _maybe(_number(final.get("eval_loss"))) is None:
            return None
        return {
            "step": final.get("step"),
            "epoch": _maybe(_number(final.get("epoch"))),
            "eval_loss": _maybe(_number(final.get("eval_loss"))),
            "eval_mean_token_accuracy": _maybe(_number(final.get("eval_mean_token_accuracy"))),
            "timestamp": None,
        }

    def base_evaluation(self) -> dict[str, Any] | None:
        """The base model's evaluation (the summary line's when its eval line was not read)."""
        if self.base_eval is not None:
            return self.base_eval
        final = self.final or {}
        if _maybe(_number(final.get("base_eval_loss"))) is None:
            return None
        return {
            "step": None,
            "epoch": None,
            "eval_loss": _maybe(_number(final.get("base_eval_loss"))),
            "eval_mean_token_accuracy": _maybe(_number(final.get("base_eval_mean_token_accuracy"))),
            "timestamp": None,
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
    base, tuned = series.base_evaluation(), series.last_eval()
    return {
        "steps": steps,
        "total_steps": series.total_steps,
        "final_loss": final_loss,
        "best_eval_loss": series.best_eval_loss(),
        "base_eval_loss": base["eval_loss"] if base else None,
        "eval_loss": tuned["eval_loss"] if tuned else None,
        "duration_seconds": _round(duration),
        **series.latest_rewards(),
    }


def _cut(text: Any) -> Any:
    return text[:SAMPLE_TEXT_CHARS] if isinstance(text, str) else text


def _difference(tuned: float | None, base: float | None) -> float | None:
    if tuned is None or base is None:
        return None
    return round(tuned - base, 6)


def evaluation_answer(series: TrainingSeries) -> dict[str, Any]:
    """The evaluation route's ``base``, ``tuned``, ``change``, ``samples`` and ``skipped``.

    ``base`` is the base model's evaluation (step 0, or the step a resumed job
    started from), ``tuned`` the tuned model's newest one, ``change`` tuned - base
    member by member; each is null until its line was printed (or when the job
    had no validation set). Sample texts are cut at :data:`SAMPLE_TEXT_CHARS`.
    """
    base_record, tuned_record = series.base_evaluation(), series.last_eval()
    base = (
        None
        if base_record is None
        else {
            "step": base_record["step"],
            "eval_loss": base_record["eval_loss"],
            "eval_mean_token_accuracy": base_record["eval_mean_token_accuracy"],
        }
    )
    tuned = (
        None
        if tuned_record is None
        else {
            "step": tuned_record["step"],
            "epoch": tuned_record["epoch"],
            "eval_loss": tuned_record["eval_loss"],
            "eval_mean_token_accuracy": tuned_record["eval_mean_token_accuracy"],
        }
    )
    change = None
    if base is not None and tuned is not None:
        change = {
            name: _difference(tuned[name], base[name])
            for name in ("eval_loss", "eval_mean_token_accuracy")
        }
    samples = [
        {name: _cut(series.samples[index][name]) for name in ("index", *SAMPLE_TEXTS)}
        for index in sorted(series.samples)
    ]
    types = series.skipped_types
    return {
        "base": base,
        "tuned": tuned,
        "change": change,
        "samples": samples or None,
        "evaluations": len(series.eval_steps),
        "skipped": {
            "lines": series.skipped,
            "eval_lines": types.get(EVAL, 0),
            "sample_lines": types.get(SAMPLE, 0),
        },
    }


def results_csv(series: TrainingSeries) -> bytes:
    """OpenAI's fine-tuning results file: one row per step, as ``files.content`` gives it.

    Header ``step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy``;
    the validation columns hold the tuned evaluation at that step (empty elsewhere),
    as OpenAI's own file leaves them empty between evaluations.
    """
    at_step: dict[int, int] = {}
    for index, step in enumerate(series.eval_steps):
        at_step[step] = index
    out = ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"]
    loss, accuracy = series.columns["loss"], series.columns["mean_token_accuracy"]
    for index, step in enumerate(series.steps):
        evaluated = at_step.get(step)
        valid = (
            (series.eval_losses[evaluated], series.eval_accuracies[evaluated])
            if evaluated is not None
            else (_NAN, _NAN)
        )
        cells = [str(step)] + [_cell(value) for value in (loss[index], accuracy[index], *valid)]
        out.append(",".join(cells))
    return ("\n".join(out) + "\n").encode("ascii")


def _cell(value: float) -> str:
    return "" if math.isnan(value) else repr(value)


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
    "evaluation_answer",
    "final_summary",
    "format_line",
    "ns_to_rfc3339",
    "parse_line",
    "parse_series",
    "progress",
    "read_line",
    "results_csv",
    "summary",
    "training_answer",
]
