"""The job index: what Baseten does not keep for a job (metadata, suffix, the OpenAI-shaped
request), kept beside the files, and a newest-first list whose page cost follows ``limit``.

No database. One small JSON object per job, in the files' bucket (``FILES_BUCKET``)
or the files' local folder, written once when the job is created (every submit —
``POST /jobs``, Pub/Sub, the Python API and ``POST /v1/fine_tuning/jobs`` — goes
through :meth:`JobService.submit`, which calls :meth:`JobIndex.record`):

- ``jobs/index/<id>.json``: the record. The id is
  ``ftjob-<12 hex of (2**48 - created ms)>-<project id>-<job id>``: ids sort newest
  first, so listing the prefix in name order *is* the newest-first list, ``after``
  is a start offset, and one page reads ``limit + 1`` names and ``limit`` records
  whatever the history. The id also names the Baseten job, so a retrieve needs no
  lookup.
- ``jobs/metadata/<sha256(key, value)[:32]>/<id>``: an empty marker per metadata
  pair, so ``metadata[k]=v`` is a prefix listing of its own (same cost); with several
  pairs the first one's markers are listed and the others checked on the records.

Writes are create-only (``if_generation_match=0``; an exclusive create on disk), so
an idempotent replay or a retried hook writes nothing twice. The record of a job
that reached a terminal status is updated once with that status (best effort),
so a page reads Baseten only for jobs still moving.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from finetune_api.core.cloud_storage import describe, storage_client
from finetune_api.core.logs import get_logger, log
from finetune_api.core.timestamps import parse_time

_logger = get_logger("job_index")

INDEX = "jobs/index/"
BY_METADATA = "jobs/metadata/"
# jobs/by-file/<file id>/<ftjob id>: an empty marker per File a job trains or
# validates on, so DELETE /files/{id} finds the jobs that may still need it.
BY_FILE = "jobs/by-file/"
_FILE_ID = re.compile(r"^file-[0-9a-f]{24}\Z")
_SPAN = 2**48
JOB_ID = re.compile(
    r"^ftjob-(?P<stamp>[0-9a-f]{12})-(?P<project>[A-Za-z0-9]{1,40})-(?P<job>[A-Za-z0-9]{1,40})\Z"
)
_BASETEN_ID = re.compile(r"^[A-Za-z0-9]{1,40}\Z")
# The learning rate a learning_rate_multiplier of 1 means (Hyperparameters' default).
BASE_LEARNING_RATE = 2e-4


class IndexUnavailable(Exception):
    """The index store failed (outage, timeout)."""


class IndexConflict(Exception):
    """The object exists already, or changed since it was read."""


def openai_job_id(project_id: str, job_id: str, created_at: Any) -> str | None:
    """The ``ftjob-…`` id of a Baseten job; None when its ids cannot be carried in one."""
    if not (_BASETEN_ID.match(project_id) and _BASETEN_ID.match(job_id)):
        return None
    moment = parse_time(created_at)
    millis = int(moment.timestamp() * 1000) if moment is not None else int(time.time() * 1000)
    return f"ftjob-{_SPAN - millis:012x}-{project_id}-{job_id}"


def parse_job_id(value: str) -> tuple[str, str] | None:
    """``(project_id, job_id)`` of an ``ftjob-…`` id, else None."""
    match = JOB_ID.match(value) if isinstance(value, str) else None
    return (match["project"], match["job"]) if match else None


def metadata_key(key: str, value: str) -> str:
    return hashlib.sha256(json.dumps([key, value]).encode()).hexdigest()[:32]


def index_record(job: Any, request: Any, labels: dict[str, Any] | None) -> dict[str, Any] | None:
    """The index record of a job just created from ``request`` (a TrainingRequest)."""
    job_id = openai_job_id(job.training_project_id, job.training_job_id, job.created_at)
    if job_id is None:
        return None
    labels = labels or {}
    hp = request.hyperparameters
    moment = parse_time(job.created_at)
    created = int(moment.timestamp()) if moment is not None else int(time.time())
    deploy = request.deploy
    return {
        "id": job_id,
        "training_project_id": job.training_project_id,
        "training_job_id": job.training_job_id,
        "job_name": job.job_name,
        "created_at": created,
        "model": request.model_id,
        "training_file": request.training_file or request.dataset_id,
        "validation_file": request.validation_file,
        "hyperparameters": {
            "n_epochs": hp.num_epochs,
            "batch_size": hp.batch_size,
            "learning_rate_multiplier": round(hp.learning_rate / BASE_LEARNING_RATE, 6),
        },
        "seed": hp.seed,
        "suffix": labels.get("suffix"),
        "metadata": labels.get("metadata"),
        "deploy_model_name": deploy.model_name if deploy is not None else None,
        "deploy_on_completion": bool(deploy is not None and deploy.on_completion),
        "final_status": None,
        "finished_at": None,
    }


class _Missing(Exception):
    pass


class ObjectStore(Protocol):
    def read(self, name: str) -> tuple[bytes, str] | None: ...
    def create(self, name: str, data: bytes) -> None: ...
    def replace(self, name: str, data: bytes, token: str) -> None: ...
    def names(self, prefix: str, start_after: str | None, count: int) -> list[str]: ...


class LocalObjects:
    """The files' local folder (``FILES_DIR``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    def read(self, name: str) -> tuple[bytes, str] | None:
        path = self.root / name
        try:
            data = path.read_bytes()
            return data, str(path.stat().st_mtime_ns)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise IndexUnavailable(error.strerror or "cannot read") from None

    def create(self, name: str, data: bytes) -> None:
        """Create-only and atomic: written aside, then linked in (fails if it exists)."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".index-")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.link(temporary, path)
        except FileExistsError:
            raise IndexConflict(name) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)

    def replace(self, name: str, data: bytes, token: str) -> None:
        path = self.root / name
        with self._lock:
            try:
                if str(path.stat().st_mtime_ns) != token:
                    raise IndexConflict(name)
            except FileNotFoundError:
                raise IndexConflict(name) from None
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".index-")
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(temporary, path)

    def names(self, prefix: str, start_after: str | None, count: int) -> list[str]:
        folder = self.root / prefix
        try:
            found = sorted(e.name for e in os.scandir(folder) if not e.name.startswith("."))
        except FileNotFoundError:
            return []
        if start_after is not None:
            found = [name for name in found if name > start_after]
        return found[:count]


class GcsObjects:
    """The files' bucket (``FILES_BUCKET``), through the real ``google-cloud-storage`` client."""

    def __init__(
        self, bucket: str, *, emulator_host: str | None, project: str | None, deadline: float = 30.0
    ) -> None:
        self.bucket_name = bucket
        self._emulator_host = emulator_host
        self._project = project
        self._deadline = deadline
        self._client: Any = None
        self._lock = threading.Lock()

    def _storage(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = storage_client(self._emulator_host, self._project)
            return self._client

    @contextlib.contextmanager
    def _calls(self) -> Iterator[None]:
        from google.api_core import exceptions

        try:
            yield
        except exceptions.NotFound:
            raise _Missing from None
        except exceptions.PreconditionFailed:
            raise IndexConflict("changed") from None
        except (IndexConflict, IndexUnavailable):
            raise
        except Exception as error:  # noqa: BLE001 - anything else is an outage
            raise IndexUnavailable(describe(error)) from None

    def read(self, name: str) -> tuple[bytes, str] | None:
        blob = self._storage().bucket(self.bucket_name).blob(name)
        try:
            with self._calls():
                data = blob.download_as_bytes(timeout=self._deadline)
        except _Missing:
            return None
        return data, str(blob.generation)

    def create(self, name: str, data: bytes) -> None:
        blob = self._storage().bucket(self.bucket_name).blob(name)
        with self._calls():
            blob.upload_from_string(
                data, content_type="application/json", if_generation_match=0, timeout=self._deadline
            )

    def replace(self, name: str, data: bytes, token: str) -> None:
        blob = self._storage().bucket(self.bucket_name).blob(name)
        with self._calls():
            blob.upload_from_string(
                data,
                content_type="application/json",
                if_generation_match=int(token),
                timeout=self._deadline,
            )

    def names(self, prefix: str, start_after: str | None, count: int) -> list[str]:
        with self._calls():
            blobs = self._storage().list_blobs(
                self.bucket_name,
                prefix=prefix,
                start_offset=f"{prefix}{start_after}\x00" if start_after else None,
                max_results=count,
                timeout=self._deadline,
            )
            return [blob.name[len(prefix) :] for blob in blobs]


class JobIndex:
    """Records of the jobs this service created, newest first. Thread-safe."""

    def __init__(self, store: ObjectStore, *, workers: int = 8) -> None:
        self._store = store
        self._workers = workers

    def record(self, job: Any, request: Any, labels: dict[str, Any] | None = None) -> str | None:
        """Index a job just created (or replayed); never raises: the job exists either way."""
        record = index_record(job, request, labels)
        if record is None:
            log(
                _logger,
                30,
                "job ids too long for the index; not listed under /v1",
                training_job_id=job.training_job_id,
            )
            return None
        try:
            self._store.create(f"{INDEX}{record['id']}.json", json.dumps(record).encode())
        except IndexConflict:
            return str(record["id"])  # a replay: already indexed
        except IndexUnavailable as error:
            log(
                _logger,
                40,
                "could not index a job",
                training_job_id=job.training_job_id,
                reason=str(error),
            )
            return str(record["id"])
        for key, value in (record.get("metadata") or {}).items():
            with contextlib.suppress(IndexConflict, IndexUnavailable):
                self._store.create(f"{BY_METADATA}{metadata_key(key, value)}/{record['id']}", b"")
        for ref in {record.get("training_file"), record.get("validation_file")}:
            if isinstance(ref, str) and _FILE_ID.match(ref):
                with contextlib.suppress(IndexConflict, IndexUnavailable):
                    self._store.create(f"{BY_FILE}{ref}/{record['id']}", b"")
        return str(record["id"])

    def jobs_using(self, file_id: str, limit: int = 1000) -> list[str]:
        """The ``ftjob-…`` ids of the jobs created on File ``file_id`` (newest first)."""
        if not _FILE_ID.match(file_id):
            return []
        return self._store.names(f"{BY_FILE}{file_id}/", None, limit)

    def get(self, job_id: str) -> tuple[dict[str, Any], str] | None:
        found = self._store.read(f"{INDEX}{job_id}.json")
        if found is None:
            return None
        return json.loads(found[0]), found[1]

    def settle(
        self,
        record: dict[str, Any],
        token: str,
        final_status: str,
        finished_at: int | None,
        trained_tokens: int | None = None,
    ) -> None:
        """Remember how a job ended so later pages need not ask Baseten (best effort)."""
        updated = {
            **record,
            "final_status": final_status,
            "finished_at": finished_at,
            "trained_tokens": trained_tokens,
        }
        with contextlib.suppress(IndexConflict, IndexUnavailable):
            self._store.replace(f"{INDEX}{record['id']}.json", json.dumps(updated).encode(), token)

    def page(
        self, after: str | None, limit: int, metadata: dict[str, str] | None = None
    ) -> tuple[list[tuple[dict[str, Any], str]], bool]:
        """Up to ``limit`` records, newest first, after ``after``; and whether more follow.

        Unfiltered or with one metadata pair: one listing of ``limit + 1`` names and
        ``limit`` record reads (in parallel). With more pairs, the first pair's
        markers are listed and the records checked against the rest, batch by batch.
        """
        wanted = dict(metadata or {})
        prefix, suffix = INDEX, ".json"
        if wanted:
            first_key, first_value = next(iter(wanted.items()))
            prefix, suffix = f"{BY_METADATA}{metadata_key(first_key, first_value)}/", ""
        cursor = f"{after}{suffix}" if after else None
        found: list[tuple[dict[str, Any], str]] = []
        while True:
            need = limit + 1 - len(found)
            batch = self._store.names(prefix, cursor, need)
            if not batch:
                return found, False
            cursor = batch[-1]
            exact = len(wanted) <= 1  # every listed name matches: the extra one needs no read
            ids = [name.removesuffix(".json") for name in (batch[:limit] if exact else batch)]
            for item in self._read_all(ids):
                if item is None:
                    continue
                meta = item[0].get("metadata") or {}
                if all(meta.get(k) == v for k, v in wanted.items()):
                    found.append(item)
            if exact:
                return found[:limit], len(batch) == need
            if len(found) > limit:
                return found[:limit], True
            if len(batch) < need:
                return found, False

    def _read_all(self, ids: list[str]) -> list[tuple[dict[str, Any], str] | None]:
        if len(ids) <= 1:
            return [self.get(job_id) for job_id in ids]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(self._workers, len(ids))) as pool:
            return list(pool.map(self.get, ids))


def index_from_settings(settings: Any) -> JobIndex:
    """Beside the files: their bucket, or their local folder."""
    if settings.files_bucket:
        return JobIndex(
            GcsObjects(
                settings.files_bucket,
                emulator_host=settings.storage_emulator_host,
                project=settings.google_cloud_project,
            )
        )
    root = settings.files_dir or Path.home() / ".cache" / "finetune-api" / "files"
    return JobIndex(LocalObjects(Path(root)))


__all__ = [
    "BASE_LEARNING_RATE",
    "JobIndex",
    "index_from_settings",
    "index_record",
    "openai_job_id",
    "parse_job_id",
]
