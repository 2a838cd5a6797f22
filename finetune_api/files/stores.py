"""Where files live: a Cloud Storage bucket (``FILES_BUCKET``) or a local folder (the default).

Both stores keep the same two things per File, under the same names:

- ``files/meta/<id>.json``: the File record (small JSON), written with a
  precondition on the version read, so two instances never overwrite each other;
- ``files/data/<id>.jsonl``: the bytes, exactly as uploaded.

File ids sort newest first (see :func:`new_file_id`), so listing the ``meta/``
prefix in name order *is* the newest-first list, and ``after`` is a start offset:
a page costs ``limit`` reads whatever the history. Two uploads of the same bytes
are two Files with two copies (nothing is shared: deleting one never touches
the other).

The stores also read ``gs://`` objects that callers name (with the service's own
identity) and hand the training job a short-lived read URL for the exact bytes
that were checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO, Protocol, Unpack

from finetune_api.core.buckets import (
    Bucket,
    BucketOptions,
    BucketUnavailable,
    PreconditionFailed,
)
from finetune_api.core.buckets import ObjectForbidden as ObjectForbidden
from finetune_api.core.buckets import ObjectMissing as ObjectMissing

META = "files/meta/"
DATA = "files/data/"
CHECKS = "files/checks/"
UPLOADS = "files/uploads/"  # <upload id>.json (the Upload record) and <upload id>/<part id>
COMPOSE_MAX = 32  # Cloud Storage composes at most 32 sources per call
# Storage calls an Upload's complete makes at once (part sizes, composes, deletes).
PARALLEL_CALLS = 32
CHUNK = 8 * 1024 * 1024
_ID_SPAN = 2**48  # milliseconds: until the year 10889


#: The store failed (outage, timeout): retry later; nothing was decided.
StorageUnavailable = BucketUnavailable
#: Someone else changed the record since it was read (or it exists already).
Conflict = PreconditionFailed


def new_file_id(now_ms: int | None = None) -> str:
    """``file-`` + 12 hex of (2**48 - now in ms) + 12 random hex: newer ids sort first."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return f"file-{_ID_SPAN - now:012x}{secrets.token_hex(6)}"


def is_file_id(value: str) -> bool:
    rest = value[5:]
    return (
        value.startswith("file-") and len(rest) == 24 and all(c in "0123456789abcdef" for c in rest)
    )


Sink = Callable[[bytes], None]


class FileStore(Protocol):
    description: str

    def read_meta(self, file_id: str) -> tuple[dict[str, Any], str] | None: ...
    def write_meta(self, record: dict[str, Any], token: str | None) -> str: ...
    def list_meta(self, after: str | None, limit: int) -> list[dict[str, Any]]: ...
    def delete(self, file_id: str) -> None: ...
    def write_data(self, file_id: str, source: BinaryIO, *, replace: bool = True) -> None: ...
    def data_size(self, file_id: str) -> int | None: ...
    def stream_data(self, file_id: str, sink: Sink) -> None: ...
    def upload_session(self, file_id: str, size: int) -> str | None: ...
    def data_url(self, file_id: str, ttl_seconds: int) -> str: ...
    def object_generation(self, bucket: str, name: str) -> tuple[str, int]: ...
    def stream_object(self, bucket: str, name: str, generation: str, sink: Sink) -> None: ...
    def object_url(self, bucket: str, name: str, generation: str, ttl_seconds: int) -> str: ...
    def read_check(self, key: str) -> dict[str, Any] | None: ...
    def write_check(self, key: str, record: dict[str, Any]) -> None: ...
    # The Uploads API (``/v1/uploads``): parts kept as they arrive, joined on complete.
    def read_upload(self, upload_id: str) -> tuple[dict[str, Any], str] | None: ...
    def write_upload(self, record: dict[str, Any], token: str | None) -> str: ...
    def write_part(self, upload_id: str, part_id: str, source: BinaryIO) -> int: ...
    def part_sizes(self, upload_id: str, part_ids: list[str]) -> list[int | None]: ...
    def join_parts(self, upload_id: str, part_ids: list[str], file_id: str) -> None: ...
    def delete_parts(self, upload_id: str) -> None: ...
    def delete_part(self, upload_id: str, part_id: str) -> None: ...
    def parts_stored(self, upload_id: str) -> tuple[int, int]: ...


# --------------------------------------------------------------------------- local


