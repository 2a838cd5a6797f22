"""Everything the sandbox remembers, behind one lock, with no HTTP in sight.

Times are kept as integer microseconds since the epoch (a float cannot hold
microseconds of today's epoch exactly) and handed out strictly increasing, so
``created_at`` orders jobs unambiguously even when they are created in the
same microsecond.

Status clock: with ``step_seconds`` set, every job that is not terminal moves
one step each ``step_seconds`` after its previous step, computed lazily
whenever it is read (no background thread). A step's timestamps are the
boundary time, not the read time, so what a client sees does not depend on
when it looks. The path is::

    CREATED -> DEPLOYING -> RUNNING -(running_steps - 1 steps, one checkpoint each)->
        COMPLETED (plus a final checkpoint)  |  FAILED (when fail_new_jobs was set)
"""

from __future__ import annotations

import json
import math
import random
import re
import string
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from operator import attrgetter
from typing import Any

from sandbox import checkpoint_loading
from sandbox.deployments import DeploymentStore
from sandbox.errors import SandboxApiError
from sandbox.s3 import S3Gateway
from sandbox.times import rfc3339
from sandbox.training_logs import TrainingLogs

PENDING = "TRAINING_JOB_PENDING"
CREATED = "TRAINING_JOB_CREATED"
QUEUED = "TRAINING_JOB_QUEUED"
DEPLOYING = "TRAINING_JOB_DEPLOYING"
RUNNING = "TRAINING_JOB_RUNNING"
COMPLETED = "TRAINING_JOB_COMPLETED"
FAILED = "TRAINING_JOB_FAILED"
STOPPED = "TRAINING_JOB_STOPPED"
DEPLOY_FAILED = "TRAINING_JOB_DEPLOY_FAILED"

#: A status the sandbox's clock passes through in ``forward_compat`` mode: one this
#: client has never heard of, as a newer Baseten may send (spot preemption, here).
PREEMPTED = "TRAINING_JOB_PREEMPTED"

TERMINAL_STATUSES = frozenset({COMPLETED, FAILED, STOPPED, DEPLOY_FAILED})
#: Statuses the clock moves on from; any other status (terminal or unknown) stays put.
ADVANCING_STATUSES = frozenset({PENDING, CREATED, QUEUED, DEPLOYING, RUNNING})

DEFAULT_LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}
LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
BYTES_PER_LORA_RANK = 4 * 1024 * 1024
#: Who created a job, as Baseten's ``user`` field has it.
SANDBOX_USER = {"email": "sandbox-user@example.com"}
#: Memory of one GPU in MiB, for ``instance_type.gpu_memory_limit_mib`` (vendor data sheets).
GPU_MEMORY_MIB = {
    "T4": 16 * 1024,
    "L4": 24 * 1024,
    "A10G": 24 * 1024,
    "V100": 16 * 1024,
    "A100": 80 * 1024,
    "A100_40GB": 40 * 1024,
    "H100": 80 * 1024,
    "H100_40GB": 40 * 1024,
    "H200": 141 * 1024,
    "B200": 180 * 1024,
    "B300": 288 * 1024,
    "GB300": 288 * 1024,
    "L40S": 48 * 1024,
    "RTX_PRO_6000": 96 * 1024,
    "B10": 24 * 1024,
}
_MEMORY_UNITS_MIB = {
    "Ki": 1 / 1024,
    "Mi": 1,
    "Gi": 1024,
    "Ti": 1024 * 1024,
    "K": 1000 / 1024 / 1024,
    "M": 1000 * 1000 / 1024 / 1024,
    "G": 1000**3 / 1024 / 1024,
    "T": 1000**4 / 1024 / 1024,
}

_ID_ALPHABET = string.ascii_lowercase + string.digits
_US = 1_000_000


