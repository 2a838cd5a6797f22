"""Take the adapter home: one checkpoint's files as Baseten's presigned URLs, paged.

Baseten's ``getTrainingJobCheckpointFiles`` lists every checkpoint's files of a
job (``relative_file_name`` = ``<checkpoint_id>/<path>``), up to 1,000 a page,
paged by an offset. ``GET /jobs/{p}/{j}/checkpoints/{checkpoint_id}/files`` keeps
that checkpoint's files only and pages them with its own cursor.

Cost, in Baseten requests: 1 job read + 1 checkpoints read + one request per
1,000 of the job's checkpoint files (every checkpoint's; a LoRA checkpoint has a
handful, so usually 1), at most :data:`MAX_BASETEN_PAGES` (a longer list is a 502
rather than a silently short answer). Nothing is kept: presigned URLs expire.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from finetune_api.core.errors import InvalidRequestError, NotFoundError, UpstreamError
from finetune_api.core.query import bounded_int
from finetune_api.jobs.scope import JobScope

#: Baseten's largest page (its default) of checkpoint files.
BASETEN_PAGE_SIZE = 1000
#: Baseten pages read for one answer: 50,000 files of a job's checkpoints in all.
MAX_BASETEN_PAGES = 50
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
PARAMETERS = ("limit", "cursor")
#: The fixed answer for a checkpoint the job does not have (the id is never echoed).
CHECKPOINT_NOT_FOUND = "checkpoint not found"


class FileReads(Protocol):
    def get_job(self, project_id: str, job_id: str) -> dict[str, Any]: ...
    def list_checkpoints(self, project_id: str, job_id: str) -> list[dict[str, Any]]: ...
    def checkpoint_files(
        self, project_id: str, job_id: str, *, page_size: int = 1000, page_token: int = 0
    ) -> tuple[list[dict[str, Any]], int | None]: ...


class CheckpointFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    relative_file_name: str = Field(description="<checkpoint_id>/<path inside the checkpoint>")
    size_bytes: int | None
    last_modified: str | None
    url: str = Field(description="Baseten's presigned download URL (expires; no key needed)")


class CheckpointFilePage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: list[CheckpointFile]
    has_more: bool
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


def _tag(project_id: str, job_id: str, checkpoint_id: str) -> str:
    return hashlib.sha256(f"{project_id}/{job_id}/{checkpoint_id}".encode()).hexdigest()[:16]


def _bad_cursor(reason: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"cursor {reason}", details=[{"location": "query.cursor", "reason": reason}]
    )


def _encode_cursor(tag: str, offset: int) -> str:
    raw = json.dumps({"t": tag, "o": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(text: str, tag: str) -> int:
    if len(text) > 200:
        raise _bad_cursor("is not one this route made")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        raise _bad_cursor("is not one this route made") from None
    offset = value.get("o") if isinstance(value, dict) else None
    if type(offset) is not int or offset < 0 or not isinstance(value.get("t"), str):
        raise _bad_cursor("is not one this route made")
    if value["t"] != tag:
        raise _bad_cursor("belongs to another checkpoint's files")
    return offset


def _file(item: Mapping[str, Any]) -> dict[str, Any]:
    size = item.get("size_bytes")
    modified = item.get("last_modified")
    return {
        "relative_file_name": item["relative_file_name"],
        "size_bytes": size if type(size) is int else None,
        "last_modified": modified if isinstance(modified, str) else None,
        "url": item["url"],
    }


class CheckpointFiles:
    """A checkpoint's files, paged. Stateless and thread-safe."""

    def __init__(self, prefix: str | None, client: FileReads) -> None:
        self._client = client
        self._scope = JobScope(prefix, client)

    def page(
        self, project_id: str, job_id: str, checkpoint_id: str, query: Mapping[str, Any]
    ) -> dict[str, Any]:
        unknown = sorted(set(query) - set(PARAMETERS))
        if unknown:
            raise InvalidRequestError(
                "unknown query parameter(s): " + ", ".join(unknown),
                details=[
                    {"location": f"query.{name}", "reason": "not allowed"} for name in unknown
                ],
            )
        limit = bounded_int(
            query.get("limit") or None, "limit", 1, MAX_LIMIT, DEFAULT_LIMIT, location="query."
        )
        tag = _tag(project_id, job_id, checkpoint_id)
        cursor = query.get("cursor")
        offset = _decode_cursor(cursor, tag) if cursor else 0
        self._scope.read_job(project_id, job_id)  # 404 for a job unknown (or out of scope)
        known = {
            str(item.get("checkpoint_id") or item.get("id") or "")
            for item in self._client.list_checkpoints(project_id, job_id)
        }
        if checkpoint_id not in known:
            raise NotFoundError(CHECKPOINT_NOT_FOUND)
        files = self._files_of(project_id, job_id, checkpoint_id)
        chunk = files[offset : offset + limit]
        more = offset + limit < len(files)
        return {
            "data": chunk,
            "has_more": more,
            "next_cursor": _encode_cursor(tag, offset + limit) if more else None,
        }

    def _files_of(self, project_id: str, job_id: str, checkpoint_id: str) -> list[dict[str, Any]]:
        prefix = checkpoint_id + "/"
        found: list[dict[str, Any]] = []
        token: int | None = 0
        for _ in range(MAX_BASETEN_PAGES):
            assert token is not None
            items, token = self._client.checkpoint_files(
                project_id, job_id, page_size=BASETEN_PAGE_SIZE, page_token=token
            )
            for item in items:
                name = item.get("relative_file_name")
                if (
                    isinstance(name, str)
                    and name.startswith(prefix)
                    and isinstance(item.get("url"), str)
                ):
                    found.append(_file(item))
            if token is None or not items:
                break
        else:
            raise UpstreamError(
                f"the job's checkpoint files take more than {MAX_BASETEN_PAGES} Baseten pages"
            )
        found.sort(key=lambda item: item["relative_file_name"])
        return found


__all__ = ["CHECKPOINT_NOT_FOUND", "CheckpointFilePage", "CheckpointFiles"]
