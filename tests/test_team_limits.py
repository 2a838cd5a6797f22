"""TEAM_LIMITS (issue 29): checked before anything is created; two instances racing at a
team's limit let at most one through; every event says whose it is (``data.team``).

Real parts: train_http / train_pubsub / poll_jobs under functions-framework, the
sandbox, the ``openai`` SDK, a webhook receiver that verifies signatures; the lease
lives in the files' local folder shared by both instances (core/buckets.Folder).
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from finetune_api.core.buckets import Bucket, Folder
from finetune_api.core.errors import UpstreamUnavailableError
from finetune_api.jobs.quota import TeamLease, job_gpus, team_use
from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from loopback.servers import LocalGcs
from loopback.webhook_receiver import WebhookReceiver
from sandbox import Sandbox
from tests.conftest import function_env
from tests.test_pubsub import deliver, message_event

ALPHA = "alpha-key-000000001"
BETA = "beta-key-0000000002"
KEYS = f"alpha:{ALPHA},beta:{BETA}"
LIMITS = json.dumps({"alpha": {"max_active_jobs": 1}, "*": {"max_active_gpus": 2}})
MODEL = "Qwen/Qwen3-0.6B"
BODY = {"dataset_id": "d", "model_id": MODEL}
SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def env_for(sandbox: Sandbox, sm: FakeSecretManager, tmp: Path, **extra: str) -> dict[str, str]:
    return function_env(sandbox, sm, tmp, API_KEYS=KEYS, TEAM_LIMITS=LIMITS, **extra)


def post(server: FunctionServer, key: str, path: str = "/jobs", **kw: Any) -> Any:
    return requests.post(f"{server.url}{path}", headers={"X-Api-Key": key}, timeout=60, **kw)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as server:
        yield server


@pytest.fixture
def limited(
    sandbox: Sandbox, secret_manager: FakeSecretManager, tmp_path: Path, receiver: WebhookReceiver
) -> Iterator[FunctionServer]:
    env = env_for(
        sandbox, secret_manager, tmp_path, WEBHOOK_URL=receiver.url, WEBHOOK_SECRET=SECRET
    )
    with FunctionServer("train_http", env) as server:
        yield server


def _quota(response: Any) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "quota_exceeded"
    return error


def test_over_a_limit_is_429_naming_the_limit_and_use_and_creates_nothing(
    limited: FunctionServer, sandbox: Sandbox
) -> None:
    first = post(limited, ALPHA, json=BODY)
    assert first.status_code == 201, first.text
    before = sandbox.stats()["by_route"]
    error = _quota(post(limited, ALPHA, json=BODY))
    assert "max_active_jobs=1" in error["message"] and "1 active" in error["message"]
    # /v1 create: the SDK's RateLimitError, code quota_exceeded.
    sdk = openai.OpenAI(base_url=f"{limited.url}/v1", api_key=ALPHA, max_retries=0, timeout=60)
    line = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    data = (json.dumps(line) + "\n").encode() * 10
    file_id = sdk.files.create(file=("t.jsonl", data), purpose="fine-tune").id
    before = sandbox.stats()["by_route"]
    with pytest.raises(openai.RateLimitError) as raised:
        sdk.fine_tuning.jobs.create(model=MODEL, training_file=file_id)
    assert raised.value.code == "quota_exceeded"
    # Nothing was created: only searches and reads reached Baseten.
    after = sandbox.stats()["by_route"]
    grew = [r for r, n in after.items() if n > before.get(r, 0)]
    assert grew == ["POST /v1/training_jobs/search"], grew
    assert len(sandbox.jobs()) == 1
    # beta is not alpha: its own ceiling ("*": 2 GPUs) applies.
    gpus = post(limited, BETA, json={**BODY, "compute": {"gpu_count": 4}})
    error = _quota(gpus)
    assert "max_active_gpus=2" in error["message"] and "asks for 4" in error["message"]
    assert post(limited, BETA, json={**BODY, "compute": {"gpu_count": 2}}).status_code == 201
    # Once alpha's job ends, alpha may start another.
    job = first.json()
    stopped = requests.post(
        f"{limited.url}/jobs/{job['training_project_id']}/{job['training_job_id']}/stop",
        headers={"X-Api-Key": ALPHA},
        timeout=30,
    )
    assert stopped.status_code == 200
    assert post(limited, ALPHA, json=BODY).status_code == 201


def test_an_idempotent_replay_at_the_limit_answers_its_job(
    limited: FunctionServer, sandbox: Sandbox
) -> None:
    headers = {"X-Api-Key": ALPHA, "Idempotency-Key": "order-1"}
    url = f"{limited.url}/jobs"
    first = requests.post(url, json=BODY, headers=headers, timeout=60)
    assert first.status_code == 201, first.text
    again = requests.post(url, json=BODY, headers=headers, timeout=60)
    assert again.status_code == 200 and again.json()["idempotent_replay"] is True
    assert again.json()["training_job_id"] == first.json()["training_job_id"]
    other = requests.post(
        url, json=BODY, headers={**headers, "Idempotency-Key": "order-2"}, timeout=60
    )
    _quota(other)
    assert len(sandbox.jobs()) == 1


def test_resume_over_the_limit_is_429(limited: FunctionServer, sandbox: Sandbox) -> None:
    done = post(limited, ALPHA, json=BODY).json()
    sandbox.advance(done["training_job_id"], steps=6)  # completed, with checkpoints
    running = post(limited, ALPHA, json=BODY)
    assert running.status_code == 201
    resumed = post(
        limited, ALPHA, f"/jobs/{done['training_project_id']}/{done['training_job_id']}/resume"
    )
    _quota(resumed)
    assert len(sandbox.jobs()) == 2


def test_two_instances_racing_at_the_limit_let_one_through(
    sandbox: Sandbox, secret_manager: FakeSecretManager, tmp_path: Path
) -> None:
    env = env_for(sandbox, secret_manager, tmp_path)
    with FunctionServer("train_http", env) as one, FunctionServer("train_http", env) as two:
        for round_ in range(3):
            start = threading.Barrier(2)
            answers: list[int] = []

            def submit(server: FunctionServer, start: Any, answers: list[int]) -> None:
                start.wait()
                answers.append(post(server, ALPHA, json=BODY).status_code)

            threads = [
                threading.Thread(target=submit, args=(s, start, answers)) for s in (one, two)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sorted(answers) == [201, 429], (round_, answers)
            live = [
                j for j in sandbox.jobs() if j["job"]["current_status"] == "TRAINING_JOB_CREATED"
            ]
            assert len(live) == 1
            job = live[0]
            sandbox.set_status(job["job"]["id"], "TRAINING_JOB_STOPPED")


@pytest.fixture(scope="module")
def gcs() -> Iterator[LocalGcs]:
    with LocalGcs() as server:
        yield server


@pytest.fixture(params=["folder", "bucket"])
def leases(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The two stores of core/buckets.py: a folder, and fake-gcs-server's bucket."""
    if request.param == "folder":
        return Folder(tmp_path / "leases")
    gcs: LocalGcs = request.getfixturevalue("gcs")
    name = f"leases-{tmp_path.name[-20:].lower().replace('_', '-')}"
    gcs.client().create_bucket(name)
    return Bucket(name, emulator_host=gcs.host, deadline_seconds=5.0)


