"""What a dry run's GPU hours and cost rest on: throughput measured on earlier jobs, and price.

**Throughput** (the estimate's ``ThroughputSource``): tokens per second that
earlier *completed* jobs of the same model on the same accelerator and GPU
count reached, read from their own ``FT_METRICS`` step lines. The template
prints ``tokens_per_second`` on each step line: the non-padding input tokens the
Trainer counted across every process (``num_input_tokens_seen``, gathered over
all GPUs) since the previous step line, divided by the wall time between the
two lines. So it is the whole job's rate, the same kind of token the dry run
counts, and ``trained_tokens / rate`` is the job's wall-clock training time;
GPU hours are that time times the GPU count.

How it is read, with a bounded number of Baseten requests per lookup:

1. one job search (completed jobs, newest first, streamed; at most
   ``SCAN_JOBS`` jobs looked at), keeping single-node jobs whose
   ``instance_type`` has this ``gpu_type`` and ``gpu_count`` (and, with
   ``PROJECT_NAME_PREFIX``, only jobs in this service's scope); jobs in the
   model's default project (``ft-<model>``) are tried first;
2. in that order, jobs read before cost nothing (their model and rate are
   kept); for at most ``MAX_JOBS`` jobs not read before: the first page of the
   job's log (one request, oldest first) for the template's ``model=<id> …``
   start line, and, when that is the model asked about, the newest page (one
   request) for its step lines. The search stops once ``MAX_JOBS`` jobs of
   the model are found. So a lookup costs at most ``1 + 2 * MAX_JOBS`` requests,
   and a repeated one only the search plus older jobs it had not reached.

A job's rate is the median of the ``tokens_per_second`` of the step lines on
that page (the median ignores the slow steps around an evaluation or a
checkpoint save); the answer is the median over the jobs found. Jobs whose log
names no model (another template) or has no step rate do not count. What a
finished job's log says never changes, so each job's log is read once per
process (``JOB_CACHE`` jobs kept): a repeated dry run costs the one search, and
a job that completed since the last one counts at once.

**Price** (``PriceSource``): Baseten's REST API publishes no price. Its
``GET /v1/instance_types`` (``sandbox/spec/baseten-models-openapi.yaml``,
``InstanceTypeV1``) lists id, name, CPU, memory and GPUs only; the GraphQL
``listed_instances`` query truss sends carries an undocumented ``price`` whose
unit and billing basis (serving or training) no published document states. So
there is no grounded price: :func:`no_published_price` says so, and
``cost_usd`` stays ``null`` while ``gpu_hours`` (measured) is given.
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

from finetune_api.baseten.log_pages import MS, LogSource, Position, job_fetch, read_page
from finetune_api.core.errors import ServiceError
from finetune_api.core.logs import get_logger, log
from finetune_api.core.timestamps import parse_time
from finetune_api.insights.training_metrics import STEP, parse_line
from finetune_api.jobs.service import default_project_name

_logger = get_logger("throughput")

COMPLETED = "TRAINING_JOB_COMPLETED"
SCAN_JOBS = 200
MAX_JOBS = 4
JOB_CACHE = 256
PAGE_LINES = 1000
# The template's start line: "model=<id> dataset=<id> device=… processes=…".
_MODEL_LINE = re.compile(r"(?:^|\s)model=(\S+) dataset=")
_BEFORE_CREATED_NS = 60 * 1_000_000_000
_AFTER_FINISHED_NS = 10 * 60 * 1_000_000_000
_WINDOW_NS = 7 * 24 * 3600 * 1_000_000_000 - MS

NO_PRICE = (
    "no price: Baseten's API publishes none (GET /v1/instance_types lists no price; the "
    "GraphQL listed_instances price has no documented unit or billing basis), so cost_usd "
    "is null: multiply gpu_hours by your Baseten GPU-hour rate"
)


def no_published_price(accelerator: str, gpu_count: int) -> tuple[float | None, str]:
    """The PriceSource: never a number (see the module docstring)."""
    return None, NO_PRICE


class JobSource(LogSource, Protocol):
    """Baseten's job search and logs (``get_logs`` as :class:`LogSource` declares it)."""

    def stream_search_jobs(
        self,
        *,
        project_id: str | None = None,
        statuses: list[str] | None = None,
        newest_first: bool = True,
    ) -> AbstractContextManager[Iterator[dict[str, Any]]]: ...


def _ns(value: Any) -> int | None:
    parsed = parse_time(value) if isinstance(value, str) else None
    return None if parsed is None else int(parsed.timestamp() * 1_000_000_000)


def step_rate(messages: Iterator[str] | list[str]) -> float | None:
    """The median ``tokens_per_second`` of the FT_METRICS step lines among ``messages``."""
    rates = []
    for message in messages:
        record = parse_line(message)
        if record is None or record.get("type") != STEP:
            continue
        rate = record.get("tokens_per_second")
        if isinstance(rate, int | float) and not isinstance(rate, bool) and 0 < rate < 1e12:
            rates.append(float(rate))
    return statistics.median(rates) if rates else None


