"""Which Baseten jobs callers may act on: ``PROJECT_NAME_PREFIX``, in one place.

Every service that takes a caller's ``project_id``/``job_id`` (read, stop,
checkpoints, logs, metrics, deploy) reads the job through :class:`JobScope`,
so a job outside the prefix answers exactly as an unknown one everywhere.
"""

from __future__ import annotations

from typing import Any, Protocol

from finetune_api.core.errors import NotFoundError


class JobReader(Protocol):
    def get_job(self, project_id: str, job_id: str) -> dict[str, Any]: ...


class JobScope:
    """The prefix check over Baseten's job read. Stateless, so thread-safe."""

    def __init__(self, prefix: str | None, client: JobReader) -> None:
        self._prefix = prefix
        self._client = client

    @property
    def limited(self) -> bool:
        return self._prefix is not None

    def allows(self, raw_job: dict[str, Any]) -> bool:
        """Whether PROJECT_NAME_PREFIX (when set) lets callers see this Baseten job."""
        if self._prefix is None:
            return True
        project = raw_job.get("training_project")
        name = project.get("name") if isinstance(project, dict) else None
        # A job whose project name Baseten did not give is not shown (fail closed).
        return isinstance(name, str) and name.startswith(self._prefix)

    def read_job(self, project_id: str, job_id: str) -> dict[str, Any]:
        """Baseten's job, or not_found when PROJECT_NAME_PREFIX hides it.

        A hidden job answers exactly as an unknown one, so its existence is not revealed.
        """
        raw = self._client.get_job(project_id, job_id)
        if not self.allows(raw):
            raise NotFoundError("training job not found on Baseten")
        return raw


__all__ = ["JobScope"]