class LocalFileStore:
    """A folder on this machine (``FILES_DIR``, default ``~/.cache/finetune-api/files``).

    For ``make run`` and tests without a bucket. Its large-file path is the
    service's own ``PUT /files/{id}/content`` (streamed to disk, never held), and
    the job reads ``file://`` paths: this store only makes sense when the
    training job runs on the same machine (the sandbox). ``gs://`` objects need a
    bucket-backed service and are refused here with a clear message.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)
        self._lock = threading.Lock()

    def _meta(self, file_id: str) -> Path:
        return self.root / META / f"{file_id}.json"

    def _data(self, file_id: str) -> Path:
        return self.root / DATA / f"{file_id}.jsonl"

    def _read_record(self, path: Path) -> tuple[dict[str, Any], str] | None:
        """A small JSON record and its version (the token a conditional write needs)."""
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except OSError as error:
            raise StorageUnavailable(error.strerror or "cannot read") from None
        return record, str(record.get("_version", 0))

    def _write_record(self, path: Path, record: dict[str, Any], token: str | None) -> str:
        """Write ``record`` only over the version ``token`` names (None: only if absent)."""
        with self._lock:
            current = self._read_record(path)
            if (current is None) != (token is None) or (
                current is not None and current[1] != token
            ):
                raise Conflict(record["id"])
            version = 1 if current is None else int(current[1]) + 1
            _atomic_write(path, json.dumps({**record, "_version": version}).encode())
        return str(version)

    def read_meta(self, file_id: str) -> tuple[dict[str, Any], str] | None:
        return self._read_record(self._meta(file_id))

    def write_meta(self, record: dict[str, Any], token: str | None) -> str:
        return self._write_record(self._meta(record["id"]), record, token)

    def list_meta(self, after: str | None, limit: int) -> list[dict[str, Any]]:
        folder = self.root / META
        try:
            names = sorted(e.name for e in os.scandir(folder) if e.name.endswith(".json"))
        except FileNotFoundError:
            return []
        ids = [name[: -len(".json")] for name in names]
        if after is not None:
            ids = [file_id for file_id in ids if file_id > after]
        records = []
        for file_id in ids:
            found = self.read_meta(file_id)
            if found is not None:
                records.append(found[0])
            if len(records) == limit:
                break
        return records

    def delete(self, file_id: str) -> None:
        for path in (self._data(file_id), self._meta(file_id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def write_data(self, file_id: str, source: BinaryIO, *, replace: bool = True) -> None:
        """Stream to a temporary file, then move it in place (``replace=False``: only
        if no bytes are there yet, else ``FileExistsError``: the first upload stays)."""
        path = self._data(file_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(handle, "wb") as out:
                while chunk := source.read(CHUNK):
                    out.write(chunk)
            if replace:
                os.replace(temporary, path)
            else:
                os.link(temporary, path)  # atomic, and refuses an existing name
                os.unlink(temporary)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def data_size(self, file_id: str) -> int | None:
        try:
            return self._data(file_id).stat().st_size
        except FileNotFoundError:
            return None

    def stream_data(self, file_id: str, sink: Sink) -> None:
        try:
            with self._data(file_id).open("rb") as source:
                while chunk := source.read(CHUNK):
                    sink(chunk)
        except FileNotFoundError:
            raise ObjectMissing(file_id) from None

    def upload_session(self, file_id: str, size: int) -> str | None:
        return None  # the route answers with its own PUT /files/{id}/content

    def data_url(self, file_id: str, ttl_seconds: int) -> str:
        return self._data(file_id).resolve().as_uri()

    def _no_buckets(self) -> StorageUnavailable:
        return StorageUnavailable("gs:// objects need FILES_BUCKET (Cloud Storage)")

    def object_generation(self, bucket: str, name: str) -> tuple[str, int]:
        raise ObjectForbidden("gs:// objects are read only when FILES_BUCKET is set")

    def stream_object(self, bucket: str, name: str, generation: str, sink: Sink) -> None:
        raise self._no_buckets()

    def object_url(self, bucket: str, name: str, generation: str, ttl_seconds: int) -> str:
        raise self._no_buckets()

    def read_check(self, key: str) -> dict[str, Any] | None:
        return None

    def write_check(self, key: str, record: dict[str, Any]) -> None:
        return None

    # -- uploads (the Uploads API) -------------------------------------------------

    def _upload(self, upload_id: str) -> Path:
        return self.root / UPLOADS / f"{upload_id}.json"

    def _part(self, upload_id: str, part_id: str) -> Path:
        return self.root / UPLOADS / upload_id / part_id

    def read_upload(self, upload_id: str) -> tuple[dict[str, Any], str] | None:
        return self._read_record(self._upload(upload_id))

    def write_upload(self, record: dict[str, Any], token: str | None) -> str:
        return self._write_record(self._upload(record["id"]), record, token)

    def write_part(self, upload_id: str, part_id: str, source: BinaryIO) -> int:
        path = self._part(upload_id, part_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        size = 0
        with path.open("wb") as out:
            while chunk := source.read(CHUNK):
                out.write(chunk)
                size += len(chunk)
        return size

    def part_sizes(self, upload_id: str, part_ids: list[str]) -> list[int | None]:
        sizes: list[int | None] = []
        for part_id in part_ids:
            try:
                sizes.append(self._part(upload_id, part_id).stat().st_size)
            except FileNotFoundError:
                sizes.append(None)
        return sizes

    def join_parts(self, upload_id: str, part_ids: list[str], file_id: str) -> None:
        """No compose on a disk: the parts are concatenated, in order, into the File's data."""
        path = self._data(file_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".join-")
        try:
            with os.fdopen(handle, "wb") as out:
                for part_id in part_ids:
                    with self._part(upload_id, part_id).open("rb") as source:
                        while chunk := source.read(CHUNK):
                            out.write(chunk)
            os.replace(temporary, path)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise ObjectMissing("part") from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def delete_part(self, upload_id: str, part_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._part(upload_id, part_id).unlink()

    def parts_stored(self, upload_id: str) -> tuple[int, int]:
        """How many parts an Upload holds now, and their bytes."""
        count = total = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root / UPLOADS / upload_id):
                with contextlib.suppress(FileNotFoundError):
                    total += entry.stat().st_size
                    count += 1
        return count, total

    def delete_parts(self, upload_id: str) -> None:
        folder = self.root / UPLOADS / upload_id
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(folder):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            folder.rmdir()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".meta-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# --------------------------------------------------------------------------- Cloud Storage