@lru_cache(maxsize=1 << 16)
def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class Config:
    """Switches settable through ``POST /_sandbox/config``."""

    api_key: str
    step_seconds: float | None = None
    latency_ms: float = 0
    create_delay_ms: float = 0
    fail_new_jobs: str | None = None
    rate_limit_per_second: int | None = None
    running_steps: int = 2
    #: New jobs wait in TRAINING_JOB_PENDING (before CREATED) while this is set.
    capacity_short: bool = False
    #: Unknown fields on every object and an unknown status on the clock's path.
    forward_compat: bool = False
    #: Every answer is checked against the spec's response schema (sandbox.conformance).
    #: Benchmarks turn it off: jsonschema spends ~0.1 s on a 1,000-line logs page,
    #: a cost of the sandbox, not of Baseten or of the client under test.
    check_answers: bool = True

    def public(self) -> dict[str, Any]:
        """Everything but the API key."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "api_key"}


def _check_config_value(key: str, value: Any) -> None:
    def bad(reason: str) -> SandboxApiError:
        return SandboxApiError(400, "VALIDATION_ERROR", f"config.{key}: {reason}")

    if key in ("latency_ms", "create_delay_ms"):
        if not _is_number(value) or value < 0:
            raise bad("expected a number >= 0")
    elif key == "step_seconds":
        if value is not None and (not _is_number(value) or value < 0):
            raise bad("expected null or a number >= 0")
    elif key == "fail_new_jobs":
        if value is not None and (not isinstance(value, str) or not value):
            raise bad("expected null or a non-empty error message")
    elif key == "rate_limit_per_second":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise bad("expected null or an integer >= 1")
        if value is not None and value < 1:
            raise bad("expected null or an integer >= 1")
    elif key == "api_key":
        if not isinstance(value, str) or not value:
            raise bad("expected a non-empty string")
    elif key in ("capacity_short", "forward_compat", "check_answers"):
        if not isinstance(value, bool):
            raise bad("expected a boolean")
    elif key == "running_steps":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad("expected an integer >= 1")
    else:
        raise SandboxApiError(400, "VALIDATION_ERROR", f"config.{key}: unknown setting")


@dataclass
class Project:
    id: str
    name: str
    created_us: int
    updated_us: int
    team_id: str | None = None
    team_name: str | None = None
    job_ids: list[str] = field(default_factory=list)


@dataclass
class Job:
    id: str
    project_id: str
    seq: int
    name: str | None
    created_us: int
    updated_us: int
    status: str
    request: dict[str, Any]
    instance_type: dict[str, Any]
    base_model: str | None
    lora_adapter_config: dict[str, Any]
    priority: int
    availability_model: str
    node_count: int = 1
    #: In forward_compat mode: the job is in PREEMPTED as a step of its path (it moves on).
    passing_unknown_status: bool = False
    error_message: str | None = None
    fail_message: str | None = None
    anchor_us: int = 0
    running_steps_done: int = 0
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    checkpoint_seq: int = 0
    #: What runtime.load_checkpoint_config would load (see checkpoint_loading); None: nothing.
    load_checkpoints: dict[str, Any] | None = None


@dataclass
class Fault:
    id: str
    path_source: str
    path: re.Pattern[str]
    method: str | None
    status: int
    remaining: int | None
    body: Any
    retry_after: float | None
    hang_seconds: float
    close: bool
    after_handling: bool
    hits: int = 0
    #: The test gave the body (e.g. a proxy's HTML page): it is sent as is, never spec-checked.
    custom_body: bool = False

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "path": self.path_source,
            "status": self.status,
            "count": self.remaining,
            "body": self.body,
            "retry_after": self.retry_after,
            "hang_seconds": self.hang_seconds,
            "close": self.close,
            "after_handling": self.after_handling,
            "hits": self.hits,
        }


_DEFAULT_FAULT_CODES = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    409: "CONFLICT",
    429: "RATE_LIMITED",
    500: "INTERNAL",
    502: "BAD_GATEWAY",
    503: "UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}


@dataclass
class Stats:
    requests: int = 0
    by_route: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    responses_429: int = 0
    window: deque[int] = field(default_factory=deque)
    max_window: int = 0


def _memory_mib(memory: str) -> int:
    """``64Gi`` -> 65536; a bare number is bytes."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|K|M|G|T)?", memory)
    if match is None:
        return 2048
    number, unit = float(match.group(1)), match.group(2)
    mib = number * _MEMORY_UNITS_MIB[unit] if unit else number / (1024 * 1024)
    return max(1, math.ceil(mib))


def _instance_type(compute: dict[str, Any]) -> dict[str, Any]:
    cpu = compute.get("cpu_count", 1)
    memory = compute.get("memory", "2Gi")
    accelerator = compute.get("accelerator")
    sizes = {"memory_limit_mib": _memory_mib(memory), "millicpu_limit": int(cpu) * 1000}
    if accelerator:
        gpu, count = accelerator["accelerator"], accelerator["count"]
        return {
            "id": f"{gpu}:{count}x{cpu}x{memory}",
            "name": f"{gpu}:{count}",
            **sizes,
            "gpu_count": count,
            "gpu_type": gpu,
            "gpu_memory_limit_mib": GPU_MEMORY_MIB.get(gpu),
        }
    return {
        "id": f"CPU:{cpu}x{memory}",
        "name": f"CPU:{cpu}",
        **sizes,
        "gpu_count": 0,
        "gpu_type": None,
        "gpu_memory_limit_mib": None,
    }


def rate_limit_body(retry_after: int | None) -> dict[str, Any]:
    """Baseten's 429 body: ``{"error": ..., "retry_after": <whole seconds>}``."""
    body: dict[str, Any] = {"error": "Rate limit exceeded. Please try again later."}
    if retry_after is not None:
        body["retry_after"] = retry_after
    return body


def _lora_adapter_config(env: dict[str, Any]) -> dict[str, Any]:
    """LoRA settings from ``RUNTIME_CONFIG``'s ``hyperparameters``, else defaults."""
    config: dict[str, Any] = dict(DEFAULT_LORA)
    raw = env.get("RUNTIME_CONFIG")
    hyper: Any = None
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            hyper = parsed.get("hyperparameters")
    if isinstance(hyper, dict):
        for source, target in (
            ("lora_rank", "r"),
            ("lora_alpha", "lora_alpha"),
            ("lora_dropout", "lora_dropout"),
        ):
            if _is_number(hyper.get(source)):
                config[target] = hyper[source]
    return {
        **config,
        "target_modules": list(LORA_TARGET_MODULES),
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
    }