def test_one_holder_at_a_time_among_many(leases: Any) -> None:
    inside, most, lock = [0], [0], threading.Lock()

    def hold(_: int) -> None:
        with TeamLease(leases, wait=30).held("alpha"):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            threading.Event().wait(0.02)
            with lock:
                inside[0] -= 1

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(hold, range(12)))
    assert most[0] == 1
    # Another team's lease is its own: both held at once.
    with TeamLease(leases, wait=0.1).held("beta"), TeamLease(leases, wait=0.1).held("gamma"):
        pass


def test_a_lease_whose_holder_died_is_taken_over(leases: Any) -> None:
    now = [1000.0]
    dead = TeamLease(leases, ttl=60, wait=0.2, clock=lambda: now[0])
    alive = TeamLease(leases, ttl=60, wait=0.2, clock=lambda: now[0])
    held = dead.held("alpha")
    held.__enter__()  # never released: its process "died"
    with pytest.raises(UpstreamUnavailableError), alive.held("alpha"):
        pass
    now[0] += 61
    with alive.held("alpha"):
        pass
    with alive.held("alpha"):  # released properly: free at once
        pass


def test_use_counts_only_the_teams_active_jobs_and_gpus() -> None:
    def job(name: str, gpus: int, nodes: int) -> dict[str, Any]:
        return {
            "training_project": {"name": name},
            "instance_type": {"gpu_count": gpus},
            "node_count": nodes,
        }

    active = [job("svc-alpha-a", 2, 2), job("svc-alpha-b", 1, 1), job("svc-beta-a", 8, 1)]
    assert team_use(active, "svc-alpha-") == (2, 5)
    assert job_gpus({}) == 1


