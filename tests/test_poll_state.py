"""The poll with its state: in Cloud Storage (fake-gcs-server driven by google-cloud-storage)
and in a local file, against a sandbox whose clock the tests move.

Nothing here is mocked: the state goes through the real ``google-cloud-storage``
client into a real emulator that enforces generation preconditions, Baseten is
the sandbox, webhooks go to a verifying receiver.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from finetune_api.baseten.client import BasetenClient
from finetune_api.core.schemas import PollReport
from finetune_api.core.settings import Settings
from finetune_api.notify.events import Event, EventSink
from finetune_api.notify.webhooks import DeliveryResult, WebhookSender
from finetune_api.polling.gcs_store import GcsStateStore
from finetune_api.polling.poller import poll
from finetune_api.polling.state import (
    ABSENT,
    MAX_STATE_BYTES,
    MAX_TRACKED_JOBS,
    LocalStateStore,
    PollState,
    StateConflict,
    StateStore,
)
from finetune_api.polling.stores import default_state_file, store_from_settings
from loopback.servers import LocalGcs
from loopback.webhook_receiver import WebhookReceiver
from sandbox import COMPLETED, FAILED, RUNNING, Sandbox
from tests.poll_fixtures import (  # noqa: F401 - fixtures
    API_KEY,
    WEBHOOK_SECRET,
    make_client,
    make_settings,
    receiver_fixture,
)
from tests.sandbox.support import FakeClock

OBJECT = "poll-state.json"
SEARCH = "POST /v1/training_jobs/search"
GET_JOB = "GET /v1/training_projects/<project_id>/jobs/<job_id>"
PROJECTS = "GET /v1/training_projects"
CHECKPOINTS = "GET /v1/training_projects/<project_id>/jobs/<job_id>/checkpoints"


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gcs() -> Iterator[LocalGcs]:
    with LocalGcs() as server:
        yield server


@pytest.fixture(scope="module")
def clocked() -> Iterator[tuple[Sandbox, FakeClock]]:
    clock = FakeClock()
    server = Sandbox(API_KEY, clock=clock).start()
    yield server, clock
    server.stop()


@dataclass
class World:
    """The sandbox, its clock, one bucket and the receiver; ``poll()`` runs one poll."""

    sandbox: Sandbox
    clock: FakeClock
    gcs: LocalGcs
    bucket: str
    receiver: WebhookReceiver

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.ns / 1e9, UTC)

    def store(self, **options: Any) -> GcsStateStore:
        options.setdefault("deadline_seconds", 2.0)
        options.setdefault("min_write_interval", 0.0)
        return GcsStateStore(self.bucket, OBJECT, emulator_host=self.gcs.host, **options)

    def settings(self, **overrides: Any) -> Settings:
        overrides.setdefault("webhook_url", self.receiver.url)
        overrides.setdefault("webhook_secret", WEBHOOK_SECRET)
        return make_settings(self.sandbox, **overrides)

    def poll(
        self,
        *,
        advance: float = 60.0,
        store: StateStore | None = None,
        settings: Settings | None = None,
        sink: Any = None,
        client: BasetenClient | None = None,
        since: datetime | None = None,
    ) -> PollReport:
        self.clock.advance(advance)
        settings = settings or self.settings()
        return poll(
            settings,
            client or make_client(settings),
            sink or fast_sink(settings, self.receiver.url),
            since,
            now=self.now(),
            store=store if store is not None else self.store(),
        )

    def saved(self) -> dict[str, Any]:
        blob = self.gcs.client().bucket(self.bucket).blob(OBJECT)
        document: dict[str, Any] = json.loads(blob.download_as_bytes())
        return document

    def routes(self) -> dict[str, int]:
        routes: dict[str, int] = self.sandbox.stats()["by_route"]
        return dict(routes)

    def seed(self, jobs: int = 1, **spec: Any) -> list[str]:
        ids: list[str] = self.sandbox.seed(projects=1, jobs_per_project=jobs, **spec)["job_ids"]
        return ids

    def delivered(self) -> dict[str, int]:
        """How many times each event id was accepted (2xx) by the receiver."""
        counts: dict[str, int] = {}
        for attempt in self.receiver.attempts:
            if attempt.verified and 200 <= attempt.status < 300 and attempt.webhook_id:
                counts[attempt.webhook_id] = counts.get(attempt.webhook_id, 0) + 1
        return counts


@pytest.fixture
def world(clocked: tuple[Sandbox, FakeClock], gcs: LocalGcs, receiver: WebhookReceiver) -> World:
    sandbox, clock = clocked
    sandbox.reset()
    bucket = f"state-{uuid.uuid4().hex[:12]}"
    gcs.client().create_bucket(bucket)
    return World(sandbox, clock, gcs, bucket, receiver)


def fast_sink(settings: Settings, url: str) -> EventSink:
    """A sink whose retries back off for milliseconds, not seconds."""
    sender = WebhookSender(
        url, lambda: WEBHOOK_SECRET, max_attempts=2, backoff_initial=0.01, backoff_max=0.02
    )
    return EventSink(settings, secrets=None, sender=sender)


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


# -- the steady poll: cost follows the active jobs ---------------------------------------


def test_a_steady_poll_reads_active_jobs_and_those_that_left_not_the_history(
    world: World,
) -> None:
    world.seed(600, status=COMPLETED)  # the history
    running = world.seed(3, status=RUNNING, name_prefix="live")
    world.clock.advance(2 * 86400)

    first = world.poll()
    assert first.full_sweep and first.sweep_reason == "state missing" and first.state_saved
    assert first.events == 0  # the history changed long before the window

    world.sandbox.set_status(running[0], COMPLETED)
    before = world.routes()
    client = make_client(world.settings())
    second = world.poll(advance=300, client=client)
    assert not second.full_sweep and second.state_saved
    # 1 search for the active statuses, the project list (no project has a new
    # job), 1 read of the job that left the active set, checkpoints of the 3 jobs.
    assert diff(world.routes(), before) == {
        SEARCH: 1,
        PROJECTS: 1,
        GET_JOB: 1,
        CHECKPOINTS: 3,
    }
    assert [e["type"] for e in world.receiver.events] == ["training_job.completed"]
    assert second.events == second.webhooks_delivered == 1

    # The whole history is ~260 kB; the poll read a small fraction of it.
    everything = requests.post(
        f"{world.sandbox.url}/v1/training_jobs/search",
        json={},
        headers={"Authorization": f"Api-Key {API_KEY}"},
        timeout=30,
    )
    history_bytes = len(everything.content)
    assert history_bytes > 250_000
    assert client.stats()["bytes_received"] < history_bytes / 5

    saved = world.saved()
    assert saved["version"] == 1 and saved["baseten"] == world.sandbox.url
    assert set(saved["jobs"]) == set(running[1:])
    assert saved["jobs"][running[1]]["status"] == RUNNING
    assert f"evt_{running[0]}_completed" in saved["sent"]


def test_jobs_finishing_or_born_and_finished_between_two_polls_are_reported_once(
    world: World,
) -> None:
    [old] = world.seed(status=RUNNING, name_prefix="old")
    world.poll()
    world.receiver.clear()

    world.sandbox.set_status(old, COMPLETED)
    [flash] = world.seed(name_prefix="flash")  # created, then failed before any poll
    world.sandbox.set_status(flash, FAILED, "bad config")
    [busy] = world.seed(name_prefix="busy")  # several statuses between two polls
    world.sandbox.set_status(busy, RUNNING)
    world.sandbox.add_checkpoint(busy)
    world.sandbox.set_status(busy, COMPLETED)

    before = world.routes()
    report = world.poll()
    # The two new projects' jobs were read (newest first, as a stream); the old one's not.
    assert diff(world.routes(), before)[SEARCH] == 1 + 2
    kinds = sorted((e["data"]["training_job_id"], e["type"]) for e in world.receiver.events)
    # The last status of each, as a poll without state reports it, plus the checkpoint.
    assert kinds == sorted(
        [
            (old, "training_job.completed"),
            (flash, "training_job.failed"),
            (busy, "training_job.completed"),
            (busy, "training_job.checkpoint_created"),
        ]
    )
    assert not report.full_sweep
    world.receiver.clear()
    before = world.routes()
    again = world.poll()
    assert world.receiver.events == [] and again.events == 0
    assert again.jobs_checked == 0  # finished and told: not even looked at
    assert diff(world.routes(), before) == {SEARCH: 1, PROJECTS: 1}


def test_an_event_is_posted_once_and_a_failed_delivery_again(world: World) -> None:
    [job] = world.seed(status=RUNNING)
    world.sandbox.add_checkpoint(job)
    first = world.poll()
    assert first.events == 2  # running + checkpoint, in the window of a first poll

    # The next poll's window still holds the checkpoint: found, not posted again.
    second = world.poll()
    assert second.events == 0 and second.events_already_delivered == 1

    world.sandbox.set_status(job, FAILED, "CUDA out of memory")
    world.receiver.respond_with(500, 500)  # both attempts of the failed event
    third = world.poll()
    assert third.webhooks_failed == 1 and third.state_saved

    fourth = world.poll()
    assert fourth.webhooks_delivered == 1 and fourth.events == 1
    assert world.delivered() == {
        f"evt_{job}_running": 1,
        f"evt_{job}_checkpoint_checkpoint-1": 1,
        f"evt_{job}_failed": 1,
    }
    assert world.saved()["jobs"] == {}  # finished and told


def test_since_replays_a_window_even_what_was_delivered(world: World) -> None:
    [job] = world.seed()
    world.poll()
    replay = world.poll(since=world.now() - timedelta(hours=1))
    assert replay.full_sweep and replay.sweep_reason == "since given: replaying a window"
    assert replay.events == 1 and world.delivered() == {f"evt_{job}_created": 2}


# -- full sweeps -----------------------------------------------------------------------------


def test_lost_state_costs_one_full_sweep(world: World) -> None:
    [job] = world.seed(status=RUNNING)
    world.poll()
    world.gcs.client().bucket(world.bucket).blob(OBJECT).delete()

    world.sandbox.set_status(job, COMPLETED)
    lost = world.poll()
    assert lost.full_sweep and lost.sweep_reason == "state missing" and lost.state_saved
    assert lost.events == 1  # the change is still reported
    assert not world.poll().full_sweep


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b'{"version": 99}',
        b'{"version": 1, "jobs": []}',
        b"\xff\xfe",
        b"[" * 200_000,  # deeper than json's recursion limit: a RecursionError, not a ValueError
        b'{"version": 1, "jobs": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"}",
        b" " * (MAX_STATE_BYTES + 1),
    ],
    ids=[
        "not-json",
        "other-version",
        "wrong-shape",
        "not-utf8",
        "nested-deeply",
        "objects-nested-deeply",
        "too-large",
    ],
)
def test_corrupt_state_is_replaced_after_a_full_sweep(world: World, content: bytes) -> None:
    [job] = world.seed(status=RUNNING)
    world.gcs.client().bucket(world.bucket).blob(OBJECT).upload_from_string(content)
    report = world.poll()
    assert report.full_sweep and report.sweep_reason is not None
    assert report.sweep_reason.startswith("state unreadable")
    assert report.state_saved and report.events == 1
    assert world.saved()["jobs"][job]["status"] == RUNNING
    assert not world.poll().full_sweep


def test_a_state_naming_thousands_of_tracked_jobs_is_not_read_job_by_job(world: World) -> None:
    [job] = world.seed(status=RUNNING)
    world.poll()
    state = world.saved()
    project = state["jobs"][job]["project"]
    fake = {"project": project, "status": RUNNING, "owed_since": None}
    state["jobs"] |= {f"fake{i:05d}": fake for i in range(MAX_TRACKED_JOBS + 1)}
    world.gcs.client().bucket(world.bucket).blob(OBJECT).upload_from_string(json.dumps(state))
    before = world.routes()
    report = world.poll()
    spent = diff(world.routes(), before)
    assert report.full_sweep and report.sweep_reason is not None
    assert report.sweep_reason.startswith("state unreadable")
    assert spent.get(GET_JOB, 0) == 0  # not one read per planted job
    assert report.state_saved and set(world.saved()["jobs"]) == {job}
    assert not world.poll().full_sweep


def test_state_of_another_baseten_is_not_used(world: World) -> None:
    world.seed(status=RUNNING)
    world.poll()
    other = world.settings(baseten_api_url="http://127.0.0.1:9")  # nothing listens there
    store = world.store()
    from finetune_api.polling.state import load

    loaded = load(store, other.resolved_api_url)
    assert loaded.state is None and loaded.problem == "unreadable: it describes another Baseten"


def test_full_sweeps_when_stale_and_on_schedule(world: World) -> None:
    world.seed(status=RUNNING)
    settings = world.settings(poll_full_sweep_hours=1, poll_lookback_seconds=1800)
    assert world.poll(settings=settings).sweep_reason == "state missing"
    for _ in range(5):
        assert not world.poll(settings=settings, advance=600).full_sweep
    scheduled = world.poll(settings=settings, advance=600)  # an hour after the last sweep
    assert scheduled.sweep_reason == "scheduled (every 1 h)"
    assert not world.poll(settings=settings, advance=600).full_sweep
    stale = world.poll(settings=settings, advance=1801)  # a gap longer than the lookback
    assert stale.sweep_reason == "state older than the lookback"


# -- failures -----------------------------------------------------------------------------------


def test_a_stale_writer_loses(world: World) -> None:
    jobs = world.seed(2)
    world.poll()
    for job in jobs:
        world.sandbox.set_status(job, RUNNING)
    settings = world.settings(poll_concurrency=1)
    reports: list[PollReport] = []

    class SlowPoll:
        """A sink in which, mid-poll, a second poll runs to the end and saves first."""

        def __init__(self) -> None:
            self.inner = fast_sink(settings, world.receiver.url)

        def emit(self, event: Event) -> DeliveryResult:
            if not reports:
                reports.append(world.poll(advance=1))
            return self.inner.emit(event)

    stale = world.poll(sink=SlowPoll(), settings=settings)
    [fresh] = reports
    assert fresh.state_saved
    assert not stale.state_saved
    assert stale.state_problem == "not saved: another poll saved the state after this one read it"
    assert world.saved()["until"] == fresh.until  # the fresh poll's state stands


class Died(BaseException):
    """The poll's process dying (not an error the poll could catch)."""