class SandboxState:
    """Projects, jobs, faults, config and stats of one sandbox; every method locks."""

    def __init__(
        self,
        *,
        api_key: str,
        s3: S3Gateway,
        step_seconds: float | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._lock = threading.RLock()
        self._defaults = Config(api_key=api_key, step_seconds=step_seconds)
        self._clock_ns = clock
        self._rng = random.Random()
        self.s3 = s3
        self.config = replace(self._defaults)
        self._last_us = 0
        self._projects: dict[str, Project] = {}
        self._projects_by_name: dict[str, str] = {}
        self._jobs: dict[str, Job] = {}
        self._active: dict[str, Job] = {}
        self._requests: dict[str, dict[str, Any]] = {}
        self._faults: list[Fault] = []
        self._allowed: deque[int] = deque()
        self._stats = Stats()
        self._seq = 0
        self.training = TrainingLogs()
        self.deployments = DeploymentStore(self)

    # ----------------------------------------------------------------- basics

    def now_us(self) -> int:
        """Strictly increasing microseconds since the epoch."""
        with self._lock:
            now = max(self._clock_ns() // 1000, self._last_us + 1)
            self._last_us = now
            return now

    def _new_id(self, taken: dict[str, Any]) -> str:
        while True:
            candidate = "".join(self._rng.choices(_ID_ALPHABET, k=7))
            if candidate not in taken:
                return candidate

    def check_api_key(self, presented: str | None) -> bool:
        with self._lock:
            return presented is not None and presented == self.config.api_key

    def reset(self) -> None:
        with self._lock:
            self.config = replace(self._defaults)
            self._projects.clear()
            self._projects_by_name.clear()
            self._jobs.clear()
            self._active.clear()
            self._requests.clear()
            self._faults.clear()
            self._allowed.clear()
            self._stats = Stats()
            self.training.reset()
            self.s3.forget_bucket()
            self.deployments.reset()

    def get_config(self) -> dict[str, Any]:
        with self._lock:
            return self.config.public()

    def update_config(self, changes: Any) -> dict[str, Any]:
        if not isinstance(changes, dict):
            raise SandboxApiError(400, "VALIDATION_ERROR", "config: expected a JSON object")
        for key, value in changes.items():
            _check_config_value(key, value)
        with self._lock:
            now = self.now_us()
            self._advance_all(now)
            self.config = replace(self.config, **changes)
            if "step_seconds" in changes:
                # The clock restarts from now, so turning it on never replays the past.
                for job in self._active.values():
                    job.anchor_us = now
            if "rate_limit_per_second" in changes:
                self._allowed.clear()
            return self.config.public()

    # ------------------------------------------------------------ stats, limits

    def record_request(self, route: str) -> None:
        with self._lock:
            now = self.now_us()
            stats = self._stats
            stats.requests += 1
            stats.by_route[route] += 1
            stats.window.append(now)
            while stats.window and stats.window[0] <= now - _US:
                stats.window.popleft()
            stats.max_window = max(stats.max_window, len(stats.window))

    def record_response(self, status: int) -> None:
        with self._lock:
            self._stats.by_status[status] += 1
            if status == 429:
                self._stats.responses_429 += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            stats = self._stats
            return {
                "requests": stats.requests,
                "by_route": dict(stats.by_route),
                "by_status": {str(k): v for k, v in sorted(stats.by_status.items())},
                "responses_429": stats.responses_429,
                "max_requests_in_any_1s_window": stats.max_window,
            }

    def check_rate_limit(self) -> None:
        """Count one authenticated API request; raise 429 when over the limit."""
        with self._lock:
            limit = self.config.rate_limit_per_second
            if limit is None:
                return
            now = self.now_us()
            while self._allowed and self._allowed[0] <= now - _US:
                self._allowed.popleft()
            if len(self._allowed) >= limit:
                wait_s = (self._allowed[0] + _US - now) / _US
                retry_after = max(1, math.ceil(wait_s))
                raise SandboxApiError(
                    429,
                    "RATE_LIMITED",
                    f"rate limit of {limit} requests per second exceeded",
                    headers={"Retry-After": str(retry_after)},
                    body=rate_limit_body(retry_after),
                )
            self._allowed.append(now)

    # ------------------------------------------------------------------ faults

    def add_fault(self, spec: Any) -> dict[str, Any]:
        if not isinstance(spec, dict):
            raise SandboxApiError(400, "VALIDATION_ERROR", "fault: expected a JSON object")
        allowed = {
            "method",
            "path",
            "status",
            "count",
            "body",
            "retry_after",
            "hang_seconds",
            "close",
            "after_handling",
        }
        unknown = sorted(spec.keys() - allowed)
        if unknown:
            raise SandboxApiError(400, "VALIDATION_ERROR", f"fault.{unknown[0]}: unknown field")

        def bad(key: str, reason: str) -> SandboxApiError:
            return SandboxApiError(400, "VALIDATION_ERROR", f"fault.{key}: {reason}")

        path = spec.get("path")
        if not isinstance(path, str):
            raise bad("path", "expected a regular expression string")
        try:
            pattern = re.compile(path)
        except re.error as exc:
            raise bad("path", f"invalid regular expression: {exc}") from exc
        method = spec.get("method")
        if method is not None and not isinstance(method, str):
            raise bad("method", "expected a string or null")
        close = spec.get("close", False)
        if not isinstance(close, bool):
            raise bad("close", "expected a boolean")
        status = spec.get("status", 0 if close else None)
        if isinstance(status, bool) or not isinstance(status, int):
            raise bad("status", "expected an HTTP status code")
        if not close and not 100 <= status <= 599:
            raise bad("status", "expected an HTTP status code between 100 and 599")
        count = spec.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise bad("count", "expected null or an integer >= 1")
        if count is not None and count < 1:
            raise bad("count", "expected null or an integer >= 1")
        retry_after = spec.get("retry_after")
        if retry_after is not None and (not _is_number(retry_after) or retry_after < 0):
            raise bad("retry_after", "expected null or a number >= 0")
        hang = spec.get("hang_seconds", 0)
        if not _is_number(hang) or hang < 0:
            raise bad("hang_seconds", "expected a number >= 0")
        after = spec.get("after_handling", False)
        if not isinstance(after, bool):
            raise bad("after_handling", "expected a boolean")
        if "body" in spec:
            body = spec["body"]
        elif status == 429:
            body = rate_limit_body(None if retry_after is None else math.ceil(retry_after))
        else:
            body = {
                "code": _DEFAULT_FAULT_CODES.get(status, "ERROR"),
                "message": f"sandbox fault: HTTP {status}",
            }
            if retry_after is not None:
                body["retry_after"] = retry_after
        with self._lock:
            fault = Fault(
                id=f"fault-{len(self._faults) + 1}",
                path_source=path,
                path=pattern,
                method=method.upper() if method else None,
                status=status,
                remaining=count,
                body=body,
                retry_after=retry_after,
                hang_seconds=float(hang),
                close=close,
                after_handling=after,
                custom_body="body" in spec,
            )
            self._faults.append(fault)
            return fault.public()

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def list_faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [fault.public() for fault in self._faults]

    def take_fault(self, method: str, path: str) -> Fault | None:
        """The first live fault matching this request, with one use consumed."""
        with self._lock:
            for fault in self._faults:
                if fault.remaining == 0:
                    continue
                if fault.method is not None and fault.method != method:
                    continue
                if not fault.path.search(path):
                    continue
                fault.hits += 1
                if fault.remaining is not None:
                    fault.remaining -= 1
                return replace(fault)
            return None

    # ------------------------------------------------------------ status clock

    def _step(self, job: Job, at_us: int) -> None:
        """Move ``job`` one step along its path, stamped ``at_us``."""
        job.anchor_us = at_us
        if job.status == PENDING:
            if not self.config.capacity_short:
                self._set_status(job, CREATED, at_us)
        elif job.status in (CREATED, QUEUED):
            self._set_status(job, DEPLOYING, at_us)
        elif job.status == DEPLOYING and self.config.forward_compat:
            job.passing_unknown_status = True
            self._set_status(job, PREEMPTED, at_us)
        elif job.status == DEPLOYING or self._passing_unknown(job):
            job.passing_unknown_status = False
            job.running_steps_done = 0
            self._set_status(job, RUNNING, at_us)
        elif job.status == RUNNING:
            job.running_steps_done += 1
            if job.running_steps_done < self.config.running_steps:
                self._add_checkpoint(job, at_us)
            elif job.fail_message is not None:
                self._set_status(job, FAILED, at_us, error_message=job.fail_message)
            else:
                self._add_checkpoint(job, at_us)
                self._set_status(job, COMPLETED, at_us)

    def _set_status(
        self, job: Job, status: str, at_us: int, *, error_message: str | None = None
    ) -> None:
        job.status = status
        job.error_message = error_message
        job.updated_us = at_us
        job.anchor_us = at_us
        if status != PREEMPTED:
            job.passing_unknown_status = False
        if self._moves(job):
            self._active[job.id] = job
        else:
            self._active.pop(job.id, None)
        project = self._projects.get(job.project_id)
        if project is not None:
            project.updated_us = max(project.updated_us, at_us)
        step = self.config.step_seconds
        self.training.on_status(
            job.id,
            job.request,
            status,
            at_us * 1000,
            run_seconds=step * self.config.running_steps if step else None,
            error_message=error_message,
        )

    @staticmethod
    def _passing_unknown(job: Job) -> bool:
        return job.status == PREEMPTED and job.passing_unknown_status

    def _moves(self, job: Job) -> bool:
        """Whether the clock moves this job on (forced unknown and terminal statuses stay)."""
        return job.status in ADVANCING_STATUSES or self._passing_unknown(job)

    def _advance(self, job: Job, now: int) -> None:
        step = self.config.step_seconds
        if not step:
            return
        step_us = max(1, round(step * _US))
        while self._moves(job) and job.anchor_us + step_us <= now:
            self._step(job, job.anchor_us + step_us)

    def _advance_all(self, now: int) -> None:
        if not self.config.step_seconds:
            return
        for job in list(self._active.values()):
            self._advance(job, now)

    # ------------------------------------------------------------- rendering

    def _job_json(self, job: Job) -> dict[str, Any]:
        project = self._projects[job.project_id]
        return {
            "id": job.id,
            "name": job.name,
            "created_at": rfc3339(job.created_us),
            "updated_at": rfc3339(job.updated_us),
            "current_status": job.status,
            "error_message": job.error_message,
            "instance_type": dict(job.instance_type),
            "node_count": job.node_count,
            "training_project_id": project.id,
            "training_project": {"id": project.id, "name": project.name},
            "checkpoint_sync_status": self._sync_status(job),
            "priority": job.priority,
            "availability_model": job.availability_model,
            "user": dict(SANDBOX_USER),
        }

    @staticmethod
    def _sync_status(job: Job) -> str | None:
        """Checkpoint upload state: none yet, still syncing, or all synced (terminal)."""
        if not job.checkpoints:
            return None
        return "COMPLETED" if job.status in TERMINAL_STATUSES else "SYNCING"

    def _checkpoints_json(self, job: Job) -> list[dict[str, Any]]:
        """Oldest first; only the newest one of a live job is still uploading."""
        out = [dict(cp) for cp in job.checkpoints]
        live = job.status not in TERMINAL_STATUSES
        for index, checkpoint in enumerate(out):
            # Baseten documents a checkpoint's sync state as "SYNCING or COMPLETE".
            syncing = live and index == len(out) - 1
            checkpoint.setdefault("sync_status", "SYNCING" if syncing else "COMPLETE")
        return out

    def _project_json(self, project: Project, *, with_latest: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": project.id,
            "name": project.name,
            "created_at": rfc3339(project.created_us),
            "updated_at": rfc3339(project.updated_us),
            "team_name": project.team_name,
        }
        if with_latest:
            latest = self._jobs[project.job_ids[-1]] if project.job_ids else None
            out["latest_job"] = self._job_json(latest) if latest else None
        if project.team_id is not None:
            out["team_id"] = project.team_id
        return out

    def _project_or_404(self, project_id: str) -> Project:
        project = self._projects.get(project_id)
        if project is None:
            raise SandboxApiError(
                404, "NOT_FOUND", f"training project {project_id!r} was not found"
            )
        return project

    def _job_or_404(self, project_id: str, job_id: str) -> Job:
        self._project_or_404(project_id)
        job = self._jobs.get(job_id)
        if job is None or job.project_id != project_id:
            raise SandboxApiError(
                404,
                "NOT_FOUND",
                f"training job {job_id!r} was not found in project {project_id!r}",
            )
        return job

    def _control_job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise SandboxApiError(404, "NOT_FOUND", f"training job {job_id!r} was not found")
        return job

    # ------------------------------------------------------------ projects

    def upsert_project(self, body: Any, team_id: str | None = None) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("training_project"), dict):
            raise SandboxApiError(
                400, "VALIDATION_ERROR", "body.training_project: expected an object"
            )
        spec = body["training_project"]
        unknown = sorted(spec.keys() - {"name", "team_name"})
        if unknown:
            raise SandboxApiError(
                400, "VALIDATION_ERROR", f"training_project.{unknown[0]}: unknown field"
            )
        name = spec.get("name")
        if not isinstance(name, str) or not name.strip():
            raise SandboxApiError(
                400, "VALIDATION_ERROR", "training_project.name: expected a non-empty string"
            )
        team_name = spec.get("team_name")
        if team_name is not None and not isinstance(team_name, str):
            raise SandboxApiError(
                400, "VALIDATION_ERROR", "training_project.team_name: expected a string"
            )
        with self._lock:
            project = self._upsert_project_locked(name, team_id, team_name)
            self._advance_all(self.now_us())
            return {"training_project": self._project_json(project)}

    def _upsert_project_locked(
        self, name: str, team_id: str | None, team_name: str | None
    ) -> Project:
        existing = self._projects_by_name.get(name)
        if existing is not None:
            return self._projects[existing]
        now = self.now_us()
        project = Project(
            id=self._new_id(self._projects),
            name=name,
            created_us=now,
            updated_us=now,
            team_id=team_id,
            team_name=team_name,
        )
        self._projects[project.id] = project
        self._projects_by_name[name] = project.id
        return project

    def list_projects(self) -> dict[str, Any]:
        with self._lock:
            self._advance_all(self.now_us())
            return {"training_projects": [self._project_json(p) for p in self._projects.values()]}

    def require_project(self, project_id: str) -> None:
        with self._lock:
            self._project_or_404(project_id)

    # ---------------------------------------------------------------- jobs

    def record_job(self, project_id: str, training_job: dict[str, Any]) -> dict[str, Any]:
        """Store an already validated ``training_job`` body; answer ``{"training_job"}``."""
        with self._lock:
            project = self._project_or_404(project_id)
            self._advance_all(self.now_us())
            loads = checkpoint_loading.resolve(
                training_job.get("runtime", {}).get("load_checkpoint_config"),
                "training_job.runtime.load_checkpoint_config",
                self._known_job,
            )
            job = self._new_job(project, training_job, self.now_us())
            job.load_checkpoints = loads
            job.fail_message = self.config.fail_new_jobs
            self._advance_all(self.now_us())
            return {"training_job": self._job_json(job)}

    def _known_job(
        self, job_id: str | None, project_name: str | None
    ) -> checkpoint_loading.KnownJob | None:
        """A job as a checkpoint to load names it (see checkpoint_loading.JobLookup)."""
        project: Project | None = None
        if project_name is not None:
            project_id = self._projects_by_name.get(project_name)
            project = self._projects.get(project_id) if project_id else None
            if project is None:
                return None
        if job_id is None:
            if project is None or not project.job_ids:
                return None
            job_id = project.job_ids[-1]
        job = self._jobs.get(job_id)
        if job is None or (project is not None and job.project_id != project.id):
            return None
        owner = self._projects[job.project_id]
        return checkpoint_loading.KnownJob(
            id=job.id,
            project_id=owner.id,
            project_name=owner.name,
            checkpoint_ids=tuple(str(cp["checkpoint_id"]) for cp in job.checkpoints),
        )

    def _new_job(self, project: Project, training_job: dict[str, Any], now: int) -> Job:
        runtime = training_job.get("runtime", {})
        env = runtime.get("environment_variables") or {}
        model_id = env.get("MODEL_ID")
        lora = _lora_adapter_config(env)
        compute = training_job.get("compute", {})
        self._seq += 1
        job = Job(
            id=self._new_id(self._jobs),
            project_id=project.id,
            seq=self._seq,
            name=training_job.get("name"),
            created_us=now,
            updated_us=now,
            status=PENDING if self.config.capacity_short else CREATED,
            request=training_job,
            instance_type=_instance_type(compute),
            base_model=model_id if isinstance(model_id, str) else None,
            lora_adapter_config=lora,
            # Baseten: "NULL is treated as 0"; it answers an integer.
            priority=training_job.get("priority") or 0,
            availability_model=compute.get("availability_model", "dedicated"),
            node_count=compute.get("node_count", 1),
            anchor_us=now,
        )
        self._jobs[job.id] = job
        self._active[job.id] = job
        self._requests[job.id] = training_job
        project.job_ids.append(job.id)
        project.updated_us = max(project.updated_us, now)
        return job

    def list_jobs(self, project_id: str) -> dict[str, Any]:
        with self._lock:
            self._advance_all(self.now_us())
            project = self._project_or_404(project_id)
            jobs = [self._jobs[jid] for jid in reversed(project.job_ids)]
            return {
                "training_project": self._project_json(project),
                "training_jobs": [self._job_json(job) for job in jobs],
            }

    def get_job(self, project_id: str, job_id: str) -> dict[str, Any]:
        with self._lock:
            self._advance_all(self.now_us())
            job = self._job_or_404(project_id, job_id)
            return {
                "training_job": self._job_json(job),
                "training_project": self._project_json(self._projects[project_id]),
            }

    def stop_job(self, project_id: str, job_id: str) -> dict[str, Any]:
        with self._lock:
            self._advance_all(self.now_us())
            job = self._job_or_404(project_id, job_id)
            if job.status in TERMINAL_STATUSES:
                raise SandboxApiError(
                    400,
                    "VALIDATION_ERROR",
                    f"training job {job_id!r} cannot be stopped: it is already {job.status}",
                )
            self._set_status(job, STOPPED, self.now_us())
            return {"training_job": self._job_json(job)}

    def checkpoints(self, project_id: str, job_id: str) -> dict[str, Any]:
        with self._lock:
            self._advance_all(self.now_us())
            job = self._job_or_404(project_id, job_id)
            return {
                "training_job": self._job_json(job),
                "checkpoints": self._checkpoints_json(job),
            }

    def search(self, body: Any) -> dict[str, Any]:
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise SandboxApiError(400, "VALIDATION_ERROR", "body: expected a JSON object")
        unknown = sorted(body.keys() - {"project_id", "job_id", "statuses", "order_by"})
        if unknown:
            raise SandboxApiError(400, "VALIDATION_ERROR", f"body.{unknown[0]}: unknown field")
        for key in ("project_id", "job_id"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise SandboxApiError(
                    400, "VALIDATION_ERROR", f"body.{key}: expected a string or null"
                )
        statuses = body.get("statuses")
        if statuses is not None and (
            not isinstance(statuses, list) or not all(isinstance(s, str) for s in statuses)
        ):
            raise SandboxApiError(
                400, "VALIDATION_ERROR", "body.statuses: expected a list of strings or null"
            )
        order_by = body.get("order_by")
        if order_by is None:
            order_by = [{"field": "created_at", "order": "desc"}]
        if not isinstance(order_by, list):
            raise SandboxApiError(400, "VALIDATION_ERROR", "body.order_by: expected a list")
        for index, item in enumerate(order_by):
            if (
                not isinstance(item, dict)
                or set(item) != {"field", "order"}
                or item["field"] not in ("created_at", "updated_at")
                or item["order"] not in ("asc", "desc")
            ):
                raise SandboxApiError(
                    400,
                    "VALIDATION_ERROR",
                    f"body.order_by[{index}]: expected "
                    '{"field": "created_at"|"updated_at", "order": "asc"|"desc"}',
                )
        with self._lock:
            self._advance_all(self.now_us())
            # A filter on unfinished statuses reads only the active jobs (an index,
            # as a database index would), so a long history does not slow it down.
            pool = self._active if statuses and set(statuses) <= ADVANCING_STATUSES else self._jobs
            jobs = sorted(pool.values(), key=lambda j: j.seq)
            if body.get("project_id") is not None:
                jobs = [j for j in jobs if j.project_id == body["project_id"]]
            if body.get("job_id") is not None:
                jobs = [j for j in jobs if j.id == body["job_id"]]
            if statuses:
                wanted = set(statuses)
                jobs = [j for j in jobs if j.status in wanted]
            for item in reversed(order_by):
                attr = "created_us" if item["field"] == "created_at" else "updated_us"
                jobs.sort(key=attrgetter(attr), reverse=item["order"] == "desc")
            return {"training_jobs": [self._job_json(j) for j in jobs]}

    # ------------------------------------------------- logs and metrics (training_logs.py)

    def job_logs(self, project_id: str, job_id: str, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._advance_all(self.now_us())
            job = self._job_or_404(project_id, job_id)
            return self.training.logs(job.id, params, self.now_us() * 1000)

    def job_metrics(self, project_id: str, job_id: str, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._advance_all(self.now_us())
            job = self._job_or_404(project_id, job_id)
            return self.training.metrics(job.id, self._job_json(job), params, self.now_us() * 1000)

    def append_logs(self, job_id: str, body: Any) -> dict[str, Any]:
        with self._lock:
            job = self._control_job(job_id)
            return self.training.append(job.id, body, self.now_us() * 1000)

    def synthesize_logs(self, job_id: str, body: Any) -> dict[str, Any]:
        with self._lock:
            job = self._control_job(job_id)
            result = self.training.synthesize(job.id, job.request, body, self.now_us() * 1000)
            # The run began before the job existed: backdate the job to its start.
            job.created_us = min(job.created_us, result["first_ns"] // 1000 - 1_000_000)
            return result

    # ---------------------------------------------------------- checkpoints

    def _add_checkpoint(
        self, job: Job, at_us: int, overrides: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        job.checkpoint_seq += 1
        lora = dict(job.lora_adapter_config)
        rank = lora.get("r", DEFAULT_LORA["r"])
        checkpoint: dict[str, Any] = {
            "training_job_id": job.id,
            "checkpoint_id": f"checkpoint-{job.checkpoint_seq}",
            "created_at": rfc3339(at_us),
            "checkpoint_type": "lora",
            "base_model": job.base_model,
            "lora_adapter_config": lora,
            "size_bytes": int(rank * BYTES_PER_LORA_RANK),
        }
        if overrides:
            checkpoint.update(overrides)
        job.checkpoints.append(checkpoint)
        return dict(checkpoint)

    def add_checkpoint(self, job_id: str, overrides: Any) -> dict[str, Any]:
        if overrides is None:
            overrides = {}
        if not isinstance(overrides, dict):
            raise SandboxApiError(400, "VALIDATION_ERROR", "body: expected a JSON object")
        allowed = {"checkpoint_id", "checkpoint_type", "base_model", "lora_adapter_config"}
        allowed |= {"size_bytes"}
        unknown = sorted(overrides.keys() - allowed)
        if unknown:
            raise SandboxApiError(
                400, "VALIDATION_ERROR", f"checkpoint.{unknown[0]}: unknown field"
            )
        with self._lock:
            self._advance_all(self.now_us())
            job = self._control_job(job_id)
            wanted_id = overrides.get("checkpoint_id")
            if wanted_id is not None and any(
                cp["checkpoint_id"] == wanted_id for cp in job.checkpoints
            ):
                raise SandboxApiError(
                    400, "VALIDATION_ERROR", f"checkpoint {wanted_id!r} already exists"
                )
            return self._add_checkpoint(job, self.now_us(), overrides)

    # ------------------------------------------------------------ control

    def force_status(self, job_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("status"), str):
            raise SandboxApiError(
                400, "VALIDATION_ERROR", 'body: expected {"status": "TRAINING_JOB_..."}'
            )
        unknown = sorted(body.keys() - {"status", "error_message"})
        if unknown:
            raise SandboxApiError(400, "VALIDATION_ERROR", f"body.{unknown[0]}: unknown field")
        message = body.get("error_message")
        if message is not None and not isinstance(message, str):
            raise SandboxApiError(
                400, "VALIDATION_ERROR", "body.error_message: expected a string or null"
            )
        with self._lock:
            self._advance_all(self.now_us())
            job = self._control_job(job_id)
            if body["status"] == RUNNING:
                job.running_steps_done = 0
            job.passing_unknown_status = False  # a forced status is never a step of the path
            self._set_status(job, body["status"], self.now_us(), error_message=message)
            return {"training_job": self._job_json(job)}

    def advance(self, job_id: str | None, body: Any) -> dict[str, Any]:
        if body is None:
            body = {}
        steps = body.get("steps", 1) if isinstance(body, dict) else None
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise SandboxApiError(400, "VALIDATION_ERROR", "body.steps: expected an integer >= 1")
        with self._lock:
            self._advance_all(self.now_us())
            if job_id is not None:
                targets = [self._control_job(job_id)]
            else:
                targets = sorted(self._active.values(), key=lambda j: j.seq)
            for _ in range(steps):
                for job in targets:
                    if self._moves(job):
                        self._step(job, self.now_us())
            return {"training_jobs": [self._job_json(job) for job in targets]}

    def all_jobs(self) -> dict[str, Any]:
        with self._lock:
            self._advance_all(self.now_us())
            jobs = sorted(self._jobs.values(), key=lambda j: j.seq)
            return {
                "jobs": [
                    {
                        "job": self._job_json(job),
                        "project": self._project_json(
                            self._projects[job.project_id], with_latest=False
                        ),
                        "request": job.request,
                        "checkpoints": self._checkpoints_json(job),
                        "load_checkpoints": job.load_checkpoints,
                    }
                    for job in jobs
                ]
            }

    def seed(self, body: Any) -> dict[str, Any]:
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise SandboxApiError(400, "VALIDATION_ERROR", "body: expected a JSON object")
        allowed = {
            "projects",
            "jobs_per_project",
            "status",
            "name_prefix",
            "checkpoints_per_job",
        }
        unknown = sorted(body.keys() - allowed)
        if unknown:
            raise SandboxApiError(400, "VALIDATION_ERROR", f"body.{unknown[0]}: unknown field")
        counts: dict[str, int] = {}
        for key, default in (("projects", 1), ("jobs_per_project", 1), ("checkpoints_per_job", 0)):
            value = body.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SandboxApiError(
                    400, "VALIDATION_ERROR", f"body.{key}: expected an integer >= 0"
                )
            counts[key] = value
        if counts["projects"] * counts["jobs_per_project"] > 100_000:
            raise SandboxApiError(400, "VALIDATION_ERROR", "at most 100000 jobs per seed")
        status = body.get("status")
        if status is not None and not isinstance(status, str):
            raise SandboxApiError(400, "VALIDATION_ERROR", "body.status: expected a string")
        prefix = body.get("name_prefix", "seed")
        if not isinstance(prefix, str) or not prefix:
            raise SandboxApiError(
                400, "VALIDATION_ERROR", "body.name_prefix: expected a non-empty string"
            )
        with self._lock:
            out: list[dict[str, Any]] = []
            all_ids: list[str] = []
            for p in range(counts["projects"]):
                project = self._upsert_project_locked(f"{prefix}-{p}", None, None)
                job_ids: list[str] = []
                for _ in range(counts["jobs_per_project"]):
                    now = self.now_us()
                    job = self._new_job(project, self._seed_request(project.name), now)
                    if status is not None and status != job.status:
                        if status == RUNNING:
                            job.running_steps_done = 0
                        self._set_status(job, status, now)
                    for _ in range(counts["checkpoints_per_job"]):
                        self._add_checkpoint(job, self.now_us())
                    job_ids.append(job.id)
                all_ids.extend(job_ids)
                out.append({"id": project.id, "name": project.name, "job_ids": job_ids})
            return {"projects": out, "job_ids": all_ids}

    def _seed_request(self, project_name: str) -> dict[str, Any]:
        return {
            "image": {"base_image": "pytorch/pytorch:2.7.0-cuda12.8-cudnn9-runtime"},
            "compute": {
                "node_count": 1,
                "cpu_count": 4,
                "memory": "64Gi",
                "accelerator": {"accelerator": "H100", "count": 1},
                "availability_model": "dedicated",
            },
            "runtime": {
                "start_commands": ["python train.py"],
                "environment_variables": {"MODEL_ID": "sandbox/seed-model"},
                "artifacts": [{"s3_bucket": self.s3.bucket, "s3_key": f"seed/{project_name}"}],
            },
            "name": None,
            "seeded": True,
        }
