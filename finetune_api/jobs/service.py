"""The job service: submit (idempotent), get, list, stop, checkpoints.

Both triggers and the Python API call :meth:`JobService.submit`; nothing about
HTTP, CloudEvents or truss is visible here.

Idempotency uses no database beyond Baseten itself: a digest of the key is
carried in the Baseten job name (``<job_name>-ik-<20 hex>``). Before pushing we
look for a job of the project carrying it; after pushing we look again and, if
concurrent duplicates slipped through (other instances), keep the earliest job,
stop the others at once and answer every caller with the kept one.

Callers' keys and the keys the service derives itself (a poll's retry of a failed
job) live in two domains: a caller's digest is ``sha256(key)``, an internal one
``sha256("finetune-api/internal" NUL key)``. A caller's ``Idempotency-Key`` is
visible ASCII only (never NUL), so no key a caller can send digests to an internal
one: a caller cannot take a retry by sending its key.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from finetune_api.core.errors import (
    InvalidRequestError,
    NotFoundError,
    QuotaExceededError,
    ServiceError,
    UpstreamRejectedError,
)
from finetune_api.core.logs import get_logger, log
from finetune_api.core.schemas import (
    TERMINAL_STATUSES,
    Checkpoint,
    Job,
    JobWithCheckpoints,
    Progress,
    ResumedFrom,
    ResumedJob,
    TrainingRequest,
    baseten_job_name,
    checkpoint_from_baseten,
    job_from_baseten,
    method_hyperparameters,
    split_job_name,
)
from finetune_api.core.settings import Settings
from finetune_api.jobs.scope import JobScope
from finetune_api.jobs.staging import staged_template

_logger = get_logger("jobs")
# What training_template/config.py trains on when compute.accelerator is null.
DEFAULT_ACCELERATOR = "H100"


class BasetenReads(Protocol):
    def upsert_project(self, name: str, team_id: str | None = None) -> dict[str, Any]: ...
    def get_job(self, project_id: str, job_id: str) -> dict[str, Any]: ...
    def search_jobs(
        self,
        *,
        project_id: str | None = None,
        job_id: str | None = None,
        statuses: list[str] | None = None,
        newest_first: bool = True,
    ) -> list[dict[str, Any]]: ...
    def list_project_jobs(self, project_id: str) -> list[dict[str, Any]]: ...
    def list_projects(self) -> list[dict[str, Any]]: ...
    def list_models(self, name: str | None = None) -> list[dict[str, Any]]: ...
    def list_deployments(self, model_id: str, name: str | None = None) -> list[dict[str, Any]]: ...
    def stream_search_jobs(
        self,
        *,
        project_id: str | None = None,
        statuses: list[str] | None = None,
        newest_first: bool = True,
    ) -> AbstractContextManager[Iterator[dict[str, Any]]]: ...
    def stream_project_jobs(
        self, project_id: str
    ) -> AbstractContextManager[Iterator[dict[str, Any]]]: ...
    def list_checkpoints(self, project_id: str, job_id: str) -> list[dict[str, Any]]: ...
    def stop_job(self, project_id: str, job_id: str) -> dict[str, Any]: ...


class DataResolver(Protocol):
    def resolve(self, field: str, ref: str) -> dict[str, Any]: ...
    def each_example(self, handoff: dict[str, Any], visit: Any) -> None: ...


Pusher = Callable[[Path], dict[str, Any]]
ProgressReader = Callable[[dict[str, Any]], dict[str, Any] | None]
Announcer = Callable[[Job, str | None, str | None], None]
# Called with every job a submit created or replayed, its request and the caller's
# labels (metadata, suffix): the job index (see jobs/index.py).
Indexer = Callable[[Job, TrainingRequest, dict[str, Any] | None], Any]


#: The answer for a project Baseten does not know (baseten/client.py's 404 for its job list).
UNKNOWN_PROJECT = "jobs of a training project not found on Baseten"

#: What an internal key's digest starts from (NUL: never in a caller's key).
INTERNAL_KEY_DOMAIN = "finetune-api/internal\x00"


def key_digest(idempotency_key: str, *, internal: bool = False) -> str:
    """The digest a job's Baseten name carries; ``internal``: a key the service derived."""
    material = f"{INTERNAL_KEY_DOMAIN}{idempotency_key}" if internal else idempotency_key
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:20]


