"""The thin Baseten client against the local sandbox: reads, stop, retries, limits, errors."""

from __future__ import annotations

import itertools
import json
import threading
import time
import traceback

import pytest

from finetune_api.baseten.client import BasetenClient, RateLimiter, upstream_error
from finetune_api.core.errors import (
    ConfigurationError,
    NotFoundError,
    ServiceError,
    UpstreamError,
    UpstreamRateLimitedError,
    UpstreamRejectedError,
    UpstreamUnavailableError,
)
from loopback.webhook_receiver import unused_url
from sandbox import COMPLETED, RUNNING, STOPPED, Sandbox
from tests.poll_fixtures import (  # noqa: F401 - fixtures
    API_KEY,
    LogLines,
    baseten_fixture,
    baseten_server_fixture,
    make_client,
    make_settings,
    service_logs_fixture,
)


def _seed(sb: Sandbox, projects: int = 1, jobs: int = 1) -> list[dict[str, object]]:
    projects_out: list[dict[str, object]] = sb.seed(projects=projects, jobs_per_project=jobs)[
        "projects"
    ]
    return projects_out


def _one_job(sb: Sandbox) -> tuple[str, str]:
    project = _seed(sb)[0]
    job_ids = project["job_ids"]
    assert isinstance(job_ids, list)
    return str(project["id"]), str(job_ids[0])


def _every_text(error: BaseException) -> str:
    """Everything an error could leak: message, body, repr and the full formatted chain."""
    parts = [str(error), repr(error), "".join(traceback.format_exception(error))]
    if isinstance(error, ServiceError):
        parts.append(json.dumps(error.body))
    seen = error.__context__
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__context__
    return "\n".join(parts)


# -- reads and stop ---------------------------------------------------------


def test_get_job_carries_its_project(baseten: Sandbox) -> None:
    project_id, job_id = _one_job(baseten)
    client = make_client(make_settings(baseten))
    job = client.get_job(project_id, job_id)
    assert job["id"] == job_id
    assert job["current_status"] == "TRAINING_JOB_CREATED"
    assert job["training_project"]["id"] == project_id
    assert job["training_project"]["name"] == "seed-0"
    assert job["training_project_id"] == project_id


def test_lists_and_search_newest_first(baseten: Sandbox) -> None:
    projects = _seed(baseten, projects=2, jobs=3)
    client = make_client(make_settings(baseten))
    assert {p["id"] for p in client.list_projects()} == {p["id"] for p in projects}

    project_id = str(projects[1]["id"])
    jobs = client.list_project_jobs(project_id)
    assert len(jobs) == 3
    assert all(job["training_project"]["id"] == project_id for job in jobs)

    found = client.search_jobs()
    assert len(found) == 6
    created = [job["created_at"] for job in found]
    assert created == sorted(created, reverse=True)
    assert [j["created_at"] for j in client.search_jobs(newest_first=False)] == created[::-1]
    only = client.search_jobs(project_id=project_id, statuses=["TRAINING_JOB_CREATED"])
    assert {job["id"] for job in only} == {job["id"] for job in jobs}
    assert client.search_jobs(statuses=[COMPLETED]) == []


def test_checkpoints_and_stop(baseten: Sandbox) -> None:
    project_id, job_id = _one_job(baseten)
    baseten.set_status(job_id, RUNNING)
    baseten.add_checkpoint(job_id)
    client = make_client(make_settings(baseten))
    checkpoints = client.list_checkpoints(project_id, job_id)
    assert [c["checkpoint_id"] for c in checkpoints] == ["checkpoint-1"]

    stopped = client.stop_job(project_id, job_id)
    assert stopped["current_status"] == STOPPED
    # Stopping again: Baseten's own message comes through, as upstream_rejected.
    with pytest.raises(UpstreamRejectedError) as caught:
        client.stop_job(project_id, job_id)
    assert "already" in caught.value.message
    # Reads are retried, a rejected stop is not: list + stop + stop.
    assert baseten.stats()["requests"] == 3


def test_upsert_project_is_idempotent(baseten: Sandbox) -> None:
    client = make_client(make_settings(baseten))
    first = client.upsert_project("my-project")
    again = client.upsert_project("my-project")
    assert first["id"] == again["id"]
    assert first["name"] == "my-project"


# -- error mapping ------------------------------------------------------------


def test_404_is_not_found(baseten: Sandbox) -> None:
    project_id, _ = _one_job(baseten)
    client = make_client(make_settings(baseten))
    with pytest.raises(NotFoundError):
        client.get_job(project_id, "nosuchjob")
    with pytest.raises(NotFoundError):
        client.list_checkpoints("nosuchproject", "nosuchjob")
    # An id that cannot exist never reaches Baseten (nor a URL).
    before = baseten.stats()["requests"]
    with pytest.raises(NotFoundError):
        client.get_job(project_id, "../../v1/training_projects")
    assert baseten.stats()["requests"] == before


