"""``GET /jobs`` reads Baseten's unpaged answers as a stream and keeps only ``limit`` jobs."""

from __future__ import annotations

import pytest
import requests

from finetune_api.baseten.client import BasetenClient
from finetune_api.core.errors import NotFoundError
from finetune_api.jobs.service import JobService
from sandbox import COMPLETED, RUNNING, Sandbox
from tests.poll_fixtures import (  # noqa: F401 - fixtures
    API_KEY,
    baseten_fixture,
    baseten_server_fixture,
    make_client,
    make_settings,
)


def _service(sandbox: Sandbox) -> tuple[JobService, BasetenClient]:
    settings = make_settings(sandbox)
    client = make_client(settings)
    return JobService(settings, client, pusher=lambda _: {}), client


def _whole_search(sandbox: Sandbox) -> int:
    response = requests.post(
        f"{sandbox.url}/v1/training_jobs/search",
        json={},
        headers={"Authorization": f"Api-Key {API_KEY}"},
        timeout=30,
    )
    return len(response.content)


def test_listing_every_project_keeps_the_newest_and_stops_reading(baseten: Sandbox) -> None:
    old = baseten.seed(projects=3, jobs_per_project=200, status=COMPLETED)["job_ids"]
    newest = baseten.seed(projects=1, jobs_per_project=5, status=RUNNING, name_prefix="new")[
        "job_ids"
    ]
    service, client = _service(baseten)

    jobs = service.list(None, [], 5)
    assert [job.training_job_id for job in jobs] == list(reversed(newest))
    # Newest first: reading stopped long before the end of the ~600-job answer.
    assert client.stats()["bytes_received"] < _whole_search(baseten) / 5

    finished = service.list(None, ["completed"], 3)
    assert [job.training_job_id for job in finished] == list(reversed(old[-3:]))
    assert all(job.status == "completed" for job in finished)


def test_listing_one_project_is_bounded_too_and_404s_for_an_unknown_one(baseten: Sandbox) -> None:
    project = baseten.seed(projects=1, jobs_per_project=30)["projects"][0]
    baseten.seed(projects=1, jobs_per_project=3, name_prefix="other")
    service, _ = _service(baseten)
    jobs = service.list(project["id"], [], 4)
    assert [job.training_job_id for job in jobs] == list(reversed(project["job_ids"]))[:4]
    assert {job.training_project_id for job in jobs} == {project["id"]}
    with pytest.raises(NotFoundError):
        service.list("nosuchproject", [], 4)
