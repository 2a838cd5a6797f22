"""Fixtures for the sandbox's own tests: one moto S3 and one sandbox per session.

Every test gets the session sandbox freshly reset, so tests stay independent
without paying for a server per test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from loopback.servers import LocalS3, running_sandbox
from sandbox import Sandbox
from tests.sandbox.support import API_KEY, APP_URL, FakeClock, Http, JobFactory, job_body


@pytest.fixture(scope="session")
def local_s3() -> Iterator[LocalS3]:
    with LocalS3() as s3:
        yield s3


@pytest.fixture(scope="session")
def session_sandbox(local_s3: LocalS3) -> Iterator[Sandbox]:
    with running_sandbox(API_KEY, local_s3.url) as sandbox:
        yield sandbox


@pytest.fixture
def sandbox(session_sandbox: Sandbox) -> Sandbox:
    session_sandbox.reset()
    return session_sandbox


@pytest.fixture
def http(sandbox: Sandbox) -> Http:
    return Http(sandbox.url, API_KEY)


@pytest.fixture
def upload(http: Http, local_s3: LocalS3) -> Callable[[bytes], dict[str, str]]:
    """Get upload credentials from the sandbox and put ``content`` there, like truss does."""

    def _upload(content: bytes = b"archive") -> dict[str, str]:
        reply = http.api("GET", "v1/blobs/credentials/train")
        assert reply.status_code == 200, reply.text
        blob = reply.json()
        local_s3.client().put_object(Bucket=blob["s3_bucket"], Key=blob["s3_key"], Body=content)
        return {"s3_bucket": blob["s3_bucket"], "s3_key": blob["s3_key"]}

    return _upload


@pytest.fixture
def make_job(http: Http, upload: Callable[[bytes], dict[str, str]]) -> JobFactory:
    """Create a project (by name) and a job in it over HTTP; return the job object."""

    def _make(project: str = "proj", **changes: Any) -> dict[str, Any]:
        reply = http.api("POST", "v1/training_projects", {"training_project": {"name": project}})
        assert reply.status_code == 200, reply.text
        project_id = reply.json()["training_project"]["id"]
        created = http.api(
            "POST", f"v1/training_projects/{project_id}/jobs", job_body(upload(b"x"), **changes)
        )
        assert created.status_code == 200, created.text
        job: dict[str, Any] = created.json()["training_job"]
        return job

    return _make


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def private_sandbox(local_s3: LocalS3) -> Iterator[Sandbox]:
    """A sandbox of this test's own, for faults that outlive the request (hangs)."""
    with running_sandbox(API_KEY, local_s3.url) as sandbox:
        yield sandbox


@pytest.fixture
def clocked_sandbox(local_s3: LocalS3, clock: FakeClock) -> Iterator[Sandbox]:
    """A private sandbox on a fake clock, with ``step_seconds=10``."""
    with running_sandbox(API_KEY, local_s3.url, step_seconds=10, clock=clock) as sandbox:
        yield sandbox


@pytest.fixture
def truss_app_url(sandbox: Sandbox) -> Iterator[str]:
    """An app URL that truss maps to the sandbox (through ``API_URL_MAPPING``)."""
    from truss.remote.baseten import api as baseten_api

    baseten_api.API_URL_MAPPING[APP_URL] = sandbox.url
    try:
        yield APP_URL
    finally:
        del baseten_api.API_URL_MAPPING[APP_URL]


@pytest.fixture
def truss_api(truss_app_url: str) -> Any:
    """truss's own ``BasetenApi``, authenticated with ``Api-Key``, talking to the sandbox."""
    from truss.remote.baseten.api import BasetenApi
    from truss.remote.baseten.auth import ApiKeyCredential, AuthService

    return BasetenApi(truss_app_url, AuthService(ApiKeyCredential(api_key=API_KEY)))
