"""The file service: take a JSONL file, check it, keep it, and hand a job exactly those bytes.

Every route of ``/files`` (and the OpenAI-compatible ``/v1/files``) and the
``training_file`` / ``validation_file`` fields of a submission go through
:class:`FileService`. Nothing here knows HTTP: streams in, File records out,
and one :class:`~finetune_api.core.errors.ServiceError` per failure.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, BinaryIO

from finetune_api.core.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    UpstreamUnavailableError,
)
from finetune_api.core.logs import get_logger, log
from finetune_api.files.check import CheckResult, JsonlCheck, describe
from finetune_api.files.stores import (
    Conflict,
    FileStore,
    ObjectForbidden,
    ObjectMissing,
    StorageUnavailable,
    is_file_id,
    new_file_id,
)

_logger = get_logger("files")

PURPOSE = "fine-tune"
PENDING, PROCESSED, ERROR = "pending_upload", "processed", "error"
# The check of a completed upload still runs (``complete`` answered 202): see FileService.complete.
VALIDATING = "validating"
# How fast a check is assumed to go when its lease is sized (a slower check is taken
# over by the next reader once the lease runs out; both write the same result).
_LEASE_BYTES_PER_SECOND = 4 * 1024 * 1024
_LEASE_MIN_SECONDS = 120
_GS_URI = re.compile(
    r"gs://(?P<bucket>[a-z0-9][a-z0-9._-]{1,220}[a-z0-9])/(?P<name>[^\r\n]{1,1024})"
)
_FILENAME_MAX = 255


def parse_gs_uri(value: str) -> tuple[str, str] | None:
    """``(bucket, object)`` of a well-formed ``gs://bucket/object``, else None."""
    match = _GS_URI.fullmatch(value)
    if match is None or len(match["name"].encode("utf-8")) > 1024:
        return None
    name = match["name"]
    if name in {".", ".."} or name.startswith(".well-known/acme-challenge/"):
        return None
    return match["bucket"], name


def _unavailable(error: StorageUnavailable) -> UpstreamUnavailableError:
    return UpstreamUnavailableError(f"file storage is unavailable ({error}); retry later")


def _invalid(field: str, reason: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{field}: {reason}", details=[{"location": field, "reason": reason}]
    )