def test_a_poll_that_dies_halfway_neither_loses_nor_repeats_a_notice(world: World) -> None:
    jobs = world.seed(4)
    world.poll()
    for job in jobs:
        world.sandbox.set_status(job, FAILED, "boom")
    settings = world.settings(poll_concurrency=1)

    class DiesAfterTwo:
        def __init__(self) -> None:
            self.inner = fast_sink(settings, world.receiver.url)
            self.calls = 0

        def emit(self, event: Event) -> DeliveryResult:
            self.calls += 1
            if self.calls == 3:
                raise Died
            return self.inner.emit(event)

    def failed_notices() -> dict[str, int]:
        return {k: v for k, v in world.delivered().items() if k.endswith("_failed")}

    with pytest.raises(Died):
        world.poll(sink=DiesAfterTwo(), settings=settings)
    assert 2 <= len(failed_notices()) < 4  # some notices went out, not all

    after = world.poll(settings=settings)
    assert after.state_saved
    assert failed_notices() == {f"evt_{job}_failed": 1 for job in jobs}
    assert after.events_already_delivered == 4 - after.events


def test_a_storage_outage_still_reports_changes_and_says_the_state_was_not_saved(
    world: World,
) -> None:
    with LocalGcs() as down:
        down.client().create_bucket("outage")
        store = GcsStateStore(
            "outage", OBJECT, emulator_host=down.host, deadline_seconds=1, min_write_interval=0
        )
        [job] = world.seed(status=RUNNING)
        assert world.poll(store=store).state_saved
        world.sandbox.set_status(job, COMPLETED)
        down.stop()
        report = world.poll(store=store)
    assert report.full_sweep and report.sweep_reason is not None
    assert report.sweep_reason.startswith("state unavailable")
    assert report.events == report.webhooks_delivered == 1
    assert [e["type"] for e in world.receiver.events][-1] == "training_job.completed"
    assert not report.state_saved
    assert report.state_problem is not None and "unavailable" in report.state_problem


