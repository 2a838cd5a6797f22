"""train_pubsub end to end: real functions-framework, CloudEvents in both modes, idempotency."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from finetune_api.jobs.service import key_digest
from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from sandbox import Sandbox
from tests.conftest import API_KEY, SECRET_NAME, function_env

VALID = {"dataset_id": "HuggingFaceH4/Multilingual-Thinking", "model_id": "openai/gpt-oss-20b"}
TOPIC = "//pubsub.googleapis.com/projects/test-project/topics/training"
TYPE = "google.cloud.pubsub.topic.v1.messagePublished"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def message_event(
    message_id: str,
    *,
    data: bytes | str | None = None,
    body: Any = VALID,
    attributes: Any = None,
    published: datetime | None = None,
    bare: bool = False,
) -> CloudEvent:
    published = published or datetime.now(UTC)
    if data is None:
        data = json.dumps(body).encode()
    encoded = base64.b64encode(data).decode() if isinstance(data, bytes) else data
    message: dict[str, Any] = {
        "data": encoded,
        "messageId": message_id,
        "publishTime": rfc3339(published),
    }
    payload: dict[str, Any] = {"message": message}
    if bare:
        message["@type"] = "type.googleapis.com/google.pubsub.v1.PubsubMessage"
    else:
        message["attributes"] = {} if attributes is None else attributes
        payload["subscription"] = "projects/test-project/subscriptions/training-sub"
    return CloudEvent(
        {"id": message_id, "source": TOPIC, "type": TYPE, "time": rfc3339(published)}, payload
    )


def deliver(server: FunctionServer, event: CloudEvent, mode: str = "binary") -> requests.Response:
    headers, body = to_binary(event) if mode == "binary" else to_structured(event)
    return requests.post(server.url, headers=headers, data=body, timeout=60)


def live_jobs(sandbox: Sandbox) -> list[dict[str, Any]]:
    return [
        item for item in sandbox.jobs() if item["job"]["current_status"] != "TRAINING_JOB_STOPPED"
    ]


@pytest.fixture(scope="module")
def pubsub_server(
    sandbox_server: Sandbox,
    secret_manager: FakeSecretManager,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FunctionServer]:
    tmp = tmp_path_factory.mktemp("pubsub-tmp")
    env = function_env(sandbox_server, secret_manager, tmp, PUBSUB_MAX_EVENT_AGE_SECONDS="600")
    with FunctionServer("train_pubsub", env, threads=16) as server:
        yield server
    assert list(tmp.iterdir()) == []


@pytest.fixture
def pubsub(pubsub_server: FunctionServer, sandbox: Sandbox) -> FunctionServer:
    return pubsub_server


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_message_creates_a_job_with_its_key(
    pubsub: FunctionServer, sandbox: Sandbox, mode: str
) -> None:
    event = message_event(f"m-{mode}", attributes={"idempotency_key": f"order-{mode}"})
    response = deliver(pubsub, event, mode)
    assert response.status_code == 200, response.text
    [job] = sandbox.jobs()
    assert job["job"]["name"].endswith(f"-ik-{key_digest(f'order-{mode}')}")
    assert job["request"]["runtime"]["environment_variables"]["DATASET_ID"] == VALID["dataset_id"]


def test_a_dpo_message_makes_a_dpo_job(pubsub: FunctionServer, sandbox: Sandbox) -> None:
    body = {**VALID, "job_name": "prefs", "method": "dpo", "hyperparameters": {"dpo_beta": 0.5}}
    event = message_event("dpo-1", body=body)
    for _ in range(2):  # redelivered: still one job
        assert deliver(pubsub, event).status_code == 200
    [job] = sandbox.jobs()
    assert job["job"]["name"] == f"prefs--dpo-ik-{key_digest('dpo-1')}"
    env = job["request"]["runtime"]["environment_variables"]
    config = json.loads(env["RUNTIME_CONFIG"])
    assert config["method"] == "dpo"
    assert config["hyperparameters"]["dpo_beta"] == 0.5
    assert config["hyperparameters"]["train_on_inputs"] is None


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_redelivered_five_times_in_a_row_is_one_job(
    pubsub: FunctionServer, sandbox: Sandbox, mode: str
) -> None:
    event = message_event(f"seq-{mode}")
    for _ in range(5):
        assert deliver(pubsub, event, mode).status_code == 200
    assert len(sandbox.jobs()) == 1
    assert sandbox.jobs()[0]["job"]["name"].endswith(f"-ik-{key_digest(f'seq-{mode}')}")


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_redelivered_five_times_at_once_is_one_job(
    pubsub: FunctionServer, sandbox: Sandbox, mode: str
) -> None:
    sandbox.configure(create_delay_ms=200)
    event = message_event(f"burst-{mode}")
    with ThreadPoolExecutor(5) as pool:
        statuses = list(pool.map(lambda _: deliver(pubsub, event, mode).status_code, range(5)))
    assert statuses == [200] * 5
    assert len(live_jobs(sandbox)) == 1
    assert len(sandbox.jobs()) == 1


def test_plain_push_envelope_without_attributes(pubsub: FunctionServer, sandbox: Sandbox) -> None:
    now = rfc3339(datetime.now(UTC))
    envelope = {
        "message": {
            "data": base64.b64encode(json.dumps(VALID).encode()).decode(),
            "messageId": "push-1",
            "publishTime": now,
        },
        # A push subscription always names itself; the framework needs it to convert.
        "subscription": "projects/test-project/subscriptions/push-sub",
    }
    response = requests.post(pubsub.url, json=envelope, timeout=60)
    assert response.status_code == 200, response.text + pubsub.output()[-2000:]
    [job] = sandbox.jobs()
    assert job["job"]["name"].endswith(f"-ik-{key_digest('push-1')}")


def test_bare_cloudevent_with_type_field_works(pubsub: FunctionServer, sandbox: Sandbox) -> None:
    assert deliver(pubsub, message_event("bare-1", bare=True)).status_code == 200
    assert len(sandbox.jobs()) == 1


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: message_event("p1", data="%%% not base64 %%%"), "not valid base64"),
        (lambda: message_event("p2", data=b"{not json"), "not valid JSON"),
        (lambda: message_event("p3", data=b"\xff\xfe"), "not UTF-8"),
        (lambda: message_event("p4", body={"dataset_id": "../etc"}), "invalid training request"),
        (
            lambda: message_event("p4b", body={**VALID, "integrations": [{"type": "comet"}]}),
            "integrations.0.type",
        ),
        (lambda: message_event("p5", body=[1, 2]), "JSON object"),
        # Issue 12: each of these failed the function (a retried poison message).
        (lambda: message_event("p6", data=b"[" * 3000), "nested too deeply"),
        (lambda: message_event("p7", data=b'{"a":' * 3000), "nested too deeply"),
        (lambda: message_event("p8", attributes=["idempotency_key"]), "attributes"),
        (lambda: message_event("p9", attributes="k=v"), "attributes"),
        (lambda: message_event("p10", attributes={"idempotency_key": 7}), "idempotency_key"),
        (lambda: message_event("p11", attributes={"idempotency_key": ["k"]}), "idempotency_key"),
        (
            lambda: message_event("p12", body={**VALID, "hyperparameters": {"dpo_beta": 0.2}}),
            "hyperparameters.dpo_beta",
        ),
        (
            lambda: message_event(
                "p13",
                body={**VALID, "method": "dpo", "hyperparameters": {"train_on_inputs": True}},
            ),
            "hyperparameters.train_on_inputs",
        ),
        (lambda: message_event("p14", body={**VALID, "method": "ppo"}), "method"),
    ],
)
def test_poison_messages_are_acknowledged_and_create_nothing(
    pubsub: FunctionServer, sandbox: Sandbox, make: Callable[[], CloudEvent], reason: str
) -> None:
    event = make()
    response = deliver(pubsub, event)
    assert response.status_code == 200
    assert sandbox.jobs() == []
    lines = [json.loads(line) for line in pubsub.output().splitlines() if line.startswith("{")]
    logged = [
        line
        for line in lines
        if line.get("message_id") == event["id"] and line["severity"] == "ERROR"
    ]
    assert logged and reason in logged[-1]["reason"]


def test_baseten_rejection_is_permanent(pubsub: FunctionServer, sandbox: Sandbox) -> None:
    sandbox.add_fault(
        method="POST",
        path=r"v1/training_projects/[^/]+/jobs$",
        status=400,
        body={"code": "VALIDATION_ERROR", "message": "no such accelerator"},
    )
    assert deliver(pubsub, message_event("rej-1")).status_code == 200
    assert sandbox.jobs() == []


def test_baseten_503_raises_and_redelivery_creates_exactly_one(
    pubsub: FunctionServer, sandbox: Sandbox
) -> None:
    sandbox.add_fault(method="POST", path=r"v1/training_projects/[^/]+/jobs$", status=503)
    event = message_event("flaky-1")
    failed = deliver(pubsub, event)
    assert failed.status_code == 500  # an exception escaped: Pub/Sub redelivers
    assert sandbox.jobs() == []
    sandbox.clear_faults()
    assert deliver(pubsub, event).status_code == 200
    assert deliver(pubsub, event).status_code == 200
    assert len(sandbox.jobs()) == 1


def test_stale_message_is_dropped_with_a_log_line(pubsub: FunctionServer, sandbox: Sandbox) -> None:
    event = message_event("old-1", published=datetime.now(UTC) - timedelta(hours=2))
    assert deliver(pubsub, event).status_code == 200
    assert sandbox.jobs() == []
    assert "older than PUBSUB_MAX_EVENT_AGE_SECONDS" in pubsub.output()


def test_secret_manager_down_raises(sandbox: Sandbox, tmp_path: Path) -> None:
    broken = FakeSecretManager().start()
    broken.failures[SECRET_NAME] = 503
    env = function_env(sandbox, broken, tmp_path, SECRET_TIMEOUT_SECONDS="1")
    try:
        with FunctionServer("train_pubsub", env) as server:
            response = deliver(server, message_event("sm-1"))
            assert response.status_code == 500
            assert "secret_unavailable" in server.output()
            assert API_KEY not in server.output()
    finally:
        broken.stop()
    assert sandbox.jobs() == []


def test_concurrent_duplicates_across_instances_keep_one_job(
    sandbox: Sandbox, secret_manager: FakeSecretManager, tmp_path: Path
) -> None:
    """Two processes (instances) race on one key: the earliest job wins, the rest are stopped."""
    sandbox.configure(create_delay_ms=300)
    servers = [
        FunctionServer("train_http", function_env(sandbox, secret_manager, tmp_path)).start()
        for _ in range(2)
    ]
    try:

        def submit(index: int) -> requests.Response:
            server = servers[index % 2]
            return requests.post(
                f"{server.url}/jobs", json=VALID, headers={"Idempotency-Key": "race-1"}, timeout=60
            )

        with ThreadPoolExecutor(10) as pool:
            responses = list(pool.map(submit, range(10)))
    finally:
        for server in servers:
            server.close()
    assert all(response.status_code in (200, 201) for response in responses)
    named = {response.json()["training_job_id"] for response in responses}
    live = live_jobs(sandbox)
    assert len(live) == 1
    assert named == {live[0]["job"]["id"]}
    assert sum(response.status_code == 201 for response in responses) == 1
    assert list(tmp_path.iterdir()) == []


def test_http_same_key_ten_times_at_once(train_http: FunctionServer, sandbox: Sandbox) -> None:
    def submit(_: int) -> requests.Response:
        return requests.post(
            f"{train_http.url}/jobs",
            json=VALID,
            headers={"Idempotency-Key": "ten-at-once"},
            timeout=60,
        )

    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(submit, range(10)))
    assert sorted(response.status_code for response in responses) == [200] * 9 + [201]
    assert len({response.json()["training_job_id"] for response in responses}) == 1
    assert all(
        response.json()["idempotent_replay"]
        for response in responses
        if response.status_code == 200
    )
    assert len(sandbox.jobs()) == 1
    # A later replay answers 200 with the original job.
    again = submit(0)
    assert (
        again.status_code == 200
        and again.json()["training_job_id"] == responses[0].json()["training_job_id"]
    )
    time.sleep(0)


CE_HEADERS = {
    "ce-specversion": "1.0",
    "ce-type": TYPE,
    "ce-source": TOPIC,
    "ce-id": "undecodable-1",
}


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/cloudevents+json", b"[" * 3000),
        ("application/json", b'{"message":' * 3000),
        ("application/cloudevents+json", b"\xff\xfe"),
        ("application/cloudevents+json", b"{bad"),
    ],
)
def test_an_envelope_the_framework_cannot_decode_is_a_400_in_our_json(
    pubsub: FunctionServer, sandbox: Sandbox, content_type: str, body: bytes
) -> None:
    """Issue 12: functions-framework decodes the envelope itself; these were 500s."""
    response = requests.post(
        pubsub.url, data=body, headers={**CE_HEADERS, "Content-Type": content_type}, timeout=30
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request"
    assert sandbox.jobs() == []
