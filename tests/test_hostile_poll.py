"""The poll and the deployments under hostile input (issue 21, items 3, 7, 8, 9).

Archives any workspace user can push (truncated, a bz2 bomb of members or of
bytes) are read within caps and never fail a poll; with ``PROJECT_NAME_PREFIX``
the poll reports, reads and downloads nothing of other projects, a deploy goes
only into a model this service made or one inside the scope, and ``deactivate``
acts only on deployments that carry this service's marker.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import tarfile
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from finetune_api.baseten.client import BasetenClient
from finetune_api.core.errors import InvalidRequestError, NotFoundError
from finetune_api.core.schemas import DeploymentRequest, TrainingRequest
from finetune_api.core.settings import Settings
from finetune_api.jobs import runtime_config as archives
from finetune_api.jobs.runtime_config import ArchiveUnreadable, read_runtime_config
from finetune_api.jobs.service import JobService
from finetune_api.notify.webhooks import DeliveryResult
from finetune_api.polling.poller import poll
from finetune_api.runtime import build_serving
from sandbox import Sandbox
from tests.poll_fixtures import (  # noqa: F401 - fixtures
    API_KEY,
    LogLines,
    baseten_fixture,
    baseten_server_fixture,
    make_client,
    make_settings,
    service_logs_fixture,
)

PREFIX = "svc-"
CONFIG = {"deploy": {"on_completion": True, "model_name": "svc-bot"}}


def tar(members: list[tuple[str, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def template_archive() -> bytes:
    config = json.dumps(CONFIG).encode()
    return tar([("t/train.py", b"print(1)\n"), ("t/runtime_config.json", config)])


def member_bomb(members: int) -> bytes:
    """A bz2 tar of ``members`` empty members: one header block each, then the end."""
    header = tarfile.TarInfo("e").tobuf(tarfile.USTAR_FORMAT)
    compressor = bz2.BZ2Compressor(9)
    parts = [compressor.compress(header * 1000) for _ in range(members // 1000)]
    return b"".join([*parts, compressor.compress(bytes(1024)), compressor.flush()])


class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def emit(self, event: Any) -> DeliveryResult:
        self.events.append(event)
        return DeliveryResult(event.id, delivered=False, failed=False)


class Watched(BasetenClient):
    """The real client, recording which jobs' checkpoints and archives were asked for."""

    archive: bytes | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checkpoint_reads: list[str] = []
        self.archive_reads: list[str] = []

    def list_checkpoints(self, project_id: str, job_id: str) -> list[dict[str, Any]]:
        self.checkpoint_reads.append(project_id)
        return super().list_checkpoints(project_id, job_id)

    def job_artifact_urls(self, project_id: str, job_id: str) -> list[str]:
        self.archive_reads.append(project_id)
        return ["https://archive.invalid/a.tgz"] if self.archive is not None else []

    def fetch_artifact(self, url: str, max_bytes: int) -> bytes:
        assert self.archive is not None
        return self.archive


def watched_client(settings: Settings) -> Watched:
    from finetune_api.baseten.client import RateLimiter

    return Watched(settings, lambda: API_KEY, limiter=RateLimiter(1000.0))


@pytest.fixture
def settings(baseten: Sandbox) -> Settings:
    # The truss deployer talks to the remote (app) URL: the sandbox serves both.
    return make_settings(
        baseten, baseten_max_retries=0, baseten_api_key=API_KEY, baseten_remote_url=baseten.url
    )


@pytest.fixture
def scoped(baseten: Sandbox) -> Settings:
    return make_settings(
        baseten,
        baseten_max_retries=0,
        baseten_api_key=API_KEY,
        baseten_remote_url=baseten.url,
        project_name_prefix=PREFIX,
    )


def completed(sb: Sandbox, prefix: str) -> tuple[str, str]:
    [project] = sb.seed(name_prefix=prefix, status="TRAINING_JOB_COMPLETED", checkpoints_per_job=1)[
        "projects"
    ]
    return project["id"], project["job_ids"][0]


# -- 3: archives ---------------------------------------------------------------------------


