"""OpenAI's ``result_files``: a succeeded job's results CSV, a File (``fine-tune-results``).

The file is not stored: its id names the job (``file-results-<project>-<job>``) and
its bytes are made from the job's own log (one row per step line, see
``insights.training_metrics.results_csv``), kept per instance once the job has
finished, like the metrics answer. It exists once the job has succeeded
(``completed``); before that, and for an unknown job, the id is a 404. It cannot
be deleted (409): it is the job's log, read again.
"""

from __future__ import annotations

import re
from typing import Any

from finetune_api.core.errors import ConflictError, NotFoundError
from finetune_api.core.timestamps import parse_time

PREFIX = "file-results-"
PURPOSE = "fine-tune-results"
FILENAME = "step_metrics.csv"
_ID = re.compile(rf"^{PREFIX}(?P<project>[A-Za-z0-9]{{1,40}})-(?P<job>[A-Za-z0-9]{{1,40}})\Z")
_NOT_FOUND = "no such file"


def results_file_id(project_id: str, job_id: str) -> str:
    return f"{PREFIX}{project_id}-{job_id}"


def is_results_id(file_id: str) -> bool:
    return file_id.startswith(PREFIX)


class ResultFiles:
    """Retrieve and read results files. Thread-safe (the insights cache is)."""

    def __init__(self, insights: Any) -> None:
        self._insights = insights

    def _ids(self, file_id: str) -> tuple[str, str]:
        match = _ID.match(file_id)
        if match is None:
            raise NotFoundError(_NOT_FOUND)
        return match["project"], match["job"]

    def _finished(self, file_id: str) -> tuple[str, str, dict[str, Any]]:
        project_id, job_id = self._ids(file_id)
        try:
            raw: dict[str, Any] = self._insights.read_job(project_id, job_id)
        except NotFoundError:
            raise NotFoundError(_NOT_FOUND) from None
        if raw.get("current_status") != "TRAINING_JOB_COMPLETED":
            raise NotFoundError(_NOT_FOUND)
        return project_id, job_id, raw

    def content(self, file_id: str) -> bytes:
        project_id, job_id, raw = self._finished(file_id)
        data: bytes = self._insights.results_csv(project_id, job_id, raw)
        return data

    def retrieve(self, file_id: str) -> dict[str, Any]:
        project_id, job_id, raw = self._finished(file_id)
        data: bytes = self._insights.results_csv(project_id, job_id, raw)
        moment = parse_time(raw.get("updated_at"))
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(moment.timestamp()) if moment is not None else 0,
            "filename": FILENAME,
            "purpose": PURPOSE,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }

    def delete(self, file_id: str) -> dict[str, Any]:
        self._finished(file_id)
        raise ConflictError("a results file is made from the job's log and cannot be deleted")


__all__ = ["PURPOSE", "ResultFiles", "is_results_id", "results_file_id"]
