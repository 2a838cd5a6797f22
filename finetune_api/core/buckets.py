"""Small objects in a bucket (or a local folder), written with preconditions.

The one home of what the files' store, the job index, the poll state and the
poll's retry claims share: the Cloud Storage client (built lazily, off the cold
start, see :mod:`.cloud_storage`), a short overall deadline on every call, and
the mapping of the client's failures onto four outcomes:

- :class:`ObjectMissing` (404), :class:`ObjectForbidden` (403),
- :class:`PreconditionFailed` (412: the object exists already, or changed since
  it was read),
- :class:`BucketUnavailable` (anything else: an outage; nothing was decided).

Writes carry a precondition: ``token=None`` creates only (``ifGenerationMatch=0``;
on disk an exclusive link), a token (the generation a read returned) replaces
only that version. :class:`Folder` keeps the same names on a local disk, for
``make run`` and tests without a bucket; its replace holds a lock file, so two
processes on one machine behave as two instances on one bucket.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

from finetune_api.core.cloud_storage import describe, storage_client

#: The token of an object that does not exist (Cloud Storage's ``ifGenerationMatch=0``).
ABSENT = "0"


class BucketError(Exception):
    """A store call failed; the message is safe to log (no URL, no credential)."""


class BucketUnavailable(BucketError):
    """The store failed (outage, timeout): retry later; nothing was decided."""


class ObjectMissing(BucketError):
    """The named object does not exist (or has no bytes yet)."""


class ObjectForbidden(BucketError):
    """The service's identity may not read the named object."""


class PreconditionFailed(BucketError):
    """The object exists already (create-only), or changed since it was read."""


class BucketOptions(TypedDict, total=False):
    """``Bucket``'s client settings, for a class that builds its Bucket from them."""

    emulator_host: str | None
    project: str | None
    deadline_seconds: float


class Bucket:
    """One Cloud Storage bucket through the real ``google-cloud-storage`` client. Thread-safe."""

    def __init__(
        self,
        bucket: str,
        *,
        emulator_host: str | None = None,
        project: str | None = None,
        deadline_seconds: float = 30.0,
    ) -> None:
        self.bucket_name = bucket
        self.description = f"gs://{bucket}"
        self.emulator_host = emulator_host
        self._project = project
        self.deadline = deadline_seconds
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = storage_client(self.emulator_host, self._project)
            return self._client

    def bucket(self, name: str | None = None) -> Any:
        return self.client().bucket(name or self.bucket_name)

    def blob(self, name: str, **options: Any) -> Any:
        return self.bucket().blob(name, **options)

    def retry(self) -> Any:
        """The client's retry policy, bounded by this store's deadline (not two minutes)."""
        from google.cloud.storage.retry import DEFAULT_RETRY

        return DEFAULT_RETRY.with_timeout(self.deadline)

    @contextlib.contextmanager
    def calls(self) -> Iterator[None]:
        """Map the client's failures onto this module's four outcomes."""
        from google.api_core import exceptions

        try:
            yield
        except exceptions.NotFound:
            raise ObjectMissing("not found") from None
        except exceptions.Forbidden:
            raise ObjectForbidden("forbidden") from None
        except exceptions.PreconditionFailed:
            raise PreconditionFailed("changed") from None
        except BucketError:
            raise
        except Exception as error:  # noqa: BLE001 - anything else is an outage
            raise BucketUnavailable(describe(error)) from None

    def read(self, name: str, *, checksum: str | None = "auto") -> tuple[bytes, str] | None:
        """The object's bytes and generation (the token a conditional write needs), or None."""
        blob = self.blob(name)
        try:
            with self.calls():
                data: bytes = blob.download_as_bytes(
                    timeout=self.deadline, retry=self.retry(), checksum=checksum
                )
        except ObjectMissing:
            return None
        return data, str(blob.generation)

    def write(
        self,
        name: str,
        data: bytes,
        token: str | None,
        *,
        content_type: str = "application/json",
    ) -> str:
        """Write over the generation ``token`` names (None: only if absent); the new generation."""
        blob = self.blob(name)
        with self.calls():
            blob.upload_from_string(
                data,
                content_type=content_type,
                if_generation_match=0 if token is None else int(token),
                timeout=self.deadline,
                retry=self.retry(),
            )
        return str(blob.generation)

    def create(self, name: str, data: bytes) -> str:
        return self.write(name, data, None)

    def replace(self, name: str, data: bytes, token: str) -> str:
        return self.write(name, data, token)

    def delete(self, name: str) -> None:
        with contextlib.suppress(ObjectMissing), self.calls():
            self.blob(name).delete(timeout=self.deadline, retry=self.retry())

    def names(
        self, prefix: str, start_after: str | None, count: int, *, inclusive: bool = False
    ) -> list[str]:
        """Up to ``count`` names under ``prefix`` (without it), in name order, after
        ``start_after`` (from it, when ``inclusive``). One listing request."""
        start = None
        if start_after:
            start = f"{prefix}{start_after}" + ("" if inclusive else "\x00")
        with self.calls():
            blobs = self.client().list_blobs(
                self.bucket_name,
                prefix=prefix,
                start_offset=start,
                max_results=count,
                timeout=self.deadline,
                retry=self.retry(),
            )
            return [blob.name[len(prefix) :] for blob in blobs]


