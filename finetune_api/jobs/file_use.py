"""Which job still needs a File: what keeps ``DELETE /files/{id}`` from removing its bytes.

A job's File is read by the job itself (its data URL) and by a resume or an
automatic retry of it, so a File is "needed" while any job created on it has
not ended. The job index keeps a marker per (File, job) (see
:data:`~finetune_api.jobs.index.BY_FILE`); a job the index already knows ended
costs nothing, the others one read at Baseten each. A job Baseten no longer
knows (or that PROJECT_NAME_PREFIX hides) counts as ended.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from finetune_api.core.errors import NotFoundError, UpstreamUnavailableError
from finetune_api.core.schemas import TERMINAL_STATUSES
from finetune_api.jobs.index import IndexUnavailable, JobIndex, parse_job_id


def file_users(
    index: JobIndex, read_job: Callable[[str, str], dict[str, Any]]
) -> Callable[[str], str | None]:
    """``file_id ->`` the job (its ftjob id and Baseten ids) that has not ended and needs
    it, or None."""

    def first_user(file_id: str) -> str | None:
        try:
            job_ids = index.jobs_using(file_id)
            records = [index.get(job_id) for job_id in job_ids]
        except IndexUnavailable as error:
            raise UpstreamUnavailableError(
                f"the job index is unavailable ({error}); retry later"
            ) from None
        for job_id, found in zip(job_ids, records, strict=True):
            if found is not None and found[0].get("final_status"):
                continue  # ended, and the index knows it
            ids = parse_job_id(job_id)
            if ids is None:
                continue
            try:
                job = read_job(*ids)
            except NotFoundError:
                continue
            if job.get("current_status") not in TERMINAL_STATUSES:
                return f"{job_id} (training project {ids[0]}, job {ids[1]})"
        return None

    return first_user
