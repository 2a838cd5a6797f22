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
  pair, so ``metadata[k]=v`` is a prefix listing of its own (same cost). With
  several pairs, the pairs' marker listings (names only, sorted like the ids) are
  joined by leapfrogging (each listing jumps to the largest id another one reached),
  and only the page's matches are read. One page makes at most
  :data:`MAX_LISTINGS` listings of at most :data:`LIST_BATCH` names and ``limit``
  (at most 100) record reads, whatever the filter and the history: when the
  listings run out first, the page comes back shorter (perhaps empty) with
  ``has_more`` and a cursor to go on (see :class:`IndexPage`).

Writes are create-only (``if_generation_match=0``; an exclusive create on disk), so
an idempotent replay or a retried hook writes nothing twice. The record of a job
that reached a terminal status is updated once with that status (best effort),
so a page reads Baseten only for jobs still moving.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from finetune_api.core.buckets import Bucket, BucketUnavailable, Folder, PreconditionFailed
from finetune_api.core.logs import get_logger, log
from finetune_api.core.schemas import method_hyperparameters
from finetune_api.core.timestamps import parse_time

_logger = get_logger("job_index")

INDEX = "jobs/index/"
BY_METADATA = "jobs/metadata/"
PROJECTS = "teams/projects/"
# jobs/by-file/<file id>/<ftjob id>: an empty marker per File a job trains or
# validates on, so DELETE /files/{id} finds the jobs that may still need it.
BY_FILE = "jobs/by-file/"
_FILE_ID = re.compile(r"^file-[0-9a-f]{24}\Z")
_SPAN = 2**48
JOB_ID = re.compile(
    r"^ftjob-(?P<stamp>[0-9a-f]{12})-(?P<project>[A-Za-z0-9]{1,40})-(?P<job>[A-Za-z0-9]{1,40})\Z"
)
#: One page's listings when several metadata pairs are joined, and names per listing:
#: with at most 100 record reads (``limit``), one page makes at most 200 storage requests.
MAX_LISTINGS = 100
LIST_BATCH = 1000
_BASETEN_ID = re.compile(r"^[A-Za-z0-9]{1,40}\Z")
# The learning rate a learning_rate_multiplier of 1 means (Hyperparameters' default).
BASE_LEARNING_RATE = 2e-4


#: The index store failed (outage, timeout).
IndexUnavailable = BucketUnavailable
#: The object exists already, or changed since it was read.
IndexConflict = PreconditionFailed


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
        # Absent from records made before: supervised.
        "method": request.method,
        "dpo_beta": method_hyperparameters(request)["dpo_beta"],
        "suffix": labels.get("suffix"),
        "metadata": labels.get("metadata"),
        "integrations": [
            item.model_dump(exclude_none=True)
            for item in getattr(request, "integrations", None) or []
        ],
        "deploy_model_name": deploy.model_name if deploy is not None else None,
        "deploy_on_completion": bool(deploy is not None and deploy.on_completion),
        "final_status": None,
        "finished_at": None,
    }


class ObjectStore(Protocol):
    """What the index needs of a store: :class:`~finetune_api.core.buckets.Bucket` or
    :class:`~finetune_api.core.buckets.Folder`."""

    def read(self, name: str) -> tuple[bytes, str] | None: ...
    def create(self, name: str, data: bytes) -> Any: ...
    def replace(self, name: str, data: bytes, token: str) -> Any: ...
    def names(
        self, prefix: str, start_after: str | None, count: int, *, inclusive: bool = False
    ) -> list[str]: ...


@dataclass(frozen=True)
class IndexPage:
    """A page of records, whether more may follow, and where to go on from.

    ``cursor``: the id to pass as ``after`` for the next page; the last record's id,
    or, when the page's listings ran out before it found any match, the last id it
    examined (a page may then be empty and still have ``has_more``).
    """

    records: list[tuple[dict[str, Any], str]]
    has_more: bool
    cursor: str | None


class _Spent(Exception):
    """The page's listings are used up."""


