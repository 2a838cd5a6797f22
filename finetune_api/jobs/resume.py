"""Resume: a new job that continues a finished one from one of its checkpoints.

``POST /jobs/{project_id}/{job_id}/resume`` and the poll's retry on failure
(``polling/retry.py``) both come here. The new job is the old one's own
request, read back from the job itself (its ``runtime_config.json`` through
Baseten's ``GET …/download``, see :mod:`.runtime_config`), with the caller's
overrides (``hyperparameters`` field by field, ``compute`` field by field,
``job_name``) validated exactly as a submit. It goes into the same project and
carries ``resume_from`` in its runtime_config.json, from which the template's
``config.py`` builds Baseten's ``runtime.load_checkpoint_config``:

    {"enabled": true, "download_folder": "/tmp/loaded_checkpoints",
     "checkpoints": [{"typ": "baseten_named_checkpoint",
                      "checkpoint_name": "<checkpoint_id>", "job_id": "<job_id>"}]}

(truss's ``LoadCheckpointConfig`` with ``BasetenCheckpoint.from_named_checkpoint``;
the newest checkpoint is resolved here and named, so the answer's
``resumed_from`` says exactly what the job loads.)

Idempotency is the submit's (a digest of the key in the Baseten job name);
the retry derives its key from the failed job's id, so one failure yields
one new job across polls and instances.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from finetune_api.core.errors import ConflictError, NotFoundError
from finetune_api.core.logs import get_logger, log
from finetune_api.core.schemas import (
    TERMINAL_STATUSES,
    Job,
    ResumedFrom,
    ResumeRequest,
    parse_training_request,
    short_status,
    split_job_name,
)
from finetune_api.core.settings import Settings
from finetune_api.jobs.runtime_config import RuntimeConfigs
from finetune_api.jobs.service import JobService, check_idempotency_key

_logger = get_logger("resume")

#: runtime_config.json keys a resumed job takes over from the job it continues.
CARRIED = (
    "dataset_id",
    "model_id",
    "method",
    "hyperparameters",
    "compute",
    "deploy",
    "retry",
    "integrations",
)

CHECKPOINT_NOT_FOUND = "checkpoint not found for this training job"


class CheckpointReads(Protocol):
    def list_checkpoints(self, project_id: str, job_id: str) -> list[dict[str, Any]]: ...


def retry_key(failed_job_id: str) -> str:
    """The idempotency key of the retry of one failed job: one failure, one new job.

    An internal key: digested apart from callers' keys (see jobs/service.py), so a
    caller sending this text as its ``Idempotency-Key`` makes a job of its own.
    """
    return f"retry-{failed_job_id}"


_TRAINER_CHECKPOINT = re.compile(r"checkpoint-\d+")


def newest_checkpoint(checkpoints: list[dict[str, Any]]) -> str | None:
    """The id of the newest resumable checkpoint (latest ``created_at``; Baseten: oldest first).

    The template's ``final`` folder holds the adapter only (no optimizer, scheduler or
    step): a trainer checkpoint (``checkpoint-<step>``, the last one at the same step)
    is preferred; only a job without any falls back to its newest checkpoint.
    """
    best: tuple[bool, str, int] | None = None
    chosen: str | None = None
    for index, item in enumerate(checkpoints):
        checkpoint_id = item.get("checkpoint_id")
        if not isinstance(checkpoint_id, str) or not checkpoint_id:
            continue
        resumable = bool(_TRAINER_CHECKPOINT.fullmatch(checkpoint_id))
        rank = (resumable, str(item.get("created_at") or ""), index)
        if best is None or rank > best:
            best, chosen = rank, checkpoint_id
    return chosen


class ResumeService:
    """Thread-safe (its parts are)."""

    def __init__(
        self,
        settings: Settings,
        client: CheckpointReads,
        jobs: JobService,
        configs: RuntimeConfigs,
    ) -> None:
        self._settings = settings
        self._client = client
        self._jobs = jobs
        self._configs = configs

    def resume(
        self,
        project_id: str,
        job_id: str,
        request: ResumeRequest,
        *,
        idempotency_key: str | None = None,
    ) -> Job:
        """A new job continuing ``job_id`` from a checkpoint (newest by default).

        404 (fixed messages, no id echoed): unknown job, job outside
        PROJECT_NAME_PREFIX, unknown checkpoint. 409: the job has not ended,
        has no checkpoint, or was not submitted through this service.
        """
        key = check_idempotency_key(idempotency_key)
        raw = self._jobs.read_job(project_id, job_id)
        status = str(raw.get("current_status") or "")
        if status not in TERMINAL_STATUSES:
            raise ConflictError(
                f"the training job is {short_status(status) or 'in an unknown state'}; "
                "only a job that has ended can be resumed (stop it first)"
            )
        checkpoints = self._client.list_checkpoints(project_id, job_id)
        if request.checkpoint_id is not None:
            if not any(item.get("checkpoint_id") == request.checkpoint_id for item in checkpoints):
                raise NotFoundError(CHECKPOINT_NOT_FOUND)
            checkpoint_id: str | None = request.checkpoint_id
        else:
            checkpoint_id = newest_checkpoint(checkpoints)
            if checkpoint_id is None:
                raise ConflictError("the training job has no checkpoint to resume from")
        config = self._config(project_id, job_id)
        return self._start(raw, project_id, config, checkpoint_id, request, key=key, attempt=None)

    def retry(
        self,
        raw: dict[str, Any],
        config: dict[str, Any],
        *,
        attempt: int,
        checkpoints: list[dict[str, Any]] | None = None,
    ) -> Job:
        """Start a failed job again: from its newest checkpoint, or from the start.

        Idempotent per failed job (its key derives from the job's id).
        ``checkpoints``: the job's, when the caller has just read them (else one read).
        """
        project_id = str(raw.get("training_project_id") or "")
        job_id = str(raw["id"])
        if checkpoints is None:
            checkpoints = self._client.list_checkpoints(project_id, job_id)
        checkpoint_id = newest_checkpoint(checkpoints)
        return self._start(
            raw,
            project_id,
            config,
            checkpoint_id,
            ResumeRequest(),
            key=retry_key(job_id),
            attempt=attempt,
            internal=True,
        )

    def _config(self, project_id: str, job_id: str) -> dict[str, Any]:
        config = self._configs.read(project_id, job_id)
        if config is None:
            raise ConflictError(
                "the training job's request cannot be read back (it was not submitted "
                "through this service), so it cannot be resumed"
            )
        return config

    def _start(
        self,
        raw: dict[str, Any],
        project_id: str,
        config: dict[str, Any],
        checkpoint_id: str | None,
        overrides: ResumeRequest,
        *,
        key: str | None,
        attempt: int | None,
        internal: bool = False,
    ) -> Job:
        job_id = str(raw["id"])
        body: dict[str, Any] = {name: config.get(name) for name in CARRIED}
        body = {name: value for name, value in body.items() if value is not None}
        # The job's own data: the File id or gs:// object it named, checked and
        # signed afresh (a File deleted since is refused like on submit).
        for field in ("training_file", "validation_file"):
            handed = config.get(field)
            if isinstance(handed, dict) and isinstance(handed.get("source"), str):
                body[field] = handed["source"]
        project = raw.get("training_project")
        project_name = project.get("name") if isinstance(project, dict) else None
        body["project_name"] = project_name or config.get("project_name")
        own_name, _ = split_job_name(config.get("job_name"))
        body["job_name"] = overrides.job_name or own_name
        if overrides.hyperparameters is not None:
            given = overrides.hyperparameters.model_dump(
                include=overrides.hyperparameters.model_fields_set
            )
            body["hyperparameters"] = {**(body.get("hyperparameters") or {}), **given}
        if overrides.compute is not None:
            given = overrides.compute.model_dump(include=overrides.compute.model_fields_set)
            body["compute"] = {**(body.get("compute") or {}), **given}
        # The merged request passes every rule of a submit (guards may have moved since).
        request = parse_training_request(body, self._settings)
        resumed_from = ResumedFrom(
            training_project_id=project_id, training_job_id=job_id, checkpoint_id=checkpoint_id
        )
        extra = {"resume_from": resumed_from.model_dump(), "attempt": attempt}
        job = self._jobs.start(
            request,
            idempotency_key=None if internal else key,
            internal_key=key if internal else None,
            extra_config=extra,
            resumed_from=resumed_from,
        )
        log(
            _logger,
            20,
            "training job resumed",
            training_project_id=job.training_project_id,
            training_job_id=job.training_job_id,
            resumed_job_id=job_id,
            checkpoint_id=checkpoint_id,
            attempt=attempt,
            idempotent_replay=job.idempotent_replay,
        )
        return job


__all__ = ["ResumeService", "newest_checkpoint", "retry_key"]