# -- the local store (the default) ---------------------------------------------------------------


def test_the_local_store_is_the_default(tmp_path: Path) -> None:
    settings = make_settings_plain(poll_state_file=str(tmp_path / "state.json"))
    store = store_from_settings(settings)
    assert isinstance(store, LocalStateStore) and store.path == tmp_path / "state.json"
    assert isinstance(store_from_settings(make_settings_plain()), LocalStateStore)
    assert default_state_file() == Path.home() / ".cache" / "finetune-api" / "poll-state.json"
    gcs_settings = make_settings_plain(poll_state_bucket="b", poll_state_object="x/state.json")
    gcs_store = store_from_settings(gcs_settings)
    assert isinstance(gcs_store, GcsStateStore) and gcs_store.description == "gs://b/x/state.json"


def make_settings_plain(**overrides: Any) -> Settings:
    from finetune_api.core.settings import load_settings

    return load_settings({}, **overrides)


def test_the_local_store_lets_a_stale_writer_lose(tmp_path: Path) -> None:
    store = LocalStateStore(tmp_path / "deep" / "state.json")
    assert store.read() == (None, ABSENT)
    state = PollState("http://b", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z")
    token = store.save(state.to_bytes(), ABSENT)
    data, read_token = store.read()
    assert data == state.to_bytes() and read_token == token
    store.save(state.to_bytes(), token)
    with pytest.raises(StateConflict):
        store.save(state.to_bytes(), token)  # written since: stale
    with pytest.raises(StateConflict):
        store.save(state.to_bytes(), ABSENT)
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == [
        "state.json",
        "state.json.lock",
    ]  # no temporary file left behind


def test_polls_with_the_local_store(world: World, tmp_path: Path) -> None:
    store = LocalStateStore(tmp_path / "state.json")
    [job] = world.seed(status=RUNNING)
    assert world.poll(store=store).sweep_reason == "state missing"
    world.sandbox.set_status(job, COMPLETED)
    steady = world.poll(store=store)
    assert not steady.full_sweep and steady.state_saved and steady.events == 1
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["jobs"] == {} and f"evt_{job}_completed" in saved["sent"]
