"""Which Baseten jobs, models and deployments callers may act on: in one place.

Every service that takes a caller's ``project_id``/``job_id`` (read, stop,
checkpoints, logs, metrics, deploy) reads the job through :class:`JobScope`,
so a job outside ``PROJECT_NAME_PREFIX`` answers exactly as an unknown one
everywhere; the poll asks :meth:`JobScope.allows` of every job it sees, so it
reports (and downloads) nothing the routes would not show.

Deployments this service creates carry its marker (their Baseten name,
``ft.<project_id>.<job_id>.<checkpoint_id>``, see :func:`parse_marker`):
``deactivate`` acts only on those, and under a prefix a deploy goes only into a
model whose name starts with the prefix, a new model, or one that holds
nothing but this service's deployments (:meth:`JobScope.check_model`).
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from finetune_api.core.errors import InvalidRequestError, NotFoundError

MARKER_PREFIX = "ft."
_MARKER = re.compile(
    r"^ft\.(?P<project>[A-Za-z0-9_-]{1,64})\.(?P<job>[A-Za-z0-9_-]{1,64})"
    r"\.(?P<checkpoint>[A-Za-z0-9_.-]{1,120})\Z"
)


def parse_marker(name: Any) -> tuple[str, str, str] | None:
    """``(project_id, job_id, checkpoint_id)`` of a deployment this service created."""
    match = _MARKER.match(name) if isinstance(name, str) else None
    return (match["project"], match["job"], match["checkpoint"]) if match else None


class JobReader(Protocol):
    def get_job(self, project_id: str, job_id: str) -> dict[str, Any]: ...


class ModelReader(Protocol):
    def list_models(self, name: str | None = None) -> list[dict[str, Any]]: ...
    def list_deployments(self, model_id: str, name: str | None = None) -> list[dict[str, Any]]: ...


class JobScope:
    """The prefix check over Baseten's job read. Stateless, so thread-safe."""

    def __init__(self, prefix: str | None, client: JobReader) -> None:
        self._prefix = prefix
        self._client = client

    @property
    def limited(self) -> bool:
        return self._prefix is not None

    @property
    def prefix(self) -> str | None:
        return self._prefix

    def allows_project_name(self, name: Any) -> bool:
        """Whether a project of this name is inside the scope (unknown names are not)."""
        if self._prefix is None:
            return True
        return isinstance(name, str) and name.startswith(self._prefix)

    def check_model(
        self, model_name: str, models: ModelReader, *, location: str = "model_name"
    ) -> None:
        """Under a prefix: refuse (400) a deploy into a model this service did not create.

        A model whose name starts with the prefix, or that does not exist yet (the
        deploy creates it), is in scope; an existing one only when each of its
        deployments carries this service's marker and is of a job inside the
        scope (so a team never deploys into another team's model). Costs nothing
        without a prefix or for a prefixed name, else 1 models read + 1
        deployments read per same-named model + 1 job read per deployment.
        """
        if self._prefix is None or model_name.startswith(self._prefix):
            return
        for model in models.list_models(model_name):
            if model.get("name") != model_name:
                continue
            deployments = models.list_deployments(str(model.get("id") or ""))
            if not deployments or not all(self._ours(d.get("name")) for d in deployments):
                reason = (
                    "names a model this service did not create; use a name starting with "
                    f"{self._prefix} (PROJECT_NAME_PREFIX)"
                )
                raise InvalidRequestError(
                    f"model_name {reason}",
                    details=[{"location": location, "reason": reason}],
                )

    def _ours(self, name: Any) -> bool:
        """A deployment of a job inside this scope (so not another team's): one job read."""
        marker = parse_marker(name)
        if marker is None:
            return False
        try:
            self.read_job(marker[0], marker[1])
        except NotFoundError:
            return False
        return True

    def allows(self, raw_job: dict[str, Any]) -> bool:
        """Whether PROJECT_NAME_PREFIX (when set) lets callers see this Baseten job."""
        if self._prefix is None:
            return True
        project = raw_job.get("training_project")
        name = project.get("name") if isinstance(project, dict) else None
        # A job whose project name Baseten did not give is not shown (fail closed).
        return self.allows_project_name(name)

    def read_job(self, project_id: str, job_id: str) -> dict[str, Any]:
        """Baseten's job, or not_found when PROJECT_NAME_PREFIX hides it.

        A hidden job answers exactly as an unknown one, so its existence is not revealed.
        """
        raw = self._client.get_job(project_id, job_id)
        if not self.allows(raw):
            raise NotFoundError("training job not found on Baseten")
        return raw


__all__ = ["MARKER_PREFIX", "JobScope", "parse_marker"]
