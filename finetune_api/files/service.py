"""The file service: take a JSONL file, check it, keep it, and hand a job exactly those bytes.

Every route of ``/files`` (and the OpenAI-compatible ``/v1/files``) and the
``training_file`` / ``validation_file`` fields of a submission go through
:class:`FileService`. Nothing here knows HTTP: streams in, File records out,
and one :class:`~finetune_api.core.errors.ServiceError` per failure.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any, BinaryIO

from finetune_api.core.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
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
    """The File object a caller sees (the store's private keys start with ``_``)."""
    shown = {key: value for key, value in record.items() if not key.startswith("_")}
    if shown.get("status") != PENDING:
        shown.pop("upload_url", None)
    return shown


class FileService:
    def __init__(
        self,
        store: FileStore,
        *,
        max_line_bytes: int,
        url_ttl_seconds: int,
        team: str | None = None,
        visible: Any = None,
    ) -> None:
        self._store = store
        self._max_line = max_line_bytes
        self._ttl = url_ttl_seconds
        # Teams: the team new Files belong to (None: no teams, no tag) and
        # ``visible(team)``, whether this caller may see a File of ``team`` (None: all).
        self.team = team
        self._visible = visible

    def for_caller(self, team: str | None, visible: Any) -> FileService:
        """The same store, acting for one team (see :class:`finetune_api.core.teams.Caller`)."""
        return FileService(
            self._store,
            max_line_bytes=self._max_line,
            url_ttl_seconds=self._ttl,
            team=team,
            visible=visible,
        )

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
        record = self._checked(record, check.finish())
        source.seek(0)
        try:
            self._store.write_data(record["id"], source)
            self._store.write_meta(record, None)
        except StorageUnavailable as error:
            self._forget(record["id"])
            raise _unavailable(error) from None
        self._logged("file uploaded", record)
        return public(record)

    def start_upload(self, filename: Any, size: Any, purpose: Any) -> dict[str, Any]:
        """The large-file path: a File ``pending_upload`` with a resumable session URL.

        With the local store the session is the service's own ``PUT /files/{id}/content``:
        ``upload_url`` is then ``None`` here and the route fills in its own URL.
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise _invalid("bytes", "must be a positive integer (the file's size)")
        check_purpose(purpose)
        record = self._new_record(check_filename(filename), size)
        try:
            record["upload_url"] = self._store.upload_session(record["id"], size)
            self._store.write_meta(record, None)
        except StorageUnavailable as error:
            raise _unavailable(error) from None
        self._logged("file upload started", record)
        return public(record)

    def receive(self, file_id: str, source: BinaryIO, length: int | None) -> None:
        """The local store's upload session: stream the body to disk (``PUT …/content``)."""
        record, _ = self._pending(file_id)
        if length is not None and length != record["bytes"]:
            reason = f"send exactly the {record['bytes']} bytes announced"
            raise _invalid("body", reason)
        try:
            self._store.write_data(file_id, source)
        except StorageUnavailable as error:
            raise _unavailable(error) from None

    def _pending(self, file_id: str) -> tuple[dict[str, Any], str]:
        found = self._read(file_id)
        if found[0]["status"] != PENDING:
            raise ConflictError("this File is no longer pending_upload")
        return found

    def complete(self, file_id: str) -> dict[str, Any]:
        """Check what arrived; the File stays ``pending_upload`` until all of it has."""
        record, token = self._read(file_id)
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
        if arrived != record["bytes"]:
            raise ConflictError(f"{arrived} of the {record['bytes']} bytes announced arrived")
        try:
            result = self._check_stored(file_id)
        except (StorageUnavailable, ObjectMissing) as error:
            raise UpstreamUnavailableError(
                f"file storage failed during the check ({type(error).__name__}); "
                "the File stays pending_upload: call complete again"
            ) from None
        checked = self._checked(record, result)
        try:
            self._store.write_meta(checked, token)
        except Conflict:
            return public(self._read(file_id)[0])  # another complete won; same bytes
        except StorageUnavailable as error:
            raise _unavailable(error) from None
        self._logged("file checked", checked)
        return public(checked)

    def _check_stored(self, file_id: str) -> CheckResult:
        check = JsonlCheck(max_line_bytes=self._max_line)
        self._store.stream_data(file_id, check.feed)
        return check.finish()

    # -- read -------------------------------------------------------------------

    def _read(self, file_id: str) -> tuple[dict[str, Any], str]:
        if not is_file_id(file_id):
            raise NotFoundError("no such file")
        try:
            found = self._store.read_meta(file_id)
        except StorageUnavailable as error:
            raise _unavailable(error) from None
        if found is None or not self.shows(found[0]):
            raise NotFoundError("no such file")
        return found

    def get(self, file_id: str) -> dict[str, Any]:
        return public(self._read(file_id)[0])

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
        self._read(file_id)
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
        record, _ = self._read(file_id)
        if record["status"] == PENDING:
            raise ConflictError("this File is still pending_upload")
        try:
            self._store.stream_data(file_id, sink)
        except (StorageUnavailable, ObjectMissing) as error:
            raise UpstreamUnavailableError(
                f"file storage failed ({type(error).__name__})"
            ) from None

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
        try:
            generation = self._store.object_generation(bucket, name)
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
