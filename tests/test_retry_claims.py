"""The retry claims (polling/claims.py) on both stores of core/buckets.py: a local folder
and a Cloud Storage bucket (fake-gcs-server, which enforces ifGenerationMatch)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from finetune_api.core.buckets import Bucket, Folder
from finetune_api.polling.claims import RetryClaims, Ticket, Verdict
from loopback.servers import LocalGcs


@pytest.fixture(scope="module")
def gcs() -> Iterator[LocalGcs]:
    with LocalGcs() as server:
        yield server


@pytest.fixture(params=["folder", "bucket"])
def objects(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "folder":
        return Folder(tmp_path / "claims")
    gcs: LocalGcs = request.getfixturevalue("gcs")
    name = f"claims-{tmp_path.name[-20:].lower().replace('_', '-')}"
    gcs.client().create_bucket(name)
    return Bucket(name, emulator_host=gcs.host, deadline_seconds=5.0)


class Clock:
    def __init__(self) -> None:
        self.now = 2_000_000_000.0

    def __call__(self) -> float:
        return self.now


def test_one_winner_among_many_and_the_verdict_is_kept(objects: Any) -> None:
    claims = RetryClaims(objects, prefix="p/")
    with ThreadPoolExecutor(8) as pool:
        taken = list(pool.map(lambda _: claims.take("job1"), range(8)))
    tickets = [t for t in taken if isinstance(t, Ticket)]
    assert len(tickets) == 1
    assert all(isinstance(t, Verdict) and t.state == "claimed" for t in taken if t not in tickets)
    claims.started(tickets[0], {"training_job_id": "new1"})
    again = claims.take("job1")
    assert again == Verdict("started", {"training_job_id": "new1"}, None)
    # Another failure is claimed on its own.
    assert isinstance(claims.take("job2"), Ticket)


def test_refused_is_final_and_a_transient_failure_releases(objects: Any) -> None:
    claims = RetryClaims(objects)
    first = claims.take("a")
    assert isinstance(first, Ticket)
    claims.refused(first, "invalid_request: compute.accelerator: not allowed")
    verdict = claims.take("a")
    assert isinstance(verdict, Verdict) and verdict.state == "refused"
    assert verdict.reason is not None and "accelerator" in verdict.reason
    second = claims.take("b")
    assert isinstance(second, Ticket)
    claims.release(second)
    assert isinstance(claims.take("b"), Ticket)


def test_an_abandoned_or_unreadable_claim_is_taken_over_once(objects: Any) -> None:
    clock = Clock()
    claims = RetryClaims(objects, stale_seconds=60, clock=clock)
    dead = claims.take("x")
    assert isinstance(dead, Ticket)
    clock.now += 30
    assert claims.take("x") == Verdict("claimed")  # still fresh: someone is pushing
    clock.now += 3600
    with ThreadPoolExecutor(4) as pool:
        taken = list(pool.map(lambda _: claims.take("x"), range(4)))
    heirs = [t for t in taken if isinstance(t, Ticket)]
    assert len(heirs) == 1
    # The dead poll's late verdict loses to the heir's (its version is gone).
    claims.started(dead, {"training_job_id": "late"})
    claims.started(heirs[0], {"training_job_id": "heir"})
    verdict = claims.take("x")
    assert isinstance(verdict, Verdict) and verdict.job == {"training_job_id": "heir"}
    # A claim that is not one of ours (garbage) is taken over rather than trusted.
    objects.create("retry-y.json", b"\x00 not json")
    assert isinstance(claims.take("y"), Ticket)
    objects.create("retry-z.json", json.dumps({"state": "started", "job": 5}).encode())
    assert isinstance(claims.take("z"), Ticket)