class _SinkWriter:
    """A write-only file object that hands every chunk the client downloads to ``sink``."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def write(self, data: bytes) -> int:
        self._sink(bytes(data))
        return len(data)

    def flush(self) -> None:
        return None


class GcsFileStore:
    """The bucket ``FILES_BUCKET``, through the real ``google-cloud-storage`` client."""

    def __init__(self, bucket: str, **options: Unpack[BucketOptions]) -> None:
        """``options``: the client settings of core.buckets.Bucket, which holds them."""
        self._objects = Bucket(bucket, **options)
        self.bucket_name = self._objects.bucket_name
        self.description = self._objects.description
        self._emulator_host = self._objects.emulator_host
        self._deadline = self._objects.deadline

    def _storage(self) -> Any:
        return self._objects.client()

    def _bucket(self, name: str | None = None) -> Any:
        return self._objects.bucket(name)

    def _retry(self) -> Any:
        return self._objects.retry()

    def _calls(self) -> contextlib.AbstractContextManager[None]:
        """Map the client's failures onto the four outcomes (see core.buckets)."""
        return self._objects.calls()

    def _read_record(self, name: str) -> tuple[dict[str, Any], str] | None:
        """A small JSON record and its generation (the token a conditional write needs)."""
        found = self._objects.read(name)
        return None if found is None else (json.loads(found[0]), found[1])

    def _write_record(self, name: str, record: dict[str, Any], token: str | None) -> str:
        """Write ``record`` only over the generation ``token`` names (None: only if absent)."""
        return self._objects.write(name, json.dumps(record).encode(), token)

    def read_meta(self, file_id: str) -> tuple[dict[str, Any], str] | None:
        return self._read_record(f"{META}{file_id}.json")

    def write_meta(self, record: dict[str, Any], token: str | None) -> str:
        return self._write_record(f"{META}{record['id']}.json", record, token)

    def list_meta(self, after: str | None, limit: int) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        with self._calls():
            blobs = self._storage().list_blobs(
                self.bucket_name,
                prefix=META,
                start_offset=f"{META}{after}.json\x00" if after else None,
                max_results=limit,
                timeout=self._deadline,
                retry=self._retry(),
            )
            for blob in blobs:
                records.append(json.loads(blob.download_as_bytes(timeout=self._deadline)))
        return records

    def delete(self, file_id: str) -> None:
        for name in (f"{DATA}{file_id}.jsonl", f"{META}{file_id}.json"):
            with contextlib.suppress(ObjectMissing), self._calls():
                self._bucket().blob(name).delete(timeout=self._deadline, retry=self._retry())

    def write_data(self, file_id: str, source: BinaryIO, *, replace: bool = True) -> None:
        blob = self._bucket().blob(f"{DATA}{file_id}.jsonl", chunk_size=CHUNK)
        try:
            with self._calls():
                blob.upload_from_file(
                    source,
                    content_type="application/jsonl",
                    timeout=self._deadline,
                    if_generation_match=None if replace else 0,
                )
        except Conflict:
            raise FileExistsError(file_id) from None

    def data_size(self, file_id: str) -> int | None:
        with self._calls():
            blob = self._bucket().get_blob(f"{DATA}{file_id}.jsonl", timeout=self._deadline)
        return None if blob is None else int(blob.size)

    def _stream(self, blob: Any, sink: Sink) -> None:
        with self._calls():
            self._storage().download_blob_to_file(
                blob, _SinkWriter(sink), timeout=self._deadline, retry=self._retry()
            )

    def stream_data(self, file_id: str, sink: Sink) -> None:
        self._stream(self._bucket().blob(f"{DATA}{file_id}.jsonl"), sink)

    def upload_session(self, file_id: str, size: int) -> str | None:
        blob = self._bucket().blob(f"{DATA}{file_id}.jsonl")
        with self._calls():
            url: str = blob.create_resumable_upload_session(
                content_type="application/jsonl", size=size, timeout=self._deadline
            )
        return url

    def _read_url(self, blob: Any, ttl_seconds: int, generation: str | None) -> str:
        if self._emulator_host:
            # The emulator checks no signature: a plain media URL of that generation.
            host = self._emulator_host
            if not host.startswith(("http://", "https://")):
                host = f"http://{host}"
            name = urllib.parse.quote(blob.name, safe="")
            query = {"alt": "media", **({"generation": generation} if generation else {})}
            return (
                f"{host}/download/storage/v1/b/{blob.bucket.name}/o/{name}?"
                + urllib.parse.urlencode(query)
            )
        return _signed_url(self._storage(), blob, ttl_seconds, generation)

    def data_url(self, file_id: str, ttl_seconds: int) -> str:
        return self._read_url(self._bucket().blob(f"{DATA}{file_id}.jsonl"), ttl_seconds, None)

    def object_generation(self, bucket: str, name: str) -> tuple[str, int]:
        """The object's current generation and its size in bytes."""
        with self._calls():
            blob = self._bucket(bucket).get_blob(name, timeout=self._deadline)
        if blob is None:
            raise ObjectMissing(name)
        return str(blob.generation), int(blob.size or 0)

    def stream_object(self, bucket: str, name: str, generation: str, sink: Sink) -> None:
        self._stream(self._bucket(bucket).blob(name, generation=int(generation)), sink)

    def object_url(self, bucket: str, name: str, generation: str, ttl_seconds: int) -> str:
        blob = self._bucket(bucket).blob(name, generation=int(generation))
        return self._read_url(blob, ttl_seconds, generation)

    def read_check(self, key: str) -> dict[str, Any] | None:
        found = self._read_record(f"{CHECKS}{key}.json")
        return None if found is None else found[0]

    def write_check(self, key: str, record: dict[str, Any]) -> None:
        # Create-only: the check of one object generation never changes.
        with contextlib.suppress(Conflict):
            self._write_record(f"{CHECKS}{key}.json", record, None)

    # -- uploads (the Uploads API) -------------------------------------------------

    def read_upload(self, upload_id: str) -> tuple[dict[str, Any], str] | None:
        return self._read_record(f"{UPLOADS}{upload_id}.json")

    def write_upload(self, record: dict[str, Any], token: str | None) -> str:
        return self._write_record(f"{UPLOADS}{record['id']}.json", record, token)

    def write_part(self, upload_id: str, part_id: str, source: BinaryIO) -> int:
        """The part goes to Cloud Storage as it arrives (streamed in 8 MiB chunks)."""
        counter = _CountingReader(source)
        blob = self._bucket().blob(f"{UPLOADS}{upload_id}/{part_id}", chunk_size=CHUNK)
        with self._calls():
            blob.upload_from_file(
                counter, content_type="application/octet-stream", timeout=self._deadline
            )
        return counter.count

    def _part_blobs(self, upload_id: str) -> dict[str, Any]:
        """Every stored part of an Upload by part id: one listing (1,000 names a page)."""
        prefix = f"{UPLOADS}{upload_id}/"
        with self._calls():
            blobs = self._storage().list_blobs(
                self.bucket_name, prefix=prefix, timeout=self._deadline, retry=self._retry()
            )
            return {blob.name[len(prefix) :]: blob for blob in blobs}

    def part_sizes(self, upload_id: str, part_ids: list[str]) -> list[int | None]:
        stored = self._part_blobs(upload_id)
        return [
            None if stored.get(part_id) is None else int(stored[part_id].size)
            for part_id in part_ids
        ]

    def parts_stored(self, upload_id: str) -> tuple[int, int]:
        """How many parts an Upload holds now, and their bytes (one listing)."""
        sizes = [
            int(blob.size or 0)
            for name, blob in self._part_blobs(upload_id).items()
            if name.startswith("part_")
        ]
        return len(sizes), sum(sizes)

    def _each(self, call: Callable[[Any], Any], items: list[Any]) -> None:
        """``call`` on every item, ``PARALLEL_CALLS`` at a time; the first failure is raised."""
        if len(items) <= 1:
            for item in items:
                call(item)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(PARALLEL_CALLS, len(items))) as pool:
            for future in [pool.submit(call, item) for item in items]:
                future.result()

    def join_parts(self, upload_id: str, part_ids: list[str], file_id: str) -> None:
        """Cloud Storage compose, in rounds of at most 32 sources, into the File's data.

        The bytes never pass through the function: each round composes groups of
        32 into intermediate objects (the composes of one round at once, up to
        ``PARALLEL_CALLS``), until one call can make the final object: 512 parts
        are 16 composes at once, then one; 1,024 (``MAX_PARTS``) are 32, then one.
        """
        bucket = self._bucket()
        sources = [bucket.blob(f"{UPLOADS}{upload_id}/{part_id}") for part_id in part_ids]
        round_number = 0

        def compose(job: tuple[Any, list[Any]]) -> None:
            target, group = job
            with self._calls():
                target.compose(group, timeout=self._deadline, retry=self._retry())

        while len(sources) > COMPOSE_MAX:
            round_number += 1
            jobs = []
            for index in range(0, len(sources), COMPOSE_MAX):
                target = bucket.blob(f"{UPLOADS}{upload_id}/round-{round_number}-{index}")
                target.content_type = "application/octet-stream"
                jobs.append((target, sources[index : index + COMPOSE_MAX]))
            self._each(compose, jobs)
            sources = [target for target, _ in jobs]
        final = bucket.blob(f"{DATA}{file_id}.jsonl")
        final.content_type = "application/jsonl"
        compose((final, sources))

    def delete_part(self, upload_id: str, part_id: str) -> None:
        with contextlib.suppress(ObjectMissing), self._calls():
            self._bucket().blob(f"{UPLOADS}{upload_id}/{part_id}").delete(
                timeout=self._deadline, retry=self._retry()
            )

    def delete_parts(self, upload_id: str) -> None:
        def delete(blob: Any) -> None:
            with contextlib.suppress(ObjectMissing), self._calls():
                blob.delete(timeout=self._deadline)

        self._each(delete, list(self._part_blobs(upload_id).values()))


