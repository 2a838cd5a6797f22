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

import bz2
import gzip
import io
import json
import logging
import lzma
import tarfile
import threading
import time
from collections import OrderedDict
from typing import Any, Protocol

from finetune_api.core.logs import get_logger, log

_logger = get_logger("deployment_watch")

RUNTIME_CONFIG = "runtime_config.json"
MAX_ARCHIVE_BYTES = 64 * 1024 * 1024
MAX_CONFIG_BYTES = 1024 * 1024
#: Caps on reading one archive (a template is a few files of a few KB).
MAX_ARCHIVE_MEMBERS = 1000
MAX_ARCHIVE_UNPACKED_BYTES = 32 * 1024 * 1024
MAX_ARCHIVE_SECONDS = 2.0
_MEMORY = 4096


class ArtifactReads(Protocol):
    def job_artifact_urls(self, project_id: str, job_id: str) -> list[str]: ...
    def fetch_artifact(self, url: str, max_bytes: int) -> bytes: ...


class ArchiveUnreadable(Exception):
    """An archive that cannot be read, or not within the caps; the message is safe to log."""


class _Capped(io.RawIOBase):
    """The decompressed bytes of an archive, up to a byte cap and a deadline."""

    def __init__(self, raw: Any, limit: int, deadline: float) -> None:
        self._raw = raw
        self._limit = limit
        self._deadline = deadline
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if time.monotonic() > self._deadline:
            raise ArchiveUnreadable(f"reading it took longer than {MAX_ARCHIVE_SECONDS:g} s")
        data = self._raw.read(min(len(buffer), 1 << 16))
        self.total += len(data)
        if self.total > self._limit:
            raise ArchiveUnreadable(f"it unpacks to more than {self._limit} bytes")
        buffer[: len(data)] = data
        return len(data)


def _decompressed(data: bytes) -> Any:
    """A reader of ``data``'s tar stream: gzip, bz2 or xz undone as it is read."""
    source = io.BytesIO(data)
    if data[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=source, mode="rb")
    if data[:3] == b"BZh":
        return bz2.BZ2File(source, mode="rb")
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(source, mode="rb")
    return source


def read_runtime_config(data: bytes) -> dict[str, Any] | None:
    """``runtime_config.json`` of a pushed template archive (a tar, compressed or not).

    Any user of the Baseten workspace can push an archive, so it is read as a
    stream, once, within :data:`MAX_ARCHIVE_MEMBERS` members,
    :data:`MAX_ARCHIVE_UNPACKED_BYTES` decompressed bytes and
    :data:`MAX_ARCHIVE_SECONDS`; nothing is written to disk. The shallowest
    ``runtime_config.json`` wins. Raises :class:`ArchiveUnreadable` (truncated,
    corrupt, or over a cap); None when the archive holds no usable config.
    """
    deadline = time.monotonic() + MAX_ARCHIVE_SECONDS
    best: bytes | None = None
    best_depth = -1
    try:
        stream = _Capped(_decompressed(data), MAX_ARCHIVE_UNPACKED_BYTES, deadline)
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for count, member in enumerate(archive, start=1):
                if count > MAX_ARCHIVE_MEMBERS:
                    raise ArchiveUnreadable(f"it holds more than {MAX_ARCHIVE_MEMBERS} members")
                if member.offset_data + member.size > MAX_ARCHIVE_UNPACKED_BYTES:
                    raise ArchiveUnreadable(
                        f"it unpacks to more than {MAX_ARCHIVE_UNPACKED_BYTES} bytes"
                    )
                if not member.isfile() or member.name.rsplit("/", 1)[-1] != RUNTIME_CONFIG:
                    continue
                depth = member.name.count("/")
                if member.size > MAX_CONFIG_BYTES or (best is not None and depth >= best_depth):
                    continue
                handle = archive.extractfile(member)
                if handle is not None:
                    best, best_depth = handle.read(), depth
    except ArchiveUnreadable:
        raise
    except Exception as error:  # noqa: BLE001 - truncated, corrupt: all the archive's fault
        raise ArchiveUnreadable(f"it cannot be read ({type(error).__name__})") from None
    if best is None:
        return None
    try:
        config = json.loads(best.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return config if isinstance(config, dict) else None


def runtime_config_from_archive(data: bytes) -> dict[str, Any] | None:
    """:func:`read_runtime_config`, where an unreadable archive is None, logged."""
    try:
        return read_runtime_config(data)
    except ArchiveUnreadable as problem:
        log(
            _logger,
            logging.WARNING,
            "a job's archive is unreadable; taken as holding no deploy request",
            reason=str(problem),
        )
        return None


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


__all__ = [
    "MAX_ARCHIVE_MEMBERS",
    "ArchiveUnreadable",
    "RuntimeConfigs",
    "read_runtime_config",
    "runtime_config_from_archive",
]