class Folder:
    """The same objects under a local folder. Thread- and process-safe.

    The token of a file is its identity (inode, modification time, size): every
    write makes a new file and renames or links it into place, so any write
    changes the token.
    """

    def __init__(self, root: Path, *, lock_name: str = ".replace.lock") -> None:
        self.root = Path(root)
        self.description = str(root)
        self._lock_name = lock_name
        self._lock = threading.Lock()

    @staticmethod
    def _token(path: Path) -> str:
        info = path.stat()
        return f"{info.st_ino}-{info.st_mtime_ns}-{info.st_size}"

    def read(self, name: str, *, limit: int | None = None) -> tuple[bytes, str] | None:
        """The bytes (at most ``limit``) and the token of the very file they came from."""
        path = self.root / name
        try:
            with path.open("rb") as handle:
                info = os.fstat(handle.fileno())
                token = f"{info.st_ino}-{info.st_mtime_ns}-{info.st_size}"
                return handle.read(-1 if limit is None else limit), token
        except FileNotFoundError:
            return None
        except OSError as error:
            raise BucketUnavailable(error.strerror or "cannot read") from None

    def _aside(self, path: Path, data: bytes) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".object-")
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        return temporary

    def create(self, name: str, data: bytes) -> str:
        """Create-only and atomic: written aside, then linked in (fails if it exists)."""
        path = self.root / name
        temporary = None
        try:
            temporary = self._aside(path, data)
            os.link(temporary, path)
            return self._token(path)
        except FileExistsError:
            raise PreconditionFailed(name) from None
        except OSError as error:
            raise BucketUnavailable(error.strerror or "cannot write") from None
        finally:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This process's threads and other processes, one replace at a time."""
        with self._lock:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                lock = open(self.root / self._lock_name, "a+b")  # noqa: SIM115
            except OSError as error:
                raise BucketUnavailable(error.strerror or "cannot lock") from None
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield
            finally:
                lock.close()  # releases the lock

    def write(self, name: str, data: bytes, token: str | None) -> str:
        return self.create(name, data) if token is None else self.replace(name, data, token)

    def replace(self, name: str, data: bytes, token: str) -> str:
        path = self.root / name
        with self._locked():
            try:
                if self._token(path) != token:
                    raise PreconditionFailed(name)
            except FileNotFoundError:
                raise PreconditionFailed(name) from None
            try:
                temporary = self._aside(path, data)
                os.replace(temporary, path)
                return self._token(path)
            except OSError as error:
                raise BucketUnavailable(error.strerror or "cannot write") from None

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / name).unlink()

    def names(
        self, prefix: str, start_after: str | None, count: int, *, inclusive: bool = False
    ) -> list[str]:
        folder = self.root / prefix
        try:
            found = sorted(e.name for e in os.scandir(folder) if not e.name.startswith("."))
        except FileNotFoundError:
            return []
        if start_after is not None:
            found = [n for n in found if n >= start_after if inclusive or n != start_after]
        return found[:count]


__all__ = [
    "ABSENT",
    "Bucket",
    "BucketError",
    "BucketUnavailable",
    "Folder",
    "ObjectForbidden",
    "ObjectMissing",
    "PreconditionFailed",
]