class _CountingReader:
    """A read-only file object that counts the bytes read through it."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.count += len(data)
        return data

    def tell(self) -> int:
        return self.count


def _signed_url(client: Any, blob: Any, ttl_seconds: int, generation: str | None) -> str:
    """A V4 signed GET URL. On Cloud Run the runtime identity signs through IAM
    (``signBlob``; deploy.sh grants it Token Creator on itself): no key file exists."""
    from google.auth.credentials import Signing
    from google.auth.transport.requests import Request

    credentials = client._credentials
    options: dict[str, Any] = {}
    if not isinstance(credentials, Signing):
        if not credentials.valid:
            credentials.refresh(Request())
        options = {
            "service_account_email": credentials.service_account_email,
            "access_token": credentials.token,
        }
    query = {"generation": generation} if generation else None
    url: str = blob.generate_signed_url(
        version="v4",
        expiration=timedelta(seconds=ttl_seconds),
        method="GET",
        query_parameters=query,
        **options,
    )
    return url


def store_from_settings(settings: Any) -> FileStore:
    if settings.files_bucket:
        return GcsFileStore(
            settings.files_bucket,
            emulator_host=settings.storage_emulator_host,
            project=settings.google_cloud_project,
        )
    root = settings.files_dir or Path.home() / ".cache" / "finetune-api" / "files"
    return LocalFileStore(Path(root))