class _Names:
    """One metadata pair's marker names, read forward in batches, able to jump ahead."""

    def __init__(self, store: ObjectStore, prefix: str, budget: list[int]) -> None:
        self.store = store
        self._prefix = prefix
        self._budget = budget
        self._buffer: deque[str] = deque()
        self._last: str | None = None  # the last name fetched
        self._ended = False  # no name after ``_last``

    def first(self, bound: str | None, *, inclusive: bool) -> str | None:
        """The first name after ``bound`` (or from it when ``inclusive``); None: there is none."""

        def before(name: str) -> bool:
            return bound is not None and (name < bound or (name == bound and not inclusive))

        while self._buffer and before(self._buffer[0]):
            self._buffer.popleft()
        if self._buffer:
            return self._buffer[0]
        if self._ended and (bound is None or self._last is None or bound >= self._last):
            return None
        if self._budget[0] <= 0:
            raise _Spent
        self._budget[0] -= 1
        batch = self.store.names(self._prefix, bound, LIST_BATCH, inclusive=inclusive)
        self._ended = len(batch) < LIST_BATCH
        self._last = batch[-1] if batch else bound
        self._buffer = deque(batch)
        return batch[0] if batch else None


#: The files' local folder (``FILES_DIR``).
LocalObjects = Folder