def check_idempotency_key(key: str | None) -> str | None:
    """1-255 visible ASCII characters, per CONTRACT."""
    if key is None:
        return None
    if (
        not isinstance(key, str)
        or not 1 <= len(key) <= 255
        or not all(33 <= ord(ch) <= 126 for ch in key)
    ):
        raise InvalidRequestError(
            "Idempotency-Key must be 1-255 visible ASCII characters",
            details=[
                {"location": "header.Idempotency-Key", "reason": "invalid characters or length"}
            ],
        )
    return key


def default_project_name(model_id: str) -> str:
    """``openai/gpt-oss-20b`` → ``ft-openai-gpt-oss-20b`` (max 64 characters)."""
    return f"ft-{model_id.replace('/', '-')}"[:64].rstrip("-.")


def default_job_name(model_id: str, now: datetime) -> str:
    """``openai/gpt-oss-20b`` → ``gpt-oss-20b-20261127-060000`` (max 64 characters)."""
    stamp = now.strftime("%Y%m%d-%H%M%S")
    return f"{model_id.rsplit('/', 1)[-1][: 64 - len(stamp) - 1]}-{stamp}"


class KeyedLocks:
    """One lock per key, kept only while someone holds or waits for it.

    An instance sees an unbounded number of idempotency keys; a plain dict of
    locks would grow for its whole life.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                _, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


def _created_order(job: dict[str, Any]) -> tuple[str, str]:
    return (str(job.get("created_at") or ""), str(job.get("id") or ""))


class JobService:
    def __init__(
        self,
        settings: Settings,
        client: BasetenReads,
        pusher: Pusher,
        announce: Announcer | None = None,
        progress: ProgressReader | None = None,
        files: DataResolver | None = None,
        *,
        tokenizer: Any = None,
        throughput: Any = None,
        price: Any = None,
        index: Indexer | None = None,
        own_prefix: str | None = None,
        quota: Callable[[str], Any] | None = None,
    ) -> None:
        self._settings = settings
        # Where this caller's new projects go (a team's ``<prefix><team>-``; the
        # admin reads every team's but creates in its own); default: the scope.
        self._own_prefix = own_prefix or settings.project_name_prefix
        self._teamless = own_prefix is None
        # TEAM_LIMITS: the project name's team's quota (None: no limits).
        self._quota = quota
        self._index = index
        self._files = files
        # Dry-run estimates (see jobs/estimate.py): each optional.
        self._tokenizer = tokenizer
        self._throughput = throughput
        self._price = price
        self._progress = progress
        self._client = client
        self._scope = JobScope(settings.project_name_prefix, client)
        self._push = pusher
        self._announce = announce
        self._key_locks = KeyedLocks()
        self._project_ids: dict[str, str] = {}

    # -- submit -----------------------------------------------------------------

    def data(self, request: TrainingRequest) -> dict[str, Any]:
        """The checked files a request names, as the job receives them (else a 400).

        Resolved before anything is created: a File in error or still pending, an
        unknown one, a missing or unreadable object or a malformed URI stops here.
        """
        data: dict[str, Any] = {"training_file": None, "validation_file": None}
        for field in data:
            ref = getattr(request, field)
            if ref is None:
                continue
            if self._files is None:
                raise InvalidRequestError(f"{field}: this service keeps no files")
            data[field] = self._files.resolve(field, ref)
            _check_method(request.method, field, data[field].get("format"))
        return data

    def runtime_config(
        self,
        request: TrainingRequest,
        baseten_job_name: str,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """What reaches the job as runtime_config.json and RUNTIME_CONFIG.

        ``extra`` adds keys (a resume's ``resume_from`` and ``attempt``).
        """
        return {
            "training_file": None,
            "validation_file": None,
            "dataset_id": request.dataset_id,
            "model_id": request.model_id,
            "project_name": request.project_name,
            "job_name": baseten_job_name,
            # What the template trains with (supervised or dpo) and both method
            # hyperparameters, defaults filled (train_on_inputs, dpo_beta, eval_samples).
            "method": request.method,
            "hyperparameters": method_hyperparameters(request),
            "compute": request.compute.model_dump(),
            "hf_token_secret_name": self._settings.hf_token_secret_name,
            # OpenAI's shape; with a wandb entry the job gets WANDB_API_KEY as a
            # reference to this Baseten secret (training_template/config.py).
            "integrations": [
                item.model_dump(exclude_none=True) for item in request.integrations or []
            ],
            "wandb_api_key_secret_name": self._settings.wandb_api_key_secret_name,
            # Read back by poll_jobs (GET .../download) to deploy on completion.
            "deploy": request.deploy.model_dump() if request.deploy is not None else None,
            # Read back by poll_jobs to resume the job when it fails (polling/retry.py).
            "retry": request.retry.model_dump() if request.retry is not None else None,
            **(extra or {}),
        }

    def dry_run(self, request: TrainingRequest) -> dict[str, Any]:
        """Check everything a submit would, the data included, and create nothing."""
        request = self.resolve(request)
        data = self.data(request)
        hp = request.hyperparameters
        tally = None
        problem = None
        if data["training_file"] is not None and self._files is not None:
            from finetune_api.jobs.estimate import TOKENIZER_SECONDS, RuleCounter, Tally

            started = time.monotonic()
            counter = self._tokenizer(request.model_id) if self._tokenizer else None
            tally = Tally(
                hp.max_seq_length,
                counter or RuleCounter(),
                deadline=started + TOKENIZER_SECONDS,
            )
            self._files.each_example(data["training_file"], tally)
            tally.flush()
            # The model's chat template, when its tokenizer was loaded: can it render the
            # tools, tool calls and tool messages the data holds? (the job would fail)
            template = getattr(counter, "chat_template", None)
            if template is not None and tally.needs:
                problem = template.problem(tally.needs)
        from finetune_api.jobs.estimate import estimate

        shown = self.runtime_config(request, str(request.job_name), data)
        for field in ("training_file", "validation_file"):
            if shown[field] is not None:
                shown[field] = {k: v for k, v in shown[field].items() if k != "url"}
        return {
            "dry_run": True,
            "request": shown,
            "estimate": estimate(
                tally,
                num_epochs=hp.num_epochs,
                model_id=request.model_id,
                # A request without one trains on the template's default (config.py).
                accelerator=request.compute.accelerator or DEFAULT_ACCELERATOR,
                gpu_count=request.compute.gpu_count or 1,
                throughput=self._throughput,
                price=self._price,
                method=request.method,
                chat_template_problem=problem,
            ),
        }

    def resolve(self, request: TrainingRequest) -> TrainingRequest:
        """Fill the name defaults (documented in docs/api.md)."""
        updates: dict[str, str] = {}
        prefix = self._own_prefix
        if request.project_name is None:
            name = default_project_name(request.model_id)
            if prefix and not name.startswith(prefix):
                name = f"{prefix}{name}"[:64].rstrip("-.")
            updates["project_name"] = name
        elif prefix and not request.project_name.startswith(prefix):
            # A job this service could not read or stop afterwards is refused up front.
            whose = "PROJECT_NAME_PREFIX" if self._teamless else "your team's prefix"
            reason = f"must start with {prefix} ({whose})"
            raise InvalidRequestError(
                f"project_name {reason}",
                details=[{"location": "project_name", "reason": reason}],
            )
        if request.job_name is None:
            updates["job_name"] = default_job_name(request.model_id, datetime.now(UTC))
        if request.deploy is not None and request.deploy.model_name is not None:
            # Refused now, not when the job completes: under PROJECT_NAME_PREFIX a
            # deploy never goes into a model this service did not create.
            self._scope.check_model(
                request.deploy.model_name, self._client, location="deploy.model_name"
            )
        return request.model_copy(update=updates) if updates else request

    def submit(
        self,
        request: TrainingRequest,
        *,
        idempotency_key: str | None = None,
        message_id: str | None = None,
        template_dir: Path | None = None,
        labels: dict[str, Any] | None = None,
    ) -> Job:
        """Create a training job; with a key, the same key always yields the same job.

        ``labels`` (``metadata``, ``suffix``) are kept in the job index, not on Baseten.
        """
        return self.start(
            self.resolve(request),
            idempotency_key=idempotency_key,
            message_id=message_id,
            template_dir=template_dir,
            labels=labels,
        )

    def start(
        self,
        request: TrainingRequest,
        *,
        idempotency_key: str | None = None,
        message_id: str | None = None,
        template_dir: Path | None = None,
        extra_config: Mapping[str, Any] | None = None,
        resumed_from: ResumedFrom | None = None,
        labels: dict[str, Any] | None = None,
        internal_key: str | None = None,
    ) -> Job:
        """Push an already resolved request (see :meth:`resolve`); idempotent with a key.

        ``extra_config`` adds keys to the job's runtime_config.json and
        ``resumed_from`` is set on the answer (resume uses both). ``labels``
        (``metadata``, ``suffix``) are kept in the job index, not on Baseten.
        ``internal_key``: a key the service derived itself (never a caller's), digested
        in its own domain (see the module's docstring); it takes the place of
        ``idempotency_key``.
        """
        template = template_dir or self._settings.training_template_dir
        key = check_idempotency_key(idempotency_key)
        # The checked files, resolved (and their read URLs signed) before anything exists.
        extra = {**self.data(request), **(extra_config or {})}
        if internal_key is not None:
            key = internal_key
            digest: str | None = key_digest(internal_key, internal=True)
        else:
            digest = None if key is None else key_digest(key)
        if digest is None:
            name = baseten_job_name(str(request.job_name), request.method)
            with self._admitted(request):
                job = self._create(request, name, template, extra)
        else:
            job = self._submit_idempotent(request, digest, template, extra)
        if resumed_from is not None:
            job = ResumedJob(**job.model_dump(), resumed_from=resumed_from)
        log(
            _logger,
            20,
            "training job replayed" if job.idempotent_replay else "training job created",
            training_project_id=job.training_project_id,
            training_job_id=job.training_job_id,
            idempotent_replay=job.idempotent_replay,
        )
        if self._index is not None:
            self._index(job, request, labels)
        if self._announce is not None:
            self._announce(job, key, message_id)
        return job

    def _create(
        self,
        request: TrainingRequest,
        baseten_name: str,
        template: Path,
        extra: Mapping[str, Any] | None = None,
    ) -> Job:
        runtime_config = self.runtime_config(request, baseten_name, extra)
        with staged_template(template, runtime_config) as config:
            raw = self._push(config)
        return job_from_baseten(raw, self._settings.baseten_remote_url)

    def _project_id(self, name: str) -> str:
        project_id = self._project_ids.get(name)
        if project_id is None:
            project = self._client.upsert_project(name, self._settings.baseten_team_id)
            project_id = self._project_ids[name] = str(project["id"])
        return project_id

    def _jobs_with_digest(self, project_id: str, digest: str) -> list[dict[str, Any]]:
        # Read as a stream: only the matches are held, not the project's history.
        with self._client.stream_search_jobs(project_id=project_id, newest_first=False) as jobs:
            matching = [job for job in jobs if split_job_name(job.get("name"))[1] == digest]
        return sorted(matching, key=_created_order)

    def _submit_idempotent(
        self,
        request: TrainingRequest,
        digest: str,
        template: Path,
        extra: Mapping[str, Any] | None = None,
    ) -> Job:
        project_name = str(request.project_name)
        # Same-instance duplicates wait here and become cheap replays.
        with self._key_locks.hold(f"{project_name}/{digest}"):
            try:
                with self._admitted(request):
                    return self._submit_once(request, project_name, digest, template, extra)
            except QuotaExceededError:
                # At the limit a replay still answers its job (found without creating).
                replay = self._find_replay(project_name, digest)
                if replay is None:
                    raise
                return replay

    @contextlib.contextmanager
    def _admitted(self, request: TrainingRequest) -> Iterator[None]:
        """TEAM_LIMITS: checked (and the team's lease held) until the job exists."""
        quota = self._quota(str(request.project_name)) if self._quota is not None else None
        if quota is None or not quota.limited:
            yield
            return
        compute = request.compute
        with quota.admit((compute.gpu_count or 1) * (compute.node_count or 1)):
            yield

    def _find_replay(self, project_name: str, digest: str) -> Job | None:
        """The job an idempotency key already made, read without creating a project."""
        project_id = self._project_ids.get(project_name)
        if project_id is None:
            for project in self._client.list_projects():
                if project.get("name") == project_name:
                    project_id = str(project.get("id"))
                    break
        if project_id is None:
            return None
        existing = self._jobs_with_digest(project_id, digest)
        return self._as_replay(existing[0], project_id) if existing else None

    def _submit_once(
        self,
        request: TrainingRequest,
        project_name: str,
        digest: str,
        template: Path,
        extra: Mapping[str, Any] | None,
    ) -> Job:
        project_id = self._project_id(project_name)
        existing = self._jobs_with_digest(project_id, digest)
        if existing:
            return self._as_replay(existing[0], project_id)
        name = baseten_job_name(str(request.job_name), request.method, digest)
        created = self._create(request, name, template, extra)
        # The pushed job names the project authoritatively (a cached id may be stale).
        project_id = created.training_project_id
        self._project_ids[project_name] = project_id
        # Other instances may have raced us: the earliest job wins.
        matching = self._jobs_with_digest(project_id, digest)
        if not matching:
            return created
        kept = matching[0]
        for duplicate in matching[1:]:
            self._stop_duplicate(project_id, duplicate)
        if str(kept.get("id")) == created.training_job_id:
            return created
        return self._as_replay(kept, project_id)

    def _as_replay(self, raw: dict[str, Any], project_id: str) -> Job:
        raw = {**raw, "training_project_id": raw.get("training_project_id") or project_id}
        job = job_from_baseten(raw, self._settings.baseten_remote_url)
        return job.model_copy(update={"idempotent_replay": True})

    def _stop_duplicate(self, project_id: str, job: dict[str, Any]) -> None:
        if job.get("current_status") in TERMINAL_STATUSES:
            return
        try:
            self._client.stop_job(project_id, str(job["id"]))
        except UpstreamRejectedError:
            pass  # already stopped by the instance that raced us
        except ServiceError as error:
            log(
                _logger,
                40,
                "could not stop a duplicate training job",
                training_project_id=project_id,
                training_job_id=job.get("id"),
                error_type=error.type,
            )
            return
        log(
            _logger,
            30,
            "stopped a duplicate training job created by a concurrent submission",
            training_project_id=project_id,
            training_job_id=job.get("id"),
        )

    # -- reads and stop -----------------------------------------------------------

    def allows(self, raw_job: dict[str, Any]) -> bool:
        """Whether PROJECT_NAME_PREFIX (when set) lets callers see this Baseten job."""
        return self._scope.allows(raw_job)

    def read_job(self, project_id: str, job_id: str) -> dict[str, Any]:
        """Baseten's job, or not_found when PROJECT_NAME_PREFIX hides it (see :mod:`.scope`)."""
        return self._scope.read_job(project_id, job_id)

    def get(self, project_id: str, job_id: str, *, with_checkpoints: bool = True) -> Job:
        raw = self.read_job(project_id, job_id)
        job = job_from_baseten(raw, self._settings.baseten_remote_url)
        if not with_checkpoints:
            return job
        progress = self._progress(raw) if self._progress is not None else None
        return JobWithCheckpoints(
            **job.model_dump(),
            checkpoints=self._checkpoints(project_id, job_id),
            progress=Progress.model_validate(progress) if progress is not None else None,
        )

    def checkpoints(self, project_id: str, job_id: str) -> list[Checkpoint]:
        if self._scope.limited:
            self.read_job(project_id, job_id)
        return self._checkpoints(project_id, job_id)

    def _checkpoints(self, project_id: str, job_id: str) -> list[Checkpoint]:
        return [
            checkpoint_from_baseten(item)
            for item in self._client.list_checkpoints(project_id, job_id)
        ]

    def stop(self, project_id: str, job_id: str) -> Job:
        current = self.read_job(project_id, job_id)
        if current.get("current_status") not in TERMINAL_STATUSES:
            # Baseten answers the stop with the job; keep the project from the read.
            current = {**current, **self._client.stop_job(project_id, job_id)}
        return job_from_baseten(current, self._settings.baseten_remote_url)

    def list(self, project_id: str | None, statuses: Iterable[str], limit: int) -> list[Job]:
        """Newest first; one project's jobs, or every project's when ``project_id`` is None.

        Baseten answers the whole history in one list, so it is read as a stream
        and only the newest ``limit`` matching jobs are ever held: memory follows
        ``limit``, not the history.
        """
        wanted = [normalize_status(status) for status in statuses]
        ordered = project_id is None  # the search answers newest first
        if project_id is None:
            rows = self._client.stream_search_jobs(statuses=wanted or None, newest_first=True)
        else:
            # The project's job list 404s for an unknown project (search would answer []).
            rows = self._client.stream_project_jobs(project_id)
        newest: list[tuple[tuple[str, str], int, dict[str, Any]]] = []  # a min-heap
        counter = itertools.count()
        hidden = shown = False  # whether the project held jobs outside / inside the scope
        with rows as jobs:
            for job in jobs:
                if not self.allows(job):
                    hidden = True
                    continue
                shown = True
                if wanted and job.get("current_status") not in wanted:
                    continue
                key = _created_order(job)
                if len(newest) < limit:
                    heapq.heappush(newest, (key, next(counter), job))
                elif key > newest[0][0]:
                    heapq.heapreplace(newest, (key, next(counter), job))
                elif ordered and key[0] < newest[0][0][0]:
                    break  # every later row is older still: stop reading
        if project_id is not None and hidden and not shown:
            # Another team's (or outside PROJECT_NAME_PREFIX): as a project that does not exist.
            raise NotFoundError(UNKNOWN_PROJECT)
        raw = [job for _, _, job in sorted(newest, key=lambda entry: entry[0], reverse=True)]
        return [job_from_baseten(job, self._settings.baseten_remote_url) for job in raw]


def _check_method(method: str, field: str, data_format: Any) -> None:
    """A preference file needs ``dpo`` and ``dpo`` needs one (CONTRACT "Method"); else a 400."""
    if (data_format == "preference") == (method == "dpo"):
        return
    if method == "dpo":
        reason = (
            f"method dpo needs a preference file (input, preferred_output, "
            f"non_preferred_output); this one is {data_format}"
        )
    else:
        reason = 'a preference file trains only with method "dpo"'
    raise InvalidRequestError(f"{field}: {reason}", details=[{"location": field, "reason": reason}])


def normalize_status(status: str) -> str:
    """``running`` / ``RUNNING`` / ``TRAINING_JOB_RUNNING`` → ``TRAINING_JOB_RUNNING``."""
    value = status.strip().upper()
    if not value:
        raise InvalidRequestError("status must not be empty")
    return value if value.startswith("TRAINING_JOB_") else f"TRAINING_JOB_{value}"


__all__ = ["JobService", "KeyedLocks", "default_job_name", "default_project_name"]