def model_of(messages: Iterator[str] | list[str]) -> str | None:
    """The model the template's start line names, or None."""
    for message in messages:
        match = _MODEL_LINE.search(message)
        if match is not None:
            return match.group(1)
    return None


class MeasuredThroughput:
    """``(model_id, accelerator, gpu_count) -> (tokens/s, basis) | (None, reason)``. Thread-safe."""

    def __init__(
        self,
        client: JobSource,
        *,
        prefix: str | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        # job id -> (model named by its log, its step rate): a finished job's log never changes
        self._jobs: OrderedDict[str, tuple[str | None, float | None]] = OrderedDict()

    def __call__(self, model_id: str, accelerator: str, gpu_count: int) -> tuple[float | None, str]:
        try:
            return self._measure(model_id, accelerator, gpu_count)
        except ServiceError as error:
            log(_logger, 30, "could not read earlier jobs' throughput", error_type=error.type)
            return None, f"no throughput: earlier jobs could not be read ({error.type})"

    # -- the reads ------------------------------------------------------------------

    def _candidates(self, accelerator: str, gpu_count: int, model_id: str) -> list[dict[str, Any]]:
        wanted = accelerator.upper()
        found: list[dict[str, Any]] = []
        with self._client.stream_search_jobs(statuses=[COMPLETED], newest_first=True) as jobs:
            for seen, job in enumerate(jobs):
                if seen >= SCAN_JOBS:
                    break
                instance = job.get("instance_type")
                if not isinstance(instance, Mapping):
                    continue
                gpu = instance.get("gpu_type")
                if not isinstance(gpu, str) or gpu.upper() != wanted:
                    continue
                if instance.get("gpu_count") != gpu_count or (job.get("node_count") or 1) != 1:
                    continue
                project = job.get("training_project")
                name = project.get("name") if isinstance(project, Mapping) else None
                if self._prefix is not None and not (
                    isinstance(name, str) and name.startswith(self._prefix)
                ):
                    continue
                found.append(job)
        home = default_project_name(model_id)

        def likely(job: dict[str, Any]) -> int:
            project = job.get("training_project")
            name = project.get("name") if isinstance(project, Mapping) else ""
            return 0 if isinstance(name, str) and name.endswith(home) else 1

        return sorted(found, key=likely)  # stable: newest first within each group

    def _measure(self, model_id: str, accelerator: str, gpu_count: int) -> tuple[float | None, str]:
        where = f"{model_id} on {gpu_count}x {accelerator}"
        rates: list[tuple[str, float]] = []
        read = 0
        for job in self._candidates(accelerator, gpu_count, model_id):
            job_id = str(job.get("id") or "")
            with self._lock:
                known = self._jobs.get(job_id)
            if known is None:
                if read >= MAX_JOBS:
                    continue
                read += 1
                known = self._read_job(job, model_id)
                with self._lock:
                    self._jobs[job_id] = known
                    while len(self._jobs) > JOB_CACHE:
                        self._jobs.popitem(last=False)
            model, rate = known
            if model == model_id and rate is not None:
                rates.append((job_id, rate))
            if len(rates) >= MAX_JOBS:
                break
        if not rates:
            return None, (
                f"no throughput measured yet for {where}: no completed job of that model and "
                "accelerator with FT_METRICS step lines among the newest ones"
            )
        rate = round(statistics.median(rate for _, rate in rates), 1)
        ids = ", ".join(job_id for job_id, _ in rates)
        return rate, (
            f"throughput {rate} tokens/s: the median FT_METRICS step rate of {len(rates)} "
            f"completed job(s) of {where} ({ids})"
        )

    def _read_job(self, job: dict[str, Any], model_id: str) -> tuple[str | None, float | None]:
        """(the model its start line names, its step rate if that model is ``model_id``)."""
        project_id = str(job.get("training_project_id") or "")
        job_id = str(job.get("id") or "")
        now = self._clock_ns()
        created = _ns(job.get("created_at"))
        start = max(0, (created if created is not None else now - _WINDOW_NS) - _BEFORE_CREATED_NS)
        updated = _ns(job.get("updated_at"))
        end = min(now, (updated if updated is not None else now) + _AFTER_FINISHED_NS)
        fetch = job_fetch(self._client, project_id, job_id)
        first = read_page(
            fetch,
            order="asc",
            lo_ns=start,
            hi_ns=min(end, start + _WINDOW_NS),
            position=Position(start),
            limit=PAGE_LINES,
            max_requests=1,
        )
        model = model_of(line.message for line in first.lines)
        if model != model_id:
            return model, None
        lo = max(start, end - _WINDOW_NS)
        last = read_page(
            fetch,
            order="desc",
            lo_ns=lo,
            hi_ns=end,
            position=Position(end),
            limit=PAGE_LINES,
            max_requests=1,
        )
        return model, step_rate([line.message for line in last.lines])
