"""``runtime.load_checkpoint_config`` of a create-job body: checked, resolved, recorded.

Baseten's spec (``LoadCheckpointConfig`` in ``spec/baseten-openapi.yaml``):
``{"enabled": bool = false, "download_folder": str = "/tmp/loaded_checkpoints",
"checkpoints": [BasetenLatestCheckpointConfig | BasetenNamedCheckpointConfig |
LoopsCheckpointConfig]}``, each entry told apart by ``typ``:

* ``baseten_latest_checkpoint``: ``job_id`` and/or ``project_name`` (the newest
  checkpoint of that job, or of the project's most recent job);
* ``baseten_named_checkpoint``: ``checkpoint_name`` and ``job_id`` (and
  optionally ``project_name``);
* ``loops_checkpoint``: ``run_id``, ``checkpoint_name``, ``target``.

The sandbox holds an enabled config to what exists: a job, project or
checkpoint that does not exist is a 400 ``VALIDATION_ERROR`` naming the entry
(``training_job.runtime.load_checkpoint_config.checkpoints[0]: checkpoint
'checkpoint-9' not found in training job 'abc1234'``), and nothing is created.
Baseten documents no error for this case; a 400 that names the field is what
its create operation answers for every other body it refuses (a guess, listed
in the README's fidelity notes). Loops runs do not exist in the sandbox: such
an entry is accepted and recorded unresolved.

What the job would load is recorded (``GET /_sandbox/jobs``, ``load_checkpoints``):
``{"enabled", "download_folder", "checkpoints": [{"typ", "training_project_id",
"training_job_id", "checkpoint_id", "path"}]}`` where ``path`` is where Baseten
puts it for node 0, ``<download_folder>/rank-0/<checkpoint_id>`` (the job sees
the folder as ``$BT_LOAD_CHECKPOINT_DIR``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox.errors import SandboxApiError

DEFAULT_DOWNLOAD_FOLDER = "/tmp/loaded_checkpoints"  # noqa: S108 - Baseten's default, not ours
LATEST = "baseten_latest_checkpoint"
NAMED = "baseten_named_checkpoint"
LOOPS = "loops_checkpoint"
_KEYS = frozenset({"enabled", "download_folder", "checkpoints"})
_ENTRY_KEYS = {
    LATEST: (frozenset(), frozenset({"typ", "job_id", "project_name"})),
    NAMED: (frozenset({"checkpoint_name"}), frozenset({"typ", "job_id", "project_name"})),
    LOOPS: (frozenset({"run_id", "checkpoint_name"}), frozenset({"typ", "target"})),
}


@dataclass(frozen=True)
class KnownJob:
    """What resolving needs of a sandbox job."""

    id: str
    project_id: str
    project_name: str
    checkpoint_ids: tuple[str, ...]  # oldest first


#: ``(job_id, project_name)`` → the job (None when there is no such job); with
#: ``job_id`` None, the project's most recent job.
JobLookup = Callable[[str | None, str | None], KnownJob | None]


def _fail(path: str, reason: str) -> SandboxApiError:
    return SandboxApiError(400, "VALIDATION_ERROR", f"{path}: {reason}")


def _optional_str(entry: dict[str, Any], key: str, path: str) -> str | None:
    value = entry.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise _fail(f"{path}.{key}", "expected a non-empty string or null")
    return value


def check_shape(value: Any, path: str) -> None:
    """Strict shape check (unknown keys and wrong types refused), before any lookup."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise _fail(path, "expected an object or null")
    unknown = sorted(value.keys() - _KEYS)
    if unknown:
        raise _fail(f"{path}.{unknown[0]}", "unknown field")
    if "enabled" in value and not isinstance(value["enabled"], bool):
        raise _fail(f"{path}.enabled", "expected a boolean")
    folder = value.get("download_folder", DEFAULT_DOWNLOAD_FOLDER)
    if not isinstance(folder, str) or not folder.startswith("/"):
        raise _fail(f"{path}.download_folder", "expected an absolute path")
    entries = value.get("checkpoints", [])
    if not isinstance(entries, list):
        raise _fail(f"{path}.checkpoints", "expected an array")
    for index, entry in enumerate(entries):
        item = f"{path}.checkpoints[{index}]"
        if not isinstance(entry, dict):
            raise _fail(item, "expected an object")
        typ = entry.get("typ")
        if typ not in _ENTRY_KEYS:
            raise _fail(f"{item}.typ", f"expected one of {sorted(_ENTRY_KEYS)}")
        required, optional = _ENTRY_KEYS[typ]
        missing = sorted(required - entry.keys())
        if missing:
            raise _fail(f"{item}.{missing[0]}", "field required")
        unknown = sorted(entry.keys() - required - optional)
        if unknown:
            raise _fail(f"{item}.{unknown[0]}", "unknown field")
        for key in sorted(optional - {"typ"}):
            _optional_str(entry, key, item)
        for key in sorted(required):
            if _optional_str(entry, key, item) is None:
                raise _fail(f"{item}.{key}", "expected a non-empty string")
        if typ == LOOPS and entry.get("target", "trainer") not in ("trainer", "sampler"):
            raise _fail(f"{item}.target", "expected 'trainer' or 'sampler'")
        if typ == LATEST and entry.get("job_id") is None and entry.get("project_name") is None:
            raise _fail(item, "job_id or project_name is required")
        if typ == NAMED and entry.get("job_id") is None:
            # truss requires it (from_named_checkpoint(checkpoint_name, job_id)).
            raise _fail(f"{item}.job_id", "field required")


def resolve(value: Any, path: str, lookup: JobLookup) -> dict[str, Any] | None:
    """What an enabled config would load; a missing job or checkpoint is a 400.

    ``value`` must have passed :func:`check_shape`. None when nothing is loaded.
    """
    if value is None or not value.get("enabled", False):
        return None
    folder = value.get("download_folder", DEFAULT_DOWNLOAD_FOLDER).rstrip("/")
    loads: list[dict[str, Any]] = []
    for index, entry in enumerate(value.get("checkpoints", [])):
        item = f"{path}.checkpoints[{index}]"
        typ = entry["typ"]
        if typ == LOOPS:
            loads.append({**entry, "resolved": False})
            continue
        job_id, project_name = entry.get("job_id"), entry.get("project_name")
        job = lookup(job_id, project_name)
        if job is None:
            if job_id is not None:
                where = f" in project {project_name!r}" if project_name else ""
                raise _fail(item, f"training job {job_id!r} not found{where}")
            raise _fail(item, f"training project {project_name!r} has no training job")
        if typ == NAMED:
            checkpoint_id = entry["checkpoint_name"]
            if checkpoint_id not in job.checkpoint_ids:
                raise _fail(
                    item, f"checkpoint {checkpoint_id!r} not found in training job {job.id!r}"
                )
        else:
            if not job.checkpoint_ids:
                raise _fail(item, f"training job {job.id!r} has no checkpoint")
            checkpoint_id = job.checkpoint_ids[-1]
        loads.append(
            {
                "typ": typ,
                "training_project_id": job.project_id,
                "training_job_id": job.id,
                "checkpoint_id": checkpoint_id,
                "path": f"{folder}/rank-0/{checkpoint_id}",
                "resolved": True,
            }
        )
    return {"enabled": True, "download_folder": folder or "/", "checkpoints": loads}


__all__ = ["KnownJob", "check_shape", "resolve"]
