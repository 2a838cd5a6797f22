"""The Uploads API (OpenAI's ``/v1/uploads``): a large file sent in parts, joined, then checked.

An Upload announces a filename and a size; each part (at most ``MAX_UPLOAD_BYTES``,
32 MiB by default) is stored as it arrives (Cloud Storage under
``files/uploads/<upload id>/``, or the local folder); complete joins the named
parts in order (Cloud Storage compose, in rounds of 32; a plain concatenation
on disk) into a new File's data and checks it exactly as ``POST /files/{id}/complete``
does. The File is then an ordinary File: the same list, the same check, the same
``training_file``.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from typing import Any, BinaryIO, cast

from finetune_api.core.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    UpstreamUnavailableError,
)
from finetune_api.core.logs import get_logger, log
from finetune_api.files.service import PENDING, FileService, check_filename, check_purpose
from finetune_api.files.stores import (
    Conflict,
    FileStore,
    ObjectMissing,
    StorageUnavailable,
    new_file_id,
)

_logger = get_logger("uploads")

UPLOAD_TTL_SECONDS = 3600
# At most this many parts per Upload (OpenAI allows 10,000 of up to 64 MB; ours are at
# most 32 MiB, so 8 GiB needs 256 of them). Completing the largest Upload must stay well
# inside the request timeout: 1,024 parts take 3.6 s on fake-gcs-server (docs/performance.md).
MAX_PARTS = 1024


def new_upload_id() -> str:
    return f"upload_{secrets.token_hex(12)}"


def new_part_id() -> str:
    return f"part_{secrets.token_hex(12)}"


def is_upload_id(value: str) -> bool:
    rest = value[len("upload_") :]
    return (
        value.startswith("upload_")
        and len(rest) == 24
        and all(c in "0123456789abcdef" for c in rest)
    )


def is_part_id(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    rest = value[len("part_") :]
    return (
        value.startswith("part_") and len(rest) == 24 and all(c in "0123456789abcdef" for c in rest)
    )


def _invalid(field: str, reason: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{field}: {reason}", details=[{"location": field, "reason": reason}]
    )


def _unavailable(error: Exception) -> UpstreamUnavailableError:
    return UpstreamUnavailableError(f"file storage is unavailable ({type(error).__name__}); retry")


class _Bounded:
    """A read-only file object that ends after ``limit`` bytes (the rest is never read)."""

    def __init__(self, source: BinaryIO, limit: int) -> None:
        self._source = source
        self._left = limit

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if size is None or size < 0 else min(size, self._left)
        data = self._source.read(want)
        self._left -= len(data)
        return data


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if not key.startswith("_")}


class UploadService:
    def __init__(
        self, store: FileStore, files: FileService, *, max_part_bytes: int, clock: Any = time.time
    ) -> None:
        """``files`` acts for the caller: new Uploads carry its team, others' are unknown."""
        self._store = store
        self._files = files
        self._max_part = max_part_bytes
        self._clock = clock

    def create(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidRequestError("request body must be a JSON object")
        unknown = sorted(set(body) - {"filename", "bytes", "purpose", "mime_type", "expires_after"})
        if unknown:
            raise InvalidRequestError(
                f"{len(unknown)} unknown field(s) in the request body",
                details=[{"location": "body", "reason": "unknown field"} for _ in unknown],
            )
        filename = check_filename(body.get("filename"))
        check_purpose(body.get("purpose"))
        size = body.get("bytes")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise _invalid("bytes", "must be a positive integer (the file's size)")
        if size > self._files.max_file_bytes:
            raise PayloadTooLargeError(
                f"an Upload may hold at most {self._files.max_file_bytes} bytes "
                f"(MAX_FILE_BYTES); this one announces {size}",
                details=[{"location": "bytes", "reason": "larger than MAX_FILE_BYTES"}],
            )
        mime = body.get("mime_type")
        if mime is not None and not isinstance(mime, str):
            raise _invalid("mime_type", "must be a string")
        now = int(self._clock())
        record = {
            "id": new_upload_id(),
            "object": "upload",
            "bytes": size,
            "created_at": now,
            "expires_at": now + UPLOAD_TTL_SECONDS,
            "filename": filename,
            "purpose": "fine-tune",
            "status": "pending",
            "file": None,
            "_parts": {},
        }
        record = self._files.tag(record)
        try:
            self._store.write_upload(record, None)
        except StorageUnavailable as error:
            raise _unavailable(error) from None
        log(_logger, 20, "upload created", upload_id=record["id"], bytes=size)
        return _public(record)

    def _read(self, upload_id: str) -> tuple[dict[str, Any], str]:
        if not is_upload_id(upload_id):
            raise NotFoundError("no such upload")
        try:
            found = self._store.read_upload(upload_id)
        except StorageUnavailable as error:
            raise _unavailable(error) from None
        if found is None or not self._files.shows(found[0]):
            raise NotFoundError("no such upload")
        return found

    def _pending(self, upload_id: str) -> tuple[dict[str, Any], str]:
        record, token = self._read(upload_id)
        if record["status"] != "pending":
            raise ConflictError(f"this upload is {record['status']}, not pending")
        if self._clock() > record["expires_at"]:
            raise ConflictError("this upload has expired: create a new one")
        return record, token

    def add_part(self, upload_id: str, source: BinaryIO) -> dict[str, Any]:
        """Store one part (already bounded by the route) as it arrives.

        A part larger than ``max_part_bytes``, or one that takes the parts stored so
        far past the Upload's announced ``bytes``, is refused with a 413 and deleted:
        nothing refused stays stored. At most ``bound + 1`` bytes are ever read.
        """
        record, _ = self._pending(upload_id)
        part_id = new_part_id()
        bound = min(self._max_part, record["bytes"])
        try:
            size = self._store.write_part(
                upload_id, part_id, cast(BinaryIO, _Bounded(source, bound + 1))
            )
        except StorageUnavailable as error:
            self._drop_part(upload_id, part_id)
            raise _unavailable(error) from None
        if size > self._max_part:
            self._drop_part(upload_id, part_id)
            raise PayloadTooLargeError(f"a part may hold at most {self._max_part} bytes")
        try:
            count, stored = self._store.parts_stored(upload_id)
        except StorageUnavailable as error:
            self._drop_part(upload_id, part_id)
            raise _unavailable(error) from None
        if count > MAX_PARTS:
            self._drop_part(upload_id, part_id)
            raise _invalid("data", f"an Upload holds at most {MAX_PARTS} parts")
        if stored > record["bytes"]:
            self._drop_part(upload_id, part_id)
            raise PayloadTooLargeError(
                f"this part takes the Upload past the {record['bytes']} bytes it announced",
                details=[{"location": "data", "reason": "past the Upload's bytes"}],
            )
        return {
            "id": part_id,
            "object": "upload.part",
            "created_at": int(self._clock()),
            "upload_id": upload_id,
        }

    def _drop_part(self, upload_id: str, part_id: str) -> None:
        try:
            self._store.delete_part(upload_id, part_id)
        except StorageUnavailable:
            log(_logger, 30, "could not delete a refused part", upload_id=upload_id)

    def complete(self, upload_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidRequestError("request body must be a JSON object")
        part_ids = body.get("part_ids")
        if isinstance(part_ids, list) and len(part_ids) > MAX_PARTS:
            raise _invalid("part_ids", f"an Upload holds at most {MAX_PARTS} parts")
        if (
            not isinstance(part_ids, list)
            or not part_ids
            or not all(is_part_id(p) for p in part_ids)
            or len(set(part_ids)) != len(part_ids)
        ):
            raise _invalid("part_ids", "must list the ids of this upload's parts, each once")
        if body.get("md5") is not None and not isinstance(body.get("md5"), str):
            raise _invalid("md5", "must be a string")
        record, token = self._read(upload_id)
        if record["status"] == "completed":
            return _public(record)  # completing twice answers the same Upload
        record, token = self._pending(upload_id)
        try:
            sizes = self._store.part_sizes(upload_id, part_ids)
        except StorageUnavailable as error:
            raise _unavailable(error) from None
        if any(size is None for size in sizes):
            raise _invalid("part_ids", "names a part this upload does not have")
        total = sum(size or 0 for size in sizes)
        if total != record["bytes"]:
            raise _invalid(
                "part_ids", f"the parts hold {total} bytes, not the {record['bytes']} announced"
            )
        file_id = new_file_id()
        file_record = {
            "id": file_id,
            "object": "file",
            "filename": record["filename"],
            "bytes": total,
            "sha256": None,
            "created_at": int(self._clock()),
            "purpose": "fine-tune",
            "status": PENDING,
            "validation": None,
        }
        file_record = self._files.tag(file_record)
        try:
            self._store.join_parts(upload_id, part_ids, file_id)
            self._store.write_meta(file_record, None)
        except (StorageUnavailable, ObjectMissing) as error:
            raise _unavailable(error) from None
        checked = self._files.complete(file_id)
        done = {**record, "status": "completed", "file": checked}
        try:
            self._store.write_upload(done, token)
        except Conflict:
            # A concurrent complete won: its File is the Upload's; drop this copy.
            with contextlib.suppress(StorageUnavailable):
                self._store.delete(file_id)
            return _public(self._read(upload_id)[0])
        except StorageUnavailable as error:
            raise _unavailable(error) from None
        try:
            self._store.delete_parts(upload_id)
        except StorageUnavailable:
            log(_logger, 30, "could not delete an upload's parts", upload_id=upload_id)
        log(_logger, 20, "upload completed", upload_id=upload_id, file_id=file_id, bytes=total)
        return _public(done)

    def cancel(self, upload_id: str) -> dict[str, Any]:
        record, token = self._pending(upload_id)
        cancelled = {**record, "status": "cancelled"}
        try:
            self._store.write_upload(cancelled, token)
            self._store.delete_parts(upload_id)
        except Conflict:
            raise ConflictError("this upload changed while cancelling; read it again") from None
        except StorageUnavailable as error:
            raise _unavailable(error) from None
        return _public(cancelled)