def test_a_readable_archive_still_gives_its_config() -> None:
    assert read_runtime_config(template_archive()) == CONFIG
    assert read_runtime_config(gzip.compress(template_archive())) == CONFIG
    assert read_runtime_config(bz2.compress(template_archive())) == CONFIG
    # The shallowest runtime_config.json wins, wherever it comes in the archive.
    deep = tar([("a/b/runtime_config.json", b'{"deploy": null}'), ("runtime_config.json", b"{}")])
    assert read_runtime_config(deep) == {}


@pytest.mark.parametrize(
    "data",
    [
        gzip.compress(template_archive())[:-40],
        bz2.compress(template_archive())[:-40],
        template_archive()[:700],
        b"BZh9 not really",
    ],
    ids=["gzip", "bz2", "tar", "garbage"],
)
def test_a_truncated_archive_is_unreadable_not_an_error(
    data: bytes, service_logs: LogLines
) -> None:
    with pytest.raises(ArchiveUnreadable):
        read_runtime_config(data)
    assert archives.runtime_config_from_archive(data) is None
    [record] = [r for r in service_logs.records() if "archive is unreadable" in r["message"]]
    assert record["severity"] == "WARNING"


def test_a_bz2_member_bomb_stops_at_the_member_cap_quickly_and_small() -> None:
    # 20 times the cap (bench/hostile_bounds.py measures the 300,000).
    data = member_bomb(20 * archives.MAX_ARCHIVE_MEMBERS)
    assert len(data) < 2000
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(ArchiveUnreadable, match="members"):
        read_runtime_config(data)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Before: every member read and held (300,000: 8.6 s, +109 MB). Now: the caps.
    assert seconds < archives.MAX_ARCHIVE_SECONDS + 1
    assert peak < 4 * 1024 * 1024


def test_a_bz2_byte_bomb_stops_at_the_unpacked_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "MAX_ARCHIVE_UNPACKED_BYTES", 4 * 1024 * 1024)
    data = bz2.compress(tar([("zeros", bytes(8 * 1024 * 1024))]), 9)
    with pytest.raises(ArchiveUnreadable, match="unpacks to more than"):
        read_runtime_config(data)


def test_an_archive_slower_than_the_time_cap_is_unreadable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(archives, "MAX_ARCHIVE_SECONDS", 0.0)
    with pytest.raises(ArchiveUnreadable, match="longer than"):
        read_runtime_config(template_archive())


def test_a_poll_goes_on_past_an_unreadable_archive(
    baseten: Sandbox, settings: Settings, service_logs: LogLines
) -> None:
    completed(baseten, "p")
    client = watched_client(settings)
    client.archive = gzip.compress(template_archive())[:-40]
    _, serving = build_serving(settings, client, lambda: API_KEY)
    sink = Recorder()
    report = poll(settings, client, sink, None, serving=serving)
    assert {e.type for e in sink.events} == {
        "training_job.completed",
        "training_job.checkpoint_created",
    }
    assert report.deployments_failed == 0 and report.jobs_failed == 0
    assert baseten.state.deployments.all()["deployments"] == []
    assert "archive is unreadable" in service_logs.text
    client.close()


# -- 7: the poll sees what the routes see --------------------------------------------------


def test_the_poll_sees_nothing_outside_the_prefix(
    baseten: Sandbox, settings: Settings, scoped: Settings
) -> None:
    # Another team's deployment, made by an instance without the prefix.
    other_p, other_j = completed(baseten, "other")
    unscoped_client = make_client(settings)
    unscoped, _ = build_serving(settings, unscoped_client, lambda: API_KEY)
    unscoped.deploy(other_p, other_j, DeploymentRequest(model_name="other-bot"))
    failed = baseten.seed(name_prefix="other-failing", status="TRAINING_JOB_RUNNING")
    baseten.append_logs(failed["job_ids"][0], ["secret stuff of another team"])
    baseten.set_status(failed["job_ids"][0], "TRAINING_JOB_FAILED", error_message="theirs")
    own_p, own_j = completed(baseten, "svc-own")

    client = watched_client(scoped)
    client.archive = template_archive()
    _, serving = build_serving(scoped, client, lambda: API_KEY)
    sink = Recorder()
    report = poll(scoped, client, sink, None, serving=serving)
    jobs = {e.data.get("training_job_id") for e in sink.events}
    assert jobs == {own_j}, [e.type for e in sink.events]
    # Its own auto-deploy is watched; the other team's deployment is not reported.
    watched = [e.data for e in sink.events if e.type.startswith("deployment.")]
    assert watched and {d["training_project_id"] for d in watched} == {own_p}
    assert set(client.checkpoint_reads) == {own_p}
    assert set(client.archive_reads) == {own_p}
    assert report.jobs_checked == 1
    client.close()
    unscoped_client.close()