def test_401_is_upstream_error_without_retries(baseten: Sandbox) -> None:
    wrong_key = "bt-wrong-" + "x" * 24
    client = make_client(make_settings(baseten), api_key=wrong_key)
    with pytest.raises(UpstreamError) as caught:
        client.list_projects()
    assert "refused our credentials" in caught.value.message
    assert caught.value.status == 502
    assert wrong_key not in _every_text(caught.value)
    assert baseten.stats()["requests"] == 1


def test_403_is_upstream_error(baseten: Sandbox) -> None:
    baseten.add_fault(path="training_projects$", status=403)
    with pytest.raises(UpstreamError, match="refused our credentials"):
        make_client(make_settings(baseten)).list_projects()


def test_upstream_error_mapping_table() -> None:
    cases = {
        404: NotFoundError,
        401: UpstreamError,
        403: UpstreamError,
        400: UpstreamRejectedError,
        409: UpstreamRejectedError,
        422: UpstreamRejectedError,
        # Still upstream_unavailable (503) on our own routes; /v1/ answers it as a 429.
        429: UpstreamRateLimitedError,
        500: UpstreamError,
        503: UpstreamError,
    }
    for status, kind in cases.items():
        assert type(upstream_error("x", status=status, body={"message": "m"})) is kind, status
    rejected = upstream_error("x", status=400, body={"message": "name too long"})
    assert rejected.message == "Baseten rejected the request: name too long"
    limited = upstream_error("x", status=429, retry_after=2.2)
    assert limited.retry_after == 3
    assert isinstance(limited, UpstreamUnavailableError) and limited.status == 503
    assert isinstance(upstream_error("x", transport="timed out"), UpstreamUnavailableError)


# -- retries --------------------------------------------------------------------


def test_retries_503_then_succeeds(baseten: Sandbox) -> None:
    project_id, job_id = _one_job(baseten)
    baseten.add_fault(method="GET", path=f"jobs/{job_id}$", status=503, count=2)
    sleeps: list[float] = []
    client = make_client(make_settings(baseten), sleeps=sleeps)
    assert client.get_job(project_id, job_id)["id"] == job_id
    assert client.stats()["retries"] == 2
    assert client.request_count == 3
    assert baseten.stats()["by_status"] == {"200": 1, "503": 2}
    # Exponential backoff, with jitter: two waits, the second longer on average.
    assert len([s for s in sleeps if s > 0]) == 2


def test_503_after_every_retry_is_upstream_error(baseten: Sandbox) -> None:
    baseten.add_fault(path="training_projects$", status=503)
    client = make_client(make_settings(baseten, baseten_max_retries=2), sleeps=[])
    with pytest.raises(UpstreamError) as caught:
        client.list_projects()
    assert caught.value.status == 502
    assert baseten.stats()["requests"] == 3


def test_429_retry_after_is_honoured(baseten: Sandbox) -> None:
    baseten.add_fault(path="training_projects$", status=429, retry_after=2, count=1)
    sleeps: list[float] = []
    client = make_client(make_settings(baseten), sleeps=sleeps)
    assert client.list_projects() == []
    assert client.stats()["responses_429"] == 1
    # The wait came from retry_after (2 s), not from the short exponential backoff.
    assert 1.9 <= sum(sleeps) <= 2.1


def test_429_retry_after_in_body_only(baseten: Sandbox) -> None:
    body = {"code": "RATE_LIMITED", "message": "slow down", "retry_after": 3}
    baseten.add_fault(path="training_projects$", status=429, body=body, count=1)
    sleeps: list[float] = []
    make_client(make_settings(baseten), sleeps=sleeps).list_projects()
    assert 2.9 <= sum(sleeps) <= 3.1


def test_429_that_persists_is_unavailable_with_retry_after(baseten: Sandbox) -> None:
    baseten.add_fault(path="training_projects$", status=429, retry_after=1)
    client = make_client(make_settings(baseten, baseten_max_retries=1), sleeps=[])
    with pytest.raises(UpstreamUnavailableError) as caught:
        client.list_projects()
    assert caught.value.retry_after == 1
    assert caught.value.headers == {"Retry-After": "1"}
    assert baseten.stats()["requests"] == 2


def test_long_retry_after_is_passed_to_the_caller_not_waited(baseten: Sandbox) -> None:
    baseten.add_fault(path="training_projects$", status=429, retry_after=45)
    sleeps: list[float] = []
    client = make_client(make_settings(baseten), sleeps=sleeps)
    with pytest.raises(UpstreamUnavailableError) as caught:
        client.list_projects()
    assert caught.value.retry_after == 45
    assert baseten.stats()["requests"] == 1
    assert sum(sleeps) < 11


def test_timeout_is_unavailable(baseten: Sandbox) -> None:
    baseten.add_fault(path="training_projects$", status=200, hang_seconds=3)
    settings = make_settings(baseten, baseten_timeout_seconds=0.3, baseten_max_retries=1)
    client = make_client(settings, sleeps=[])
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailableError) as caught:
        client.list_projects()
    assert time.monotonic() - started < 2.5
    assert "did not answer within 0.3 s" in caught.value.message
    assert caught.value.status == 503
    assert caught.value.retry_after is not None
    assert baseten.stats()["requests"] == 2


