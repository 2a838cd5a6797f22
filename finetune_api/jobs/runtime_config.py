"""Reading a job's own request back: its ``runtime_config.json``, through Baseten.

Every job this service submits carries the request it was made from as the
staged template's ``runtime_config.json`` (see :mod:`.staging`). Baseten hands
back the archives a job was pushed with (``GET …/download``: presigned URLs),
so the request can be read again from any instance, after any cold start,
with no database: one Baseten call plus one storage download per job. The
archive is read in memory, never written to disk.

Used by deploy-on-completion (``serving.watch``), by resume (:mod:`.resume`)
and by the poll's retry on failure (``polling.retry``).
"""

from __future__ import annotations

import io
import json
import tarfile
import threading
from collections import OrderedDict
from typing import Any, Protocol

RUNTIME_CONFIG = "runtime_config.json"
MAX_ARCHIVE_BYTES = 64 * 1024 * 1024
MAX_CONFIG_BYTES = 1024 * 1024
_MEMORY = 4096


class ArtifactReads(Protocol):
    def job_artifact_urls(self, project_id: str, job_id: str) -> list[str]: ...
    def fetch_artifact(self, url: str, max_bytes: int) -> bytes: ...


def runtime_config_from_archive(data: bytes) -> dict[str, Any] | None:
    """``runtime_config.json`` of a pushed template archive (a tar, compressed or not)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            members = [
                m
                for m in archive.getmembers()
                if m.isfile() and m.name.rsplit("/", 1)[-1] == RUNTIME_CONFIG
            ]
            if not members:
                return None
            member = min(members, key=lambda m: m.name.count("/"))
            if member.size > MAX_CONFIG_BYTES:
                return None
            handle = archive.extractfile(member)
            if handle is None:
                return None
            config = json.loads(handle.read().decode("utf-8"))
    except (tarfile.TarError, ValueError, UnicodeDecodeError, OSError):
        return None
    return config if isinstance(config, dict) else None


class RuntimeConfigs:
    """A job's ``runtime_config.json`` (None when it has none: not pushed by this service).

    A pushed archive never changes, so answers are remembered (the newest
    4096 jobs per instance); a Baseten failure raises and is not remembered.
    Thread-safe.
    """

    def __init__(self, client: ArtifactReads) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._known: OrderedDict[str, dict[str, Any] | None] = OrderedDict()

    def read(self, project_id: str, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            if job_id in self._known:
                self._known.move_to_end(job_id)
                return self._known[job_id]
        config: dict[str, Any] | None = None
        for url in self._client.job_artifact_urls(project_id, job_id):
            config = runtime_config_from_archive(
                self._client.fetch_artifact(url, MAX_ARCHIVE_BYTES)
            )
            if config is not None:
                break
        with self._lock:
            self._known[job_id] = config
            while len(self._known) > _MEMORY:
                self._known.popitem(last=False)
        return config


__all__ = ["RuntimeConfigs", "runtime_config_from_archive"]