# -- 8: deploying only into models of the scope -------------------------------------------


def test_a_deploy_into_someone_elses_model_is_refused_and_creates_nothing(
    baseten: Sandbox, settings: Settings, scoped: Settings
) -> None:
    other_p, other_j = completed(baseten, "other")
    unscoped_client = make_client(settings)
    unscoped, _ = build_serving(settings, unscoped_client, lambda: API_KEY)
    theirs = unscoped.deploy(other_p, other_j, DeploymentRequest(model_name="prod-chat"))
    # Someone else's model: one of its deployments is not this service's.
    unscoped_client.rename_deployment(str(theirs.model_id), str(theirs.deployment_id), "v1")
    own_p, own_j = completed(baseten, "svc-own")
    client = make_client(scoped)
    deployments, _ = build_serving(scoped, client, lambda: API_KEY)
    mutations = baseten.state.deployments.mutations
    for request in (
        DeploymentRequest(model_name="prod-chat"),
        DeploymentRequest(model_name="prod-chat", dry_run=True),
    ):
        with pytest.raises(InvalidRequestError) as caught:
            deployments.deploy(own_p, own_j, request)
        assert caught.value.status == 400
        assert [d["location"] for d in caught.value.details or []] == ["model_name"]
    assert baseten.state.deployments.mutations == mutations
    assert len(baseten.state.deployments.all()["deployments"]) == 1

    # Submitting with deploy.model_name naming it is refused the same way, before any push.
    pushed: list[Any] = []
    jobs = JobService(scoped, client, pusher=pushed.append)
    body = {
        "dataset_id": "a/b",
        "model_id": "c/d",
        "deploy": {"on_completion": True, "model_name": "prod-chat"},
    }
    with pytest.raises(InvalidRequestError) as caught:
        jobs.submit(TrainingRequest.model_validate(body))
    assert [d["location"] for d in caught.value.details or []] == ["deploy.model_name"]
    assert pushed == []

    # A name inside the scope, or a new model, is deployed as before.
    mine = deployments.deploy(own_p, own_j, DeploymentRequest(model_name="svc-chat"))
    assert mine.model_name == "svc-chat"
    again = deployments.deploy(own_p, own_j, DeploymentRequest(model_name="fresh-model"))
    assert again.model_name == "fresh-model"
    client.close()
    unscoped_client.close()


# -- 9: deactivate only what this service made ----------------------------------------------


def test_deactivate_acts_only_on_this_services_deployments(
    baseten: Sandbox, settings: Settings
) -> None:
    project_id, job_id = completed(baseten, "p")
    client = make_client(settings)
    deployments, _ = build_serving(settings, client, lambda: API_KEY)
    ours = deployments.deploy(project_id, job_id, DeploymentRequest(model_name="bot"))
    other_p, other_j = completed(baseten, "q")
    theirs = deployments.deploy(other_p, other_j, DeploymentRequest(model_name="prod"))
    client.rename_deployment(str(theirs.model_id), str(theirs.deployment_id), "production")
    with pytest.raises(NotFoundError) as caught:
        deployments.deactivate(str(theirs.model_id), str(theirs.deployment_id))
    assert caught.value.message == "deployment not found on Baseten"
    states = {d["id"]: d["status"] for d in baseten.state.deployments.all()["deployments"]}
    assert states[theirs.deployment_id] != "INACTIVE"
    assert deployments.deactivate(str(ours.model_id), str(ours.deployment_id)).status == "inactive"
    client.close()


@pytest.fixture(autouse=True)
def _no_leftovers(baseten: Sandbox) -> Iterator[None]:
    yield
    baseten.clear_faults()