class JobIndex:
    """Records of the jobs this service created, newest first. Thread-safe."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        workers: int = 8,
        team_of: Any = None,
        visible: Any = None,
    ) -> None:
        self.store = store
        self._workers = workers
        # Teams: ``team_of(project_name)`` tags each record with its job's team;
        # ``visible(team)`` says whether this caller may list a record (None: all).
        self._team_of = team_of
        self._visible = visible
        self._projects_known: set[str] = set()  # project records written by this process

    def for_caller(self, visible: Any) -> JobIndex:
        """The same index, listing only the records ``visible(team)`` allows."""
        return JobIndex(self.store, workers=self._workers, team_of=self._team_of, visible=visible)

    def shows(self, record: dict[str, Any]) -> bool:
        return self._visible is None or bool(self._visible(record.get("team")))

    def record(self, job: Any, request: Any, labels: dict[str, Any] | None = None) -> str | None:
        """Index a job just created (or replayed); never raises: the job exists either way."""
        record = index_record(job, request, labels)
        team = self._team_of(request.project_name) if self._team_of is not None else None
        if team is not None:
            self._remember_project(job.training_project_id, team)
        if record is not None and team is not None:
            record["team"] = team
        if record is None:
            log(
                _logger,
                30,
                "job ids too long for the index; not listed under /v1",
                training_job_id=job.training_job_id,
            )
            return None
        try:
            self.store.create(f"{INDEX}{record['id']}.json", json.dumps(record).encode())
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
                self.store.create(f"{BY_METADATA}{metadata_key(key, value)}/{record['id']}", b"")
        for ref in {record.get("training_file"), record.get("validation_file")}:
            if isinstance(ref, str) and _FILE_ID.match(ref):
                with contextlib.suppress(IndexConflict, IndexUnavailable):
                    self.store.create(f"{BY_FILE}{ref}/{record['id']}", b"")
        return str(record["id"])

    def _remember_project(self, project_id: str, team: str) -> None:
        """Which team a Baseten project is (create-only; a project never changes team)."""
        if not _BASETEN_ID.match(str(project_id)) or project_id in self._projects_known:
            return
        try:
            self.store.create(f"{PROJECTS}{project_id}", team.encode())
        except IndexConflict:
            pass  # written before (by any instance)
        except IndexUnavailable:
            return  # tried again on the next submit
        self._projects_known.add(project_id)

    def project_team(self, project_id: str) -> str | None:
        """The team that made ``project_id``'s jobs (None: unknown), read from storage only.

        Lets a team's deployment read decide ownership without a Baseten call that
        only another team's id would cause (see docs/security.md).
        """
        if not _BASETEN_ID.match(str(project_id)):
            return None
        found = self.store.read(f"{PROJECTS}{project_id}")
        return found[0].decode("utf-8", "replace") if found is not None else None

    def jobs_using(self, file_id: str, limit: int = 1000) -> list[str]:
        """The ``ftjob-…`` ids of the jobs created on File ``file_id`` (newest first)."""
        if not _FILE_ID.match(file_id):
            return []
        return self.store.names(f"{BY_FILE}{file_id}/", None, limit)

    def get(self, job_id: str) -> tuple[dict[str, Any], str] | None:
        found = self.store.read(f"{INDEX}{job_id}.json")
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
            self.store.replace(f"{INDEX}{record['id']}.json", json.dumps(updated).encode(), token)

    def page(
        self, after: str | None, limit: int, metadata: dict[str, str] | None = None
    ) -> tuple[list[tuple[dict[str, Any], str]], bool]:
        """Up to ``limit`` records, newest first, after ``after``; and whether more follow."""
        found = self.scan(after, limit, metadata)
        return found.records, found.has_more

    def scan(
        self, after: str | None, limit: int, metadata: dict[str, str] | None = None
    ) -> IndexPage:
        """Up to ``limit`` records, newest first, after ``after`` (see :class:`IndexPage`).

        Unfiltered or with one metadata pair: one listing of ``limit + 1`` names and
        ``limit`` record reads (in parallel). With more pairs: the pairs' marker
        listings joined (at most :data:`MAX_LISTINGS`), then the matches' records read.
        """
        wanted = dict(metadata or {})
        if len(wanted) >= 2:
            return self._joined(after, limit, wanted)
        prefix, suffix = INDEX, ".json"
        if wanted:
            first_key, first_value = next(iter(wanted.items()))
            prefix, suffix = f"{BY_METADATA}{metadata_key(first_key, first_value)}/", ""
        batch = self.store.names(prefix, f"{after}{suffix}" if after else None, limit + 1)
        ids = [name.removesuffix(".json") for name in batch[:limit]]
        records = [item for item in self._read_all(ids) if item is not None]
        records = [item for item in records if _carries(item[0], wanted) and self.shows(item[0])]
        more = len(batch) == limit + 1
        return IndexPage(records, more, ids[-1] if ids else None)

    def _joined(self, after: str | None, limit: int, wanted: dict[str, str]) -> IndexPage:
        budget = [MAX_LISTINGS]
        streams = [
            _Names(self.store, f"{BY_METADATA}{metadata_key(k, v)}/", budget)
            for k, v in wanted.items()
        ]
        matches: list[str] = []
        settled = after  # every id up to here is decided (a match, or proven not one)
        try:
            target = streams[0].first(after, inclusive=False)
            while target is not None and len(matches) <= limit:
                for stream in streams:
                    head = stream.first(target, inclusive=True)
                    if head != target:
                        # No match in [target, head): jump every listing to ``head``.
                        settled, target = target, head
                        break
                else:
                    matches.append(target)
                    settled = target
                    target = streams[0].first(target, inclusive=False)
            more = target is not None
        except _Spent:
            more = True
        page = matches[:limit]
        more = more or len(matches) > limit
        records = [item for item in self._read_all(page) if item is not None]
        records = [item for item in records if _carries(item[0], wanted) and self.shows(item[0])]
        cursor = page[-1] if page else (settled if more else None)
        return IndexPage(records, more, cursor)

    def _read_all(self, ids: list[str]) -> list[tuple[dict[str, Any], str] | None]:
        if len(ids) <= 1:
            return [self.get(job_id) for job_id in ids]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(self._workers, len(ids))) as pool:
            return list(pool.map(self.get, ids))


def _carries(record: dict[str, Any], wanted: dict[str, str]) -> bool:
    """The record really carries every wanted pair (a marker is only a hash)."""
    meta = record.get("metadata") or {}
    return all(meta.get(k) == v for k, v in wanted.items())


def index_from_settings(settings: Any, team_of: Any = None) -> JobIndex:
    """Beside the files: their bucket, or their local folder."""
    if settings.files_bucket:
        return JobIndex(
            Bucket(
                settings.files_bucket,
                emulator_host=settings.storage_emulator_host,
                project=settings.google_cloud_project,
            ),
            team_of=team_of,
        )
    root = settings.files_dir or Path.home() / ".cache" / "finetune-api" / "files"
    return JobIndex(LocalObjects(Path(root)), team_of=team_of)


__all__ = [
    "BASE_LEARNING_RATE",
    "LIST_BATCH",
    "MAX_LISTINGS",
    "IndexPage",
    "JobIndex",
    "index_from_settings",
    "index_record",
    "openai_job_id",
    "parse_job_id",
]