def test_connection_refused_is_unavailable(baseten: Sandbox) -> None:
    settings = make_settings(baseten, baseten_api_url=unused_url().removesuffix("/hooks"))
    client = make_client(settings, sleeps=[])
    with pytest.raises(UpstreamUnavailableError, match="could not be reached"):
        client.list_projects()
    assert client.request_count == 3


def test_stop_is_not_repeated_after_a_read_timeout(baseten: Sandbox) -> None:
    project_id, job_id = _one_job(baseten)
    # Baseten stops the job but the answer never arrives in time.
    baseten.add_fault(path="/stop$", status=200, hang_seconds=2, after_handling=True, count=1)
    settings = make_settings(baseten, baseten_timeout_seconds=0.3)
    client = make_client(settings, sleeps=[])
    with pytest.raises(UpstreamUnavailableError):
        client.stop_job(project_id, job_id)
    assert client.request_count == 1
    assert client.get_job(project_id, job_id)["current_status"] == STOPPED


def test_api_key_never_in_error_messages(baseten: Sandbox, service_logs: LogLines) -> None:
    project_id, job_id = _one_job(baseten)
    settings = make_settings(baseten, baseten_timeout_seconds=0.3, baseten_max_retries=1)
    errors: list[BaseException] = []

    def expect(call: object) -> None:
        assert callable(call)
        with pytest.raises(ServiceError) as caught:
            call()
        errors.append(caught.value)

    client = make_client(settings, sleeps=[])
    expect(lambda: client.get_job(project_id, "missing"))
    baseten.add_fault(path="checkpoints$", status=503)
    expect(lambda: client.list_checkpoints(project_id, job_id))
    baseten.add_fault(path="training_projects$", status=200, hang_seconds=2)
    expect(client.list_projects)
    baseten.clear_faults()
    client.stop_job(project_id, job_id)
    expect(lambda: client.stop_job(project_id, job_id))
    refused = make_settings(baseten, baseten_api_url=unused_url().removesuffix("/hooks"))
    expect(make_client(refused, sleeps=[]).list_projects)
    # A key that cannot be sent in a header: requests' own error would quote it.
    broken_key = API_KEY + "\nX-Injected: 1"
    bad = make_client(settings, api_key=broken_key, sleeps=[])
    with pytest.raises(ConfigurationError) as caught:
        bad.list_projects()
    errors.append(caught.value)

    assert len(errors) == 6
    for error in errors:
        assert API_KEY not in _every_text(error), error
    assert "retrying a Baseten request" in service_logs.text
    assert API_KEY not in service_logs.text


# -- rate limit -------------------------------------------------------------------


def test_rate_limit_holds_under_eight_threads(baseten: Sandbox) -> None:
    project_id, job_id = _one_job(baseten)
    baseten.configure(rate_limit_per_second=100)
    rate = 40.0
    client = BasetenClient(
        make_settings(baseten, baseten_max_requests_per_second=rate),
        lambda: API_KEY,
        limiter=RateLimiter(rate),
    )
    per_thread = 12
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(per_thread):
                client.get_job(project_id, job_id)
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    started = time.monotonic()
    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    stats = baseten.stats()
    assert not failures
    assert stats["requests"] == 8 * per_thread
    assert stats["responses_429"] == 0
    # At most floor(rate) + 1 starts fit in a second; the server sees arrivals,
    # which thread scheduling can bunch by a few percent.
    assert stats["max_requests_in_any_1s_window"] <= rate * 1.1 + 1
    # ...and the limiter does not throttle far below the rate either.
    assert elapsed < (8 * per_thread) / rate + 1.0


def test_rate_limiter_spacing_with_a_fake_clock() -> None:
    now = [0.0]
    starts: list[float] = []

    def sleep(seconds: float) -> None:
        now[0] += seconds

    limiter = RateLimiter(10, clock=lambda: now[0], sleep=sleep)
    for _ in range(35):
        limiter.acquire()
        starts.append(now[0])
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) == pytest.approx(0.1)
    limiter.pause(5)
    limiter.acquire()
    assert now[0] - starts[-1] == pytest.approx(5.0)


def test_rate_limiter_burst_then_spacing_and_pause() -> None:
    now = [0.0]
    starts: list[float] = []

    def sleep(seconds: float) -> None:
        now[0] += seconds

    limiter = RateLimiter(10, burst=3, clock=lambda: now[0], sleep=sleep)
    for _ in range(6):
        limiter.acquire()
        starts.append(now[0])
    assert starts[:3] == [0.0, 0.0, 0.0]  # the burst
    assert starts[3:] == pytest.approx([0.1, 0.2, 0.3])  # then the rate
    # Any one-second window holds at most rate + burst starts.
    for _ in range(40):
        limiter.acquire()
        starts.append(now[0])
    assert max(sum(1 for t in starts if s <= t < s + 1) for s in starts) <= 10 + 3
    limiter.pause(5)
    paused_at = now[0]
    limiter.acquire()
    assert now[0] - paused_at == pytest.approx(5.0)