def test_every_event_carries_its_team(
    limited: FunctionServer,
    sandbox: Sandbox,
    secret_manager: FakeSecretManager,
    tmp_path: Path,
    receiver: WebhookReceiver,
) -> None:
    made = post(limited, BETA, json=BODY)
    assert made.status_code == 201
    # Pub/Sub: the team attribute (trusted by IAM) decides the team.
    # As deploy.sh deploys them: train_pubsub and poll_jobs hold no API keys; TEAMS
    # names the teams.
    env = function_env(
        sandbox,
        secret_manager,
        tmp_path / "pubsub",
        TEAMS="alpha,beta",
        TEAM_LIMITS=LIMITS,
        WEBHOOK_URL=receiver.url,
        WEBHOOK_SECRET=SECRET,
    )
    with FunctionServer("train_pubsub", env) as pubsub:
        event = message_event("msg-1", body=BODY, attributes={"team": "alpha"})
        assert deliver(pubsub, event).status_code == 200
    by_job = {item["job"]["id"]: item for item in sandbox.jobs()}
    alpha_job = next(j for j, item in by_job.items() if j != made.json()["training_job_id"])
    assert by_job[alpha_job]["project"]["name"].startswith("alpha-")
    sandbox.advance(made.json()["training_job_id"], steps=6)
    with FunctionServer("poll_jobs", env) as poll:
        polled = requests.post(poll.url, json={}, timeout=60)
        assert polled.status_code == 200, polled.text
    events = list(receiver.unique_events.values())
    assert receiver.rejections == []
    seen = {(e["type"], e["data"].get("training_job_id")): e["data"]["team"] for e in events}
    assert seen[("training_job.submitted", made.json()["training_job_id"])] == "beta"
    assert seen[("training_job.submitted", alpha_job)] == "alpha"
    assert seen[("training_job.completed", made.json()["training_job_id"])] == "beta"
    assert all("team" in e["data"] for e in events)


def test_the_docs_receiver_routes_events_by_team(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime

    from standardwebhooks import Webhook

    doc = (Path(__file__).parent.parent / "docs" / "polling-and-webhooks.md").read_text()
    section = doc.split("## Routing events by team", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    namespace: dict[str, Any] = {"__name__": "team_router"}
    exec(compile(code, "polling-and-webhooks.md", "exec"), namespace)  # noqa: S102 - our doc
    app = namespace["app"].test_client()
    signer = Webhook(SECRET)
    for number, team in enumerate(("alpha", "beta", None)):
        body = json.dumps(
            {
                "id": f"evt_{number}",
                "type": "training_job.running",
                "timestamp": "2026-01-01T00:00:00Z",
                "data": {"team": team},
            }
        )
        now = datetime.now(UTC)
        headers = {
            "webhook-id": f"evt_{number}",
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signer.sign(f"evt_{number}", now, body),
        }
        assert app.post("/hooks", data=body, headers=headers).status_code == 204
    assert [url for url, _ in namespace["forwarded"]] == [
        "https://alpha.example.com/hooks",
        "https://beta.example.com/hooks",
        "https://platform.example.com/hooks",
    ]
    assert app.post("/hooks", data="{}", headers={"webhook-id": "x"}).status_code == 401


def test_the_polls_retry_waits_while_the_team_is_at_its_limit(
    limited: FunctionServer, sandbox: Sandbox, secret_manager: FakeSecretManager, tmp_path: Path
) -> None:
    from loopback.webhook_receiver import unused_url
    from tests.test_poll_e2e import poll, poller

    flaky = post(limited, ALPHA, json={**BODY, "retry": {"max_attempts": 2}})
    assert flaky.status_code == 201, flaky.text
    flaky_id = flaky.json()["training_job_id"]
    sandbox.add_checkpoint(flaky_id)
    sandbox.set_status(flaky_id, "TRAINING_JOB_FAILED", "NCCL timeout")
    other = post(limited, ALPHA, json=BODY)  # alpha is now at max_active_jobs=1
    assert other.status_code == 201, other.text
    with poller(
        sandbox,
        secret_manager,
        tmp_path / "poll",
        unused_url(),
        TEAMS="alpha,beta",
        TEAM_LIMITS=LIMITS,
    ) as server:
        poll(server, {})
        assert len(sandbox.jobs()) == 2  # the retry waits: nothing created
        assert "TEAM_LIMITS; a later poll retries the failed job" in server.output()
        sandbox.set_status(other.json()["training_job_id"], "TRAINING_JOB_STOPPED")
        poll(server, {})
    jobs = sandbox.jobs()
    assert len(jobs) == 3  # the later poll retried it
    assert jobs[-1]["project"]["name"].startswith("alpha-")


def test_a_malformed_team_attribute_is_a_bad_message_and_creates_nothing(
    sandbox: Sandbox, secret_manager: FakeSecretManager, tmp_path: Path
) -> None:
    env = function_env(sandbox, secret_manager, tmp_path, TEAMS="alpha,beta")
    with FunctionServer("train_pubsub", env) as pubsub:
        for team in ("Alpha", "../beta", "x" * 40):
            event = message_event(f"msg-{len(team)}", body=BODY, attributes={"team": team})
            assert deliver(pubsub, event).status_code == 200  # acknowledged, not retried
        output = pubsub.output()
    assert sandbox.jobs() == [] and sandbox.stats()["requests"] == 0
    assert "permanently rejected Pub/Sub message" in output