def check_filename(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _invalid("filename", "must be a non-empty string")
    if len(value) > _FILENAME_MAX or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise _invalid("filename", f"must be at most {_FILENAME_MAX} printable characters")
    return value


def check_purpose(value: Any) -> str:
    if value != PURPOSE:
        raise _invalid("purpose", f"must be {PURPOSE}")
    return PURPOSE


def public(record: dict[str, Any]) -> dict[str, Any]:
    """The File object a caller sees (the store's private keys start with ``_``).

    Never the ``upload_url``: the upload session is a write capability, given only
    in the answer to the caller who opened it (:meth:`FileService.start_upload`);
    records written before that rule may still hold one, so it is dropped here.
    """
    shown = {key: value for key, value in record.items() if not key.startswith("_")}
    shown.pop("upload_url", None)
    return shown


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# A File id -> the job (``ftjob-…`` or "project/job") that has not ended and still
# needs it, or None. Set by the composition root (jobs sit above files).
FileUsers = Callable[[str], str | None]


class FileService:
    def __init__(
        self,
        store: FileStore,
        *,
        max_line_bytes: int,
        url_ttl_seconds: int,
        max_file_bytes: int = 8 * 1024**3,
        allowed_buckets: Collection[str] = (),
        own_buckets: Collection[str] = (),
        check_wait_seconds: float = 20.0,
        team: str | None = None,
        visible: Any = None,
    ) -> None:
        self._store = store
        self._max_line = max_line_bytes
        self._ttl = url_ttl_seconds
        self.max_file_bytes = max_file_bytes
        self._own = frozenset(own_buckets)
        self._allowed = frozenset(allowed_buckets) - self._own
        self._wait = check_wait_seconds
        self.users: FileUsers | None = None
        self._checking: set[str] = set()  # File ids this instance is checking now
        self._checking_lock = threading.Lock()
        # Teams: the team new Files belong to (None: no teams, no tag) and
        # ``visible(team)``, whether this caller may see a File of ``team`` (None: all).
        self.team = team
        self._visible = visible

    def _too_large(self, size: int) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"a File may hold at most {self.max_file_bytes} bytes (MAX_FILE_BYTES); "
            f"this one holds {size}",
            details=[{"location": "bytes", "reason": "larger than MAX_FILE_BYTES"}],
        )

    def for_caller(self, team: str | None, visible: Any) -> FileService:
        """The same service acting for one team (see :class:`finetune_api.core.teams.Caller`).

        A shallow copy: the store, the settings, ``users`` and the set of Files being
        checked are shared; only the team and what it may see differ.
        """
        view = copy.copy(self)
        view.team = team
        view._visible = visible
        return view

    def shows(self, record: dict[str, Any]) -> bool:
        """Whether this caller may see ``record`` (another team's is as if unknown)."""
        return self._visible is None or bool(self._visible(record.get("team")))

    def tag(self, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` with this caller's team (nothing when no team is configured)."""
        return {**record, "team": self.team} if self.team is not None else record

    # -- create -----------------------------------------------------------------

    def _new_record(self, filename: str, size: int | None) -> dict[str, Any]:
        return self.tag(
            {
                "id": new_file_id(),
                "object": "file",
                "filename": filename,
                "bytes": size,
                "sha256": None,
                "created_at": int(time.time()),
                "purpose": PURPOSE,
                "status": PENDING,
                "validation": None,
            }
        )

    def _checked(self, record: dict[str, Any], result: CheckResult) -> dict[str, Any]:
        return {
            **record,
            "bytes": result.bytes,
            "sha256": result.sha256,
            "status": PROCESSED if result.ok else ERROR,
            "validation": result.validation(),
        }

    def upload(self, filename: Any, source: BinaryIO, purpose: Any) -> dict[str, Any]:
        """A multipart upload (already bounded by the route): check it, then keep it.

        ``source`` must be seekable (the route's spooled upload): it is read twice,
        once to check and once to store, so a retried store write sends the same bytes.
        """
        record = self._new_record(check_filename(filename), None)
        check_purpose(purpose)
        check = JsonlCheck(max_line_bytes=self._max_line)
        while chunk := source.read(1024 * 1024):
            check.feed(chunk)
        result = check.finish()
        if result.bytes > self.max_file_bytes:
            raise self._too_large(result.bytes)
        record = self._checked(record, result)
        source.seek(0)
        try:
            self._store.write_data(record["id"], source)
            self._store.write_meta(record, None)
        except StorageUnavailable as error:
            self._forget(record["id"])
            raise _unavailable(error) from None
        self._logged("file uploaded", record)
        return public(record)

    def start_upload(
        self, filename: Any, size: Any, purpose: Any, *, session_base: str = ""
    ) -> dict[str, Any]:
        """The large-file path: a File ``pending_upload`` with a resumable session URL.

        The answer is the only place the session URL appears: it is a write
        capability, kept by nobody (never in the record, never in a GET). With the
        local store the session is the service's own ``PUT /files/{id}/content``
        (``session_base`` + ``{id}/content?token=…``): the token is random, only its
        sha256 is kept, and the PUT is accepted once.
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise _invalid("bytes", "must be a positive integer (the file's size)")
        if size > self.max_file_bytes:
            raise self._too_large(size)
        check_purpose(purpose)
        record = self._new_record(check_filename(filename), size)
        try:
            url = self._store.upload_session(record["id"], size)
            if url is None:
                token = secrets.token_urlsafe(32)
                record["_session_sha256"] = _digest(token)
                url = f"{session_base}{record['id']}/content?token={token}"
            self._store.write_meta(record, None)
        except StorageUnavailable as error:
            raise _unavailable(error) from None
        self._logged("file upload started", record)
        return {**public(record), "upload_url": url}

    def receive(
        self, file_id: str, source: BinaryIO, length: int | None, token: str | None
    ) -> None:
        """The local store's upload session: stream the body to disk (``PUT …/content``).

        Only with the session's token, only while the File is pending, and only
        once: the bytes that arrived are never replaced.
        """
        found = self._store_read(file_id)
        expected = found[0].get("_session_sha256") if found else None
        if (
            found is None
            or not self.shows(found[0])
            or not isinstance(expected, str)
            or not token
            or not hmac.compare_digest(expected, _digest(token))
        ):
            raise NotFoundError("no such upload session")
        record = found[0]
        if record["status"] != PENDING:
            raise ConflictError("this File is no longer pending_upload: its bytes are final")
        if length is not None and length != record["bytes"]:
            reason = f"send exactly the {record['bytes']} bytes announced"
            raise _invalid("body", reason)
        try:
            if self._store.data_size(file_id) is not None:
                raise ConflictError("the bytes of this File have arrived already")
            self._store.write_data(file_id, source, replace=False)
        except FileExistsError:
            raise ConflictError("the bytes of this File have arrived already") from None
        except StorageUnavailable as error:
            raise _unavailable(error) from None

    def _store_read(self, file_id: str) -> tuple[dict[str, Any], str] | None:
        if not is_file_id(file_id):
            return None
        try:
            return self._store.read_meta(file_id)
        except StorageUnavailable as error:
            raise _unavailable(error) from None

    def complete(self, file_id: str) -> dict[str, Any]:
        """Check what arrived; the File stays ``pending_upload`` until all of it has.

        The check runs on a thread of its own and the File is claimed for it
        (status ``validating`` with a lease, written over the version read, so one
        instance checks at a time). If the check ends within ``check_wait_seconds``
        the answer is the checked File; otherwise the answer is the File
        ``validating`` (the route makes it a 202) and the check goes on without a
        caller; a later ``complete`` or ``GET`` takes over a check whose lease ran
        out (its instance died). On a storage failure the File goes back to
        ``pending_upload`` and a waiting caller gets a 503.
        """
        record, token = self._read(file_id)
        if record["status"] == VALIDATING:
            return public(self._resume(record, token))
        if record["status"] != PENDING:
            return public(record)  # completing twice answers the same File
        try:
            arrived = self._store.data_size(file_id)
        except StorageUnavailable as error:
            raise _unavailable(error) from None
        if arrived is None:
            raise ConflictError(
                "no complete upload has arrived yet: send all the bytes to upload_url first"
            )
        if arrived > self.max_file_bytes:
            self._forget(file_id)  # it can never become a File: nothing to keep
            raise self._too_large(arrived)
        if arrived != record["bytes"]:
            raise ConflictError(f"{arrived} of the {record['bytes']} bytes announced arrived")
        claimed = self._claim(record, token)
        if claimed is None:
            return public(self._read(file_id)[0])  # another complete claimed it
        return public(self._check_in_background(*claimed, wait=self._wait))

    def _claim(self, record: dict[str, Any], token: str) -> tuple[dict[str, Any], str] | None:
        """Mark the File ``validating`` for this instance (None: someone else did first)."""
        lease = _LEASE_MIN_SECONDS + int((record["bytes"] or 0) / _LEASE_BYTES_PER_SECOND)
        claimed = {**record, "status": VALIDATING, "_lease_until": int(time.time()) + lease}
        try:
            return claimed, self._store.write_meta(claimed, token)
        except Conflict:
            return None
        except StorageUnavailable as error:
            raise _unavailable(error) from None

    def _resume(self, record: dict[str, Any], token: str) -> dict[str, Any]:
        """A ``validating`` File: take over its check if its lease ran out, never wait."""
        if record.get("_lease_until", 0) > time.time():
            return record
        with self._checking_lock:
            if record["id"] in self._checking:
                return record  # still running here, only slower than its lease
        claimed = self._claim(record, token)
        if claimed is None:
            return self._read(record["id"])[0]
        log(_logger, 30, "file check taken over (its lease ran out)", file_id=record["id"])
        return self._check_in_background(*claimed, wait=0.0)

    def _check_in_background(
        self, record: dict[str, Any], token: str, *, wait: float
    ) -> dict[str, Any]:
        """Run the check on its own thread; the checked File if it ends within ``wait`` s."""
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                outcome["record"] = self._finish_check(record, token)
            except BaseException as error:  # noqa: BLE001 - handed to the waiter, if any
                outcome["error"] = error
            finally:
                with self._checking_lock:
                    self._checking.discard(record["id"])
                done.set()

        with self._checking_lock:
            self._checking.add(record["id"])
        threading.Thread(target=run, daemon=True, name=f"check-{record['id']}").start()
        finished = done.wait(wait) if wait > 0 else done.is_set()
        if not finished:
            self._logged("file check continues after the answer", record)
            return record
        error = outcome.get("error")
        if isinstance(error, StorageUnavailable | ObjectMissing):
            raise UpstreamUnavailableError(
                f"file storage failed during the check ({type(error).__name__}); "
                "the File stays pending_upload: call complete again"
            ) from None
        if error is not None:
            raise error
        checked: dict[str, Any] = outcome["record"]
        return checked

    def _finish_check(self, record: dict[str, Any], token: str) -> dict[str, Any]:
        base = {key: value for key, value in record.items() if key != "_lease_until"}
        try:
            result = self._check_stored(record["id"])
        except (StorageUnavailable, ObjectMissing):
            with contextlib.suppress(Conflict, StorageUnavailable):
                self._store.write_meta({**base, "status": PENDING}, token)
            raise
        checked = self._checked(base, result)
        try:
            self._store.write_meta(checked, token)
        except Conflict:
            return self._read(record["id"])[0]  # another instance took over; same bytes
        self._logged("file checked", checked)
        return checked

    def _check_stored(self, file_id: str) -> CheckResult:
        check = JsonlCheck(max_line_bytes=self._max_line)
        self._store.stream_data(file_id, check.feed)
        return check.finish()

    # -- read -------------------------------------------------------------------

    def _read(self, file_id: str) -> tuple[dict[str, Any], str]:
        found = self._store_read(file_id)
        if found is None or not self.shows(found[0]):
            raise NotFoundError("no such file")
        return found

    def get(self, file_id: str) -> dict[str, Any]:
        record, token = self._read(file_id)
        if record["status"] == VALIDATING:
            record = self._resume(record, token)
        return public(record)

    def list(self, limit: int, after: str | None) -> dict[str, Any]:
        if after is not None and not is_file_id(after):
            raise _invalid("after", "must be a File id")
        records: list[dict[str, Any]] = []
        cursor = after
        while len(records) <= limit:
            want = limit + 1 - len(records)
            try:
                batch = self._store.list_meta(cursor, want)
            except StorageUnavailable as error:
                raise _unavailable(error) from None
            records.extend(r for r in batch if self.shows(r))
            if len(batch) < want or self._visible is None:
                break
            cursor = batch[-1]["id"]  # other teams' Files skipped: read on
        return {"data": [public(r) for r in records[:limit]], "has_more": len(records) > limit}

    def delete(self, file_id: str) -> dict[str, Any]:
        """Delete a File: a ``409`` while a job that has not ended still needs it."""
        self._read(file_id)
        user = self.users(file_id) if self.users is not None else None
        if user is not None:
            raise ConflictError(
                f"the job {user} still needs this File: delete it once the job has ended",
                details=[{"location": "file_id", "reason": f"in use by {user}"}],
            )
        self._forget(file_id)
        log(_logger, 20, "file deleted", file_id=file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    def _forget(self, file_id: str) -> None:
        try:
            self._store.delete(file_id)
        except StorageUnavailable as error:
            raise _unavailable(error) from None

    def stream(self, file_id: str, sink: Any) -> None:
        """The stored bytes, chunk by chunk (``GET /v1/files/{id}/content``)."""
        self.readable(file_id)
        try:
            self._store.stream_data(file_id, sink)
        except (StorageUnavailable, ObjectMissing) as error:
            raise UpstreamUnavailableError(
                f"file storage failed ({type(error).__name__})"
            ) from None

    def readable(self, file_id: str) -> dict[str, Any]:
        """The File whose content may be read: a ``409`` while its bytes are not final."""
        record = self.get(file_id)
        if record["status"] in (PENDING, VALIDATING):
            raise ConflictError(
                f"this File is still {record['status']}: its content can be read once it "
                "is processed",
                details=[{"location": "file_id", "reason": record["status"]}],
            )
        return record

    # -- for a job --------------------------------------------------------------

    def resolve(self, field: str, ref: str) -> dict[str, Any]:
        """What the training job gets for ``ref`` (a File id or ``gs://``), checked; else a 400."""
        if ref.startswith("gs://"):
            return self._resolve_object(field, ref)
        if not is_file_id(ref):
            raise _invalid(field, "must be a File id (file-…) or gs://bucket/object")
        try:
            found = self._store.read_meta(ref)
        except StorageUnavailable as error:
            raise _unavailable(error) from None
        if found is None or not self.shows(found[0]):
            raise _invalid(field, "no such File")
        record = found[0]
        if record["status"] == PENDING:
            raise _invalid(
                field, "the File is still pending_upload: upload its bytes, then complete it"
            )
        if record["status"] == VALIDATING:
            raise _invalid(field, "the File is still being checked: wait until it is processed")
        if record["status"] != PROCESSED:
            raise _invalid(field, "the File failed its check (status error): see GET /files/{id}")
        try:
            url = self._store.data_url(ref, self._ttl)
        except StorageUnavailable as error:
            raise _unavailable(error) from None
        return _handoff(ref, url, record["sha256"], record["bytes"], record["validation"])

    def _resolve_object(self, field: str, ref: str) -> dict[str, Any]:
        parsed = parse_gs_uri(ref)
        if parsed is None:
            raise _invalid(field, "malformed gs:// URI: use gs://bucket/object")
        bucket, name = parsed
        self._may_read(field, bucket)
        try:
            generation, size = self._store.object_generation(bucket, name)
            if size > self.max_file_bytes:
                raise _invalid(
                    field,
                    f"the Cloud Storage object holds {size} bytes; a file may hold at most "
                    f"{self.max_file_bytes} (MAX_FILE_BYTES)",
                )
            key = hashlib.sha256(f"{bucket}/{name}#{generation}".encode()).hexdigest()
            checked = self._store.read_check(key)
            if checked is None:
                check = JsonlCheck(max_line_bytes=self._max_line)
                self._store.stream_object(bucket, name, generation, check.feed)
                result = check.finish()
                checked = {
                    "bytes": result.bytes,
                    "sha256": result.sha256,
                    "ok": result.ok,
                    "validation": result.validation(),
                }
                self._store.write_check(key, checked)
            url = self._store.object_url(bucket, name, generation, self._ttl)
        except ObjectMissing:
            raise _invalid(field, "the Cloud Storage object does not exist") from None
        except ObjectForbidden:
            raise _invalid(
                field,
                "the service may not read that Cloud Storage object: grant its runtime "
                "service account roles/storage.objectViewer on the bucket",
            ) from None
        except StorageUnavailable as error:
            raise _unavailable(error) from None
        if not checked["ok"]:
            validation = checked["validation"]
            first = (validation["errors"] or [{"line": None, "reason": "no valid example"}])[0]
            raise InvalidRequestError(
                f"{field}: the object failed its check ({validation['invalid_examples']} invalid "
                f"lines; first: {describe(first)})",
                details=[
                    {"location": field, "reason": describe(error)}
                    for error in validation["errors"][:20]
                ],
            )
        handoff = _handoff(ref, url, checked["sha256"], checked["bytes"], checked["validation"])
        return {**handoff, "generation": generation}

    def _may_read(self, field: str, bucket: str) -> None:
        """Refuse, before any read, a bucket not in GCS_ALLOWED_BUCKETS or one of our own."""
        if bucket in self._own:
            raise _invalid(field, "the service never reads its own buckets on a caller's behalf")
        if bucket not in self._allowed:
            raise _invalid(
                field,
                f"the bucket {bucket} is not in GCS_ALLOWED_BUCKETS: the service reads gs:// "
                "objects only from the buckets its operator allowed",
            )

    def each_example(self, handoff: dict[str, Any], visit: Any) -> None:
        """Call ``visit`` with every valid example of a resolved file (see :meth:`resolve`).

        Reads the same bytes the job will (a gs:// object at the generation checked).
        """
        check = JsonlCheck(max_line_bytes=self._max_line, on_example=visit)
        source = handoff["source"]
        try:
            if source.startswith("gs://"):
                parsed = parse_gs_uri(source)
                assert parsed is not None
                self._store.stream_object(*parsed, handoff["generation"], check.feed)
            else:
                self._store.stream_data(source, check.feed)
        except (StorageUnavailable, ObjectMissing) as error:
            reason = type(error).__name__
            raise UpstreamUnavailableError(f"file storage failed ({reason})") from None
        check.finish()

    def _logged(self, message: str, record: dict[str, Any]) -> None:
        log(
            _logger,
            20,
            message,
            file_id=record["id"],
            status=record["status"],
            bytes=record["bytes"],
        )


def _handoff(
    source: str, url: str, sha256: str, size: int, validation: dict[str, Any]
) -> dict[str, Any]:
    return {
        "source": source,
        "url": url,
        "sha256": sha256,
        "bytes": size,
        "format": validation["format"],
        "examples": validation["examples"],
    }
