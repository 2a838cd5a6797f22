"""Logs and system metrics of the sandbox's jobs, as Baseten's GET logs / metrics serve them.

Each job that starts running gets a simulated training run written ahead of
time: start-up lines from every replica (a multi-node job has one replica per
node, and they share timestamps), one ``FT_METRICS`` step line per optimizer
step (the template's format) plus one progress line, an evaluation line and a
checkpoint line at each epoch's end (evaluations only when the request has a
validation set: ``validation_split`` > 0 or a ``validation_file``), and a summary
line at the end. With a validation set the run is the template's "Did it get
better?" one: the base model's evaluation (``"model": "base"``) before step 1,
the tuned one's (``"model": "tuned"``) at each epoch's end, then one sample line
per ``hyperparameters.eval_samples`` (default 5 with a validation set), and the
summary names ``base_eval_loss`` and ``eval_loss``; every step line carries
``mean_token_accuracy``. Lines become visible
as the clock passes their timestamp (nanoseconds), so a client watching a
running job sees them appear. When the job ends early the rest of the run is
squeezed into the time left (completed), or cut off with an error traceback
(failed) or a SIGTERM line (stopped).

Baseten's limits are enforced: ``limit`` 1-1000 (default 500), a window of at
most 7 days (``start_epoch_millis`` defaults to 30 minutes before the end),
``direction`` ``asc``/``desc`` (newest first when absent, as truss expects),
``min_level`` (lines without a level are dropped when it is set). Lines of one
nanosecond keep their order in both directions. The control API can append
lines (``POST /_sandbox/jobs/{jid}/logs``, e.g. a real run's stdout) or write a
long finished run at once (``POST /_sandbox/jobs/{jid}/logs/synthetic``).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sandbox.errors import SandboxApiError

MS = 1_000_000
SECOND = 1_000_000_000
WINDOW_MS = 7 * 24 * 3600 * 1000
DEFAULT_WINDOW_MS = 30 * 60 * 1000
MAX_LIMIT = 1000
DEFAULT_LIMIT = 500
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_RANK = {name: index for index, name in enumerate(LEVELS)}
STEPS_PER_EPOCH = 25
DEFAULT_RUN_SECONDS = 60.0
# Tokens each simulated optimizer step trains on (the step lines' cumulative tokens_seen).
TOKENS_PER_STEP = 4096
MARKER = "FT_METRICS "
_LEVEL_IN_TEXT = re.compile(r"\b(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\b")

Row = tuple[str, str | None, str | None]  # message, replica, level


def detect_level(message: str) -> str | None:
    """The level a log line names (as Baseten detects one), or None."""
    match = _LEVEL_IN_TEXT.search(message)
    if match is None:
        return None
    word = match.group(1)
    return {"WARN": "WARNING", "CRITICAL": "ERROR"}.get(word, word)


def _iso(ns: int) -> str:
    seconds, rest = divmod(ns, SECOND)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{rest // 1000:06d}Z"


@dataclass
class JobLog:
    ts: list[int] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    nodes: int = 1
    gpus: int = 1
    run_start: int | None = None
    planned_end: int | None = None
    ended: int | None = None

    def add(self, ns: int, row: Row) -> None:
        if not self.ts or ns >= self.ts[-1]:
            self.ts.append(ns)
            self.rows.append(row)
            return
        index = bisect.bisect_right(self.ts, ns)
        self.ts.insert(index, ns)
        self.rows.insert(index, row)


@dataclass(frozen=True)
class RunShape:
    epochs: int
    steps_per_epoch: int
    nodes: int
    gpus: int
    learning_rate: float
    validation: bool
    model: str
    dataset: str
    # The job's runtime_config.json "method": a "dpo" run's step lines carry TRL's rewards.
    method: str = "supervised"
    eval_samples: int = 0


def _shape(request: Mapping[str, Any]) -> RunShape:
    runtime = request.get("runtime") or {}
    env = runtime.get("environment_variables") or {}
    config: dict[str, Any] = {}
    raw = env.get("RUNTIME_CONFIG")
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            config = parsed
    raw_hyper = config.get("hyperparameters")
    hyper: dict[str, Any] = raw_hyper if isinstance(raw_hyper, dict) else {}
    compute = request.get("compute") or {}
    accelerator = compute.get("accelerator") or {}

    def number(value: Any, default: float) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok else default

    validation = (
        number(hyper.get("validation_split"), 0) > 0 or config.get("validation_file") is not None
    )
    samples = hyper.get("eval_samples")
    if isinstance(samples, bool) or not isinstance(samples, int) or not 0 <= samples <= 50:
        samples = 5 if validation else 0
    model = env.get("MODEL_ID") if isinstance(env.get("MODEL_ID"), str) else "sandbox/model"
    dataset = env.get("DATASET_ID") if isinstance(env.get("DATASET_ID"), str) else "sandbox/data"
    return RunShape(
        epochs=max(1, int(number(hyper.get("num_epochs"), 1))),
        steps_per_epoch=STEPS_PER_EPOCH,
        nodes=max(1, int(number(compute.get("node_count"), 1))),
        gpus=max(1, int(number(accelerator.get("count"), 1))),
        learning_rate=number(hyper.get("learning_rate"), 2e-4),
        validation=validation,
        model=str(model),
        dataset=str(dataset),
        method="dpo" if config.get("method") == "dpo" else "supervised",
        eval_samples=samples if validation else 0,
    )


def _dpo_metrics(done: float, rng: random.Random) -> dict[str, float]:
    """TRL's DPO step metrics at ``done`` (0..1) of the run: the loss starts near ln 2 and
    the chosen answers' reward pulls away from the rejected ones'."""
    chosen = round(0.9 * done + rng.uniform(-0.03, 0.03), 4)
    rejected = round(-1.1 * done + rng.uniform(-0.03, 0.03), 4)
    margin = chosen - rejected
    return {
        "loss": round(math.log1p(math.exp(-margin)), 4),
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": round(margin, 4),
        "rewards/accuracies": round(min(1.0, 0.5 + 0.5 * done + rng.uniform(0, 0.05)), 4),
    }


def _eval_loss(step: int, total: int, rng: random.Random) -> float:
    return round(0.55 + 2.0 * math.exp(-4.0 * step / total) + rng.uniform(-0.02, 0.02), 4)


def _accuracy(step: int, total: int, rng: random.Random) -> float:
    """Token accuracy rises as the loss falls (0.40 before training, about 0.78 at the end)."""
    return round(0.40 + 0.39 * (1 - math.exp(-4.0 * step / total)) + rng.uniform(-0.01, 0.01), 4)


def sample_record(index: int, rng: random.Random) -> dict[str, Any]:
    """A sample line: a held-out prompt, its reference, the base and the tuned answers."""
    topics = ("the refund policy", "a late delivery", "a password reset", "an invoice")
    topic = topics[index % len(topics)]
    return {
        "type": "sample",
        "index": index,
        "prompt": f"user: Can you help me with {topic}? (held-out example {index})",
        "reference": f"Of course. Here is how {topic} works, step by step.",
        "base": f"I am a language model. {topic.capitalize()} is a topic. " * 2,
        "tuned": f"Of course. Here is how {topic} works{rng.choice(('.', ', step by step.'))}",
    }


def _metrics(record: dict[str, Any]) -> str:
    return MARKER + json.dumps(record, separators=(",", ":"))


def _prefix(ns: int, level: str, rank: int) -> str:
    seconds, rest = divmod(ns, SECOND)
    stamp = f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%d %H:%M:%S},{rest // MS:03d}"
    return f"{stamp} {level} [rank {rank}] train: "


def replica_name(job_id: str, node: int) -> str:
    return f"{job_id}-multinode-{node}"


def plan_run(job_id: str, shape: RunShape, start: int, end: int) -> list[tuple[int, Row]]:
    """Every line of a simulated run from ``start`` to ``end`` (ns), in time order."""
    rng = random.Random(int(hashlib.sha256(job_id.encode()).hexdigest()[:12], 16))
    span = max(end - start, 1000)
    lines: list[tuple[int, Row]] = []
    leader = replica_name(job_id, 0)
    for node in range(shape.nodes):  # every replica starts in the same nanosecond
        replica = replica_name(job_id, node)
        lines.append((start, (f"Starting training on node {node} of {shape.nodes}", replica, None)))
    for node in range(shape.nodes):
        replica = replica_name(job_id, node)
        lines.append((start, (f"Installing requirements.txt on node {node}", replica, "INFO")))
    total = shape.epochs * shape.steps_per_epoch
    world = shape.nodes * shape.gpus
    t = start + span // 50
    lines.append(
        (
            t,
            (
                _prefix(t, "INFO", 0)
                + f"model={shape.model} dataset={shape.dataset} processes={world}",
                leader,
                "INFO",
            ),
        )
    )
    lines.append(
        (
            t + 1,
            (
                _prefix(t, "INFO", 0) + f"dataset: expecting {total} optimizer steps",
                leader,
                "INFO",
            ),
        )
    )
    first = start + span // 20
    stretch = span * 9 // 10
    warmup = max(1, math.ceil(total * 0.03))
    tokens = 4000.0 * world
    # The summary line states what the step and eval lines said, as the template's does.
    last_loss: float | None = None
    eval_losses: list[float] = []
    accuracies: list[float] = []
    base: dict[str, Any] | None = None
    if shape.validation:
        # The base model, evaluated on the held-out set before the first step.
        base = {
            "type": "eval",
            "step": 0,
            "total_steps": total,
            "epoch": 0.0,
            "eval_loss": _eval_loss(0, total, rng),
            "eval_mean_token_accuracy": _accuracy(0, total, rng),
            "model": "base",
        }
        lines.append((t + 2, (_prefix(t, "INFO", 0) + _metrics(base), leader, "INFO")))
    for step in range(1, total + 1):
        ns = first + stretch * step // total
        if step <= warmup:
            lr = shape.learning_rate * step / warmup
        else:
            lr = (
                shape.learning_rate
                * 0.5
                * (1 + math.cos(math.pi * (step - warmup) / (total - warmup + 1)))
            )
        loss = 0.45 + 2.1 * math.exp(-4.0 * step / total) + rng.uniform(-0.04, 0.04)
        record: dict[str, Any] = {
            "type": "step",
            "step": step,
            "total_steps": total,
            "epoch": round(step / shape.steps_per_epoch, 4),
            "loss": round(loss, 4),
            "learning_rate": lr,
            "grad_norm": round(0.25 + 1.4 * math.exp(-2.0 * step / total) + rng.uniform(0, 0.1), 4),
            "tokens_per_second": round(tokens * rng.uniform(0.95, 1.05), 1),
            # Cumulative, as the template's num_input_tokens_seen.
            "tokens_seen": step * TOKENS_PER_STEP,
            "mean_token_accuracy": _accuracy(step, total, rng),
        }
        if shape.method == "dpo":
            record.update(_dpo_metrics(step / total, rng))
        last_loss = float(record["loss"])
        lines.append((ns, (_prefix(ns, "INFO", 0) + _metrics(record), leader, "INFO")))
        node = step % shape.nodes
        lines.append(
            (
                ns + 1000,
                (
                    f"[rank {node * shape.gpus}] step {step}/{total} done",
                    replica_name(job_id, node),
                    None,
                ),
            )
        )
        if step % shape.steps_per_epoch == 0:
            epoch = step // shape.steps_per_epoch
            if shape.validation:
                eval_losses.append(_eval_loss(step, total, rng))
                accuracies.append(_accuracy(step, total, rng))
                evaluation = {
                    "type": "eval",
                    "step": step,
                    "total_steps": total,
                    "epoch": float(epoch),
                    "eval_loss": eval_losses[-1],
                    "eval_mean_token_accuracy": accuracies[-1],
                    "model": "tuned",
                }
                lines.append(
                    (ns + 2000, (_prefix(ns, "INFO", 0) + _metrics(evaluation), leader, "INFO"))
                )
            lines.append(
                (
                    ns + 3000,
                    (
                        _prefix(ns, "INFO", 0) + f"saved checkpoint-{step} (epoch {epoch})",
                        leader,
                        "INFO",
                    ),
                )
            )
    final_ns = first + stretch + span // 40
    for index in range(shape.eval_samples):
        at = final_ns - 1000 * (shape.eval_samples - index)
        record = sample_record(index, rng)
        lines.append((at, (_prefix(at, "INFO", 0) + _metrics(record), leader, "INFO")))
    summary = {
        "type": "summary",
        "step": total,
        "total_steps": total,
        "epoch": float(shape.epochs),
        "final_loss": last_loss,
        "best_eval_loss": min(eval_losses) if eval_losses else None,
        "base_eval_loss": base["eval_loss"] if base else None,
        "eval_loss": eval_losses[-1] if eval_losses else None,
        "base_eval_mean_token_accuracy": base["eval_mean_token_accuracy"] if base else None,
        "eval_mean_token_accuracy": accuracies[-1] if accuracies else None,
        "runtime_seconds": round(span * 0.95 / SECOND, 3),
    }
    lines.append((final_ns, (_prefix(final_ns, "INFO", 0) + _metrics(summary), leader, "INFO")))
    lines.append(
        (final_ns + 1, (_prefix(final_ns, "INFO", 0) + f"done: {total} steps", leader, "INFO"))
    )
    return lines


class TrainingLogs:
    """Per-job log lines and run plans. Not locked: SandboxState calls it under its lock."""

    def __init__(self) -> None:
        self._logs: dict[str, JobLog] = {}

    def reset(self) -> None:
        self._logs.clear()

    def _log(self, job_id: str) -> JobLog:
        log = self._logs.get(job_id)
        if log is None:
            log = self._logs[job_id] = JobLog()
        return log

    # -- the status clock's hook ------------------------------------------------------

    def on_status(
        self,
        job_id: str,
        request: Mapping[str, Any],
        status: str,
        at_ns: int,
        *,
        run_seconds: float | None,
        error_message: str | None = None,
    ) -> None:
        log = self._log(job_id)
        shape = _shape(request)
        leader = replica_name(job_id, 0)
        if status == "TRAINING_JOB_DEPLOYING":
            base = (request.get("image") or {}).get("base_image") or "image"
            for node in range(shape.nodes):
                log.add(at_ns, (f"Pulling image {base}", replica_name(job_id, node), None))
        elif status == "TRAINING_JOB_RUNNING":
            if log.run_start is not None:
                return
            seconds = run_seconds if run_seconds else DEFAULT_RUN_SECONDS
            end = at_ns + int(seconds * SECOND)
            log.run_start, log.planned_end = at_ns, end
            log.nodes, log.gpus = shape.nodes, shape.gpus
            for ns, row in plan_run(job_id, shape, at_ns, end):
                log.add(ns, row)
        elif status == "TRAINING_JOB_COMPLETED":
            self._squeeze(log, at_ns)
            log.ended = at_ns
        elif status in (
            "TRAINING_JOB_FAILED",
            "TRAINING_JOB_STOPPED",
            "TRAINING_JOB_DEPLOY_FAILED",
        ):
            self._cut(log, at_ns)
            log.ended = at_ns
            if status == "TRAINING_JOB_STOPPED":
                log.add(at_ns, ("Received SIGTERM: the job was stopped", leader, "WARNING"))
            else:
                message = error_message or "training failed"
                for offset, text in enumerate(
                    (
                        "Traceback (most recent call last):",
                        '  File "/app/train.py", line 561, in train',
                        "    result = trainer.train()",
                        f"RuntimeError: {message}",
                        f"ERROR job exited with code 1: {message}",
                    )
                ):
                    log.add(at_ns + offset, (text, leader, "ERROR"))

    @staticmethod
    def _cut(log: JobLog, at_ns: int) -> None:
        keep = bisect.bisect_right(log.ts, at_ns)
        del log.ts[keep:]
        del log.rows[keep:]

    @staticmethod
    def _squeeze(log: JobLog, at_ns: int) -> None:
        """Fit the lines planned after ``at_ns`` into the time before it (an early finish)."""
        first_future = bisect.bisect_right(log.ts, at_ns)
        if first_future >= len(log.ts):
            return
        base = log.ts[first_future - 1] if first_future else at_ns
        last = log.ts[-1]
        room = max(0, at_ns - base)
        span = max(1, last - base)
        for index in range(first_future, len(log.ts)):
            log.ts[index] = base + (log.ts[index] - base) * room // span

    # -- control ----------------------------------------------------------------------

    def append(self, job_id: str, body: Any, now_ns: int) -> dict[str, Any]:
        if not isinstance(body, dict) or set(body) - {"lines", "spacing_ns"}:
            raise SandboxApiError(
                400, "VALIDATION_ERROR", 'body: expected {"lines": [...], "spacing_ns"?: n}'
            )
        lines = body.get("lines")
        spacing = body.get("spacing_ns", 1000)
        if not isinstance(lines, list) or isinstance(spacing, bool) or not isinstance(spacing, int):
            raise SandboxApiError(400, "VALIDATION_ERROR", "body.lines: expected a list")
        log = self._log(job_id)
        parsed: list[tuple[int, Row]] = []
        for index, item in enumerate(lines):
            if isinstance(item, str):
                item = {"message": item}
            if not isinstance(item, dict) or not isinstance(item.get("message"), str):
                raise SandboxApiError(
                    400, "VALIDATION_ERROR", f"body.lines[{index}]: expected a message"
                )
            unknown = set(item) - {"message", "replica", "level", "timestamp"}
            if unknown:
                raise SandboxApiError(
                    400, "VALIDATION_ERROR", f"body.lines[{index}].{sorted(unknown)[0]}: unknown"
                )
            stamp = item.get("timestamp")
            ns = int(stamp) if isinstance(stamp, int | str) and str(stamp).isdigit() else None
            if ns is None:
                ns = now_ns + index * spacing
            level = item.get("level", detect_level(item["message"]))
            if level is not None and level not in LEVELS:
                raise SandboxApiError(
                    400, "VALIDATION_ERROR", f"body.lines[{index}].level: one of {LEVELS}"
                )
            parsed.append(
                (ns, (item["message"], item.get("replica") or replica_name(job_id, 0), level))
            )
        for ns, row in parsed:
            log.add(ns, row)
        return {"appended": len(parsed), "lines": len(log.ts)}

    def synthesize(
        self, job_id: str, request: Mapping[str, Any], body: Any, now_ns: int
    ) -> dict[str, Any]:
        """A whole run of ``steps`` steps that ended ``now``, lasting ``seconds``."""
        body = body or {}
        if not isinstance(body, dict) or set(body) - {
            "steps",
            "seconds",
            "nodes",
            "validation",
            "eval_samples",
        }:
            raise SandboxApiError(
                400,
                "VALIDATION_ERROR",
                'body: {"steps", "seconds"?, "nodes"?, "validation"?, "eval_samples"?}',
            )
        steps = body.get("steps", 100)
        seconds = body.get("seconds", 3600)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1_000_000:
            raise SandboxApiError(400, "VALIDATION_ERROR", "body.steps: 1..1000000")
        if not isinstance(seconds, int | float) or seconds <= 0:
            raise SandboxApiError(400, "VALIDATION_ERROR", "body.seconds: > 0")
        shape = _shape(request)
        epochs = max(1, steps // STEPS_PER_EPOCH)
        validation = bool(body.get("validation", shape.validation))
        samples = body.get("eval_samples", shape.eval_samples if shape.validation else 5)
        if isinstance(samples, bool) or not isinstance(samples, int) or not 0 <= samples <= 50:
            raise SandboxApiError(400, "VALIDATION_ERROR", "body.eval_samples: 0..50")
        shape = RunShape(
            epochs=epochs,
            steps_per_epoch=max(1, steps // epochs),
            nodes=int(body.get("nodes", shape.nodes)),
            gpus=shape.gpus,
            learning_rate=shape.learning_rate,
            validation=validation,
            model=shape.model,
            dataset=shape.dataset,
            method=shape.method,
            eval_samples=samples if validation else 0,
        )
        start = now_ns - int(seconds * SECOND)
        log = self._logs[job_id] = JobLog(nodes=shape.nodes, gpus=shape.gpus)
        log.run_start, log.planned_end, log.ended = start, now_ns, now_ns
        planned = plan_run(job_id, shape, start, now_ns)
        planned.sort(key=lambda item: item[0])
        log.ts = [ns for ns, _ in planned]
        log.rows = [row for _, row in planned]
        return {"lines": len(log.ts), "first_ns": log.ts[0], "last_ns": log.ts[-1]}

    # -- Baseten's operations ---------------------------------------------------------

    def logs(self, job_id: str, params: Mapping[str, Any], now_ns: int) -> dict[str, Any]:
        start_ms, end_ms = _window(params, now_ns, DEFAULT_WINDOW_MS, max_ms=WINDOW_MS)
        direction = params.get("direction")
        if direction in (None, ""):
            direction = "desc"  # newest first, as truss's reader expects
        if direction not in ("asc", "desc"):
            raise SandboxApiError(400, "VALIDATION_ERROR", "direction: must be asc or desc")
        limit = _integer(params, "limit", DEFAULT_LIMIT)
        if not 1 <= limit <= MAX_LIMIT:
            raise SandboxApiError(
                400, "VALIDATION_ERROR", f"limit: must be between 1 and {MAX_LIMIT}"
            )
        min_level = params.get("min_level")
        if min_level in ("",):
            min_level = None
        if min_level is not None and min_level not in LEVELS:
            raise SandboxApiError(
                400, "VALIDATION_ERROR", f"min_level: must be one of {', '.join(LEVELS)}"
            )
        log = self._logs.get(job_id)
        out: list[dict[str, Any]] = []
        if log is None:
            return {"logs": out}
        lo = bisect.bisect_left(log.ts, start_ms * MS)
        hi = bisect.bisect_right(log.ts, min(end_ms * MS + MS - 1, now_ns))
        indices = range(lo, hi) if direction == "asc" else range(hi - 1, lo - 1, -1)
        floor = _RANK[min_level] if min_level is not None else None
        for index in indices:
            message, replica, level = log.rows[index]
            if floor is not None and (level is None or _RANK[level] < floor):
                continue
            out.append(
                {
                    "timestamp": str(log.ts[index]),
                    "message": message,
                    "replica": replica,
                    "request_id": None,
                    "level": level,
                }
            )
            if len(out) >= limit:
                break
        return {"logs": out}

    def metrics(
        self, job_id: str, job_json: dict[str, Any], params: Mapping[str, Any], now_ns: int
    ) -> dict[str, Any]:
        log = self._logs.get(job_id)
        start_ms, end_ms = _window(params, now_ns, 3600 * 1000, max_ms=None)
        step_param = _integer(params, "step_seconds", 0)
        if step_param < 0:
            raise SandboxApiError(400, "VALIDATION_ERROR", "step_seconds: must be >= 0")
        nodes: list[dict[str, Any]] = []
        node_count = log.nodes if log else 1
        gpus = log.gpus if log else 1
        for node in range(node_count):
            nodes.append(
                {
                    "node_id": replica_name(job_id, node),
                    "metrics": _node_metrics(log, node, gpus, start_ms, end_ms, step_param, now_ns),
                }
            )
        leader = nodes[0]["metrics"]
        return {
            **leader,
            "training_job": job_json,
            "cache": None,
            "per_node_metrics": nodes,
        }


def _integer(params: Mapping[str, Any], name: str, default: int) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise SandboxApiError(400, "VALIDATION_ERROR", f"{name}: expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,19}", value):
        return int(value)
    raise SandboxApiError(400, "VALIDATION_ERROR", f"{name}: expected an integer")


def _window(
    params: Mapping[str, Any], now_ns: int, default_ms: int, *, max_ms: int | None
) -> tuple[int, int]:
    end_ms = _integer(params, "end_epoch_millis", now_ns // MS)
    start_ms = _integer(params, "start_epoch_millis", end_ms - default_ms)
    if start_ms > end_ms:
        raise SandboxApiError(
            400, "VALIDATION_ERROR", "start_epoch_millis: must not be after end_epoch_millis"
        )
    if max_ms is not None and end_ms - start_ms > max_ms:
        raise SandboxApiError(
            400, "VALIDATION_ERROR", "the window from start to end must not exceed 7 days"
        )
    return start_ms, end_ms


def _node_metrics(
    log: JobLog | None,
    node: int,
    gpus: int,
    start_ms: int,
    end_ms: int,
    step_seconds: int,
    now_ns: int,
) -> dict[str, Any]:
    series: dict[str, Any] = {
        "gpu_memory_usage_bytes": {str(rank): [] for rank in range(gpus)},
        "gpu_utilization": {str(rank): [] for rank in range(gpus)},
        "cpu_usage": [],
        "cpu_memory_usage_bytes": [],
        "ephemeral_storage": {"usage_bytes": [], "utilization": []},
    }
    if log is None or log.run_start is None:
        return series
    first = max(start_ms * MS, log.run_start)
    last = min(end_ms * MS, log.ended if log.ended is not None else now_ns, now_ns)
    if last < first:
        return series
    span_s = (last - first) / SECOND
    step = step_seconds or max(1, math.ceil(span_s / 240))
    count = int(span_s // step) + 1
    for k in range(count):
        ns = first + k * step * SECOND
        stamp = _iso(ns)
        phase = (ns - log.run_start) / SECOND
        for rank in range(gpus):
            util = 0.88 + 0.08 * math.sin(phase / 7 + rank + node)
            series["gpu_utilization"][str(rank)].append(
                {"value": round(util, 4), "timestamp": stamp}
            )
            series["gpu_memory_usage_bytes"][str(rank)].append(
                {"value": 61_000_000_000 + 500_000_000 * ((k + rank) % 3), "timestamp": stamp}
            )
        series["cpu_usage"].append(
            {"value": round(3.5 + math.sin(phase / 5), 3), "timestamp": stamp}
        )
        series["cpu_memory_usage_bytes"].append(
            {"value": 24_000_000_000 + 10_000_000 * k, "timestamp": stamp}
        )
        series["ephemeral_storage"]["usage_bytes"].append(
            {"value": 30_000_000_000 + 1_000_000 * k, "timestamp": stamp}
        )
        series["ephemeral_storage"]["utilization"].append(
            {"value": round(0.3 + 0.00001 * k, 6), "timestamp": stamp}
        )
    return series


__all__ = ["MARKER", "TrainingLogs", "detect_level", "plan_run", "replica_name"]
