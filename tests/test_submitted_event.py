"""training_job.submitted: every submission announces itself, signed, once per job."""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from loopback.webhook_receiver import WebhookReceiver, unused_url
from sandbox import Sandbox
from tests.conftest import function_env
from tests.test_pubsub import deliver, message_event

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as server:
        yield server


def test_pubsub_submission_is_announced_once(
    sandbox: Sandbox, secret_manager: FakeSecretManager, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    env = function_env(
        sandbox, secret_manager, tmp_path, WEBHOOK_URL=receiver.url, WEBHOOK_SECRET=SECRET
    )
    event = message_event("msg-42", attributes={"idempotency_key": "order-7"})
    with FunctionServer("train_pubsub", env) as server:
        assert deliver(server, event).status_code == 200
        assert deliver(server, event).status_code == 200  # redelivery
    [job] = sandbox.jobs()
    assert receiver.rejections == []
    assert len(receiver.unique_events) == 1
    [(webhook_id, notice)] = receiver.unique_events.items()
    assert webhook_id == notice["id"] and "." not in webhook_id
    assert notice["type"] == "training_job.submitted"
    data = notice["data"]
    assert data["idempotency_key"] == "order-7" and data["message_id"] == "msg-42"
    assert data["training_job_id"] == job["job"]["id"]
    assert data["training_project_id"] == job["project"]["id"]


def test_http_submission_is_announced_with_its_key(
    sandbox: Sandbox, secret_manager: FakeSecretManager, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    env = function_env(
        sandbox, secret_manager, tmp_path, WEBHOOK_URL=receiver.url, WEBHOOK_SECRET=SECRET
    )
    body = {"dataset_id": "d", "model_id": "m"}
    with FunctionServer("train_http", env) as server:
        response = requests.post(
            f"{server.url}/jobs", json=body, headers={"Idempotency-Key": "k-1"}, timeout=60
        )
        assert response.status_code == 201
    [notice] = receiver.unique_events.values()
    assert notice["data"]["idempotency_key"] == "k-1"
    assert "message_id" not in notice["data"]
    assert notice["data"]["training_job_id"] == response.json()["training_job_id"]


def test_receiver_down_never_fails_the_submission(
    sandbox: Sandbox, secret_manager: FakeSecretManager, tmp_path: Path
) -> None:
    env = function_env(
        sandbox,
        secret_manager,
        tmp_path,
        WEBHOOK_URL=unused_url(),
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_MAX_ATTEMPTS="2",
    )
    with FunctionServer("train_pubsub", env) as server:
        assert deliver(server, message_event("msg-down")).status_code == 200
        output = server.output()
    assert len(sandbox.jobs()) == 1
    assert "training_job.submitted" in output


def test_wrong_secret_is_detected_by_the_receiver(
    sandbox: Sandbox, secret_manager: FakeSecretManager, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    wrong = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    env = function_env(
        sandbox, secret_manager, tmp_path, WEBHOOK_URL=receiver.url, WEBHOOK_SECRET=wrong
    )
    with FunctionServer("train_pubsub", env) as server:
        assert deliver(server, message_event("msg-wrong")).status_code == 200
    assert receiver.events == [] and receiver.rejections
    assert len(sandbox.jobs()) == 1


def test_a_slow_receiver_never_slows_a_submission(
    sandbox: Sandbox, secret_manager: FakeSecretManager, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """Issue 12: the notice used to be delivered inside the request (3 x 5 s + backoff).

    The receiver answers nothing until released, and each attempt may wait 60 s,
    so a submit that still delivered in-line could not answer; all three do,
    while the receiver has answered nothing. On shutdown the queue is flushed.
    """
    env = function_env(
        sandbox,
        secret_manager,
        tmp_path,
        WEBHOOK_URL=receiver.url,
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_TIMEOUT_SECONDS="60",
    )
    receiver.hold()
    try:
        with FunctionServer("train_http", env) as server:
            answers = [
                requests.post(
                    f"{server.url}/jobs",
                    json={"dataset_id": "d", "model_id": "m"},
                    headers={"Idempotency-Key": f"slow-{i}"},
                    timeout=30,  # a failure bound, far below one in-line delivery
                )
                for i in range(3)
            ]
            assert [answer.status_code for answer in answers] == [201, 201, 201]
            assert receiver.answered == 0
            # One delivery waits on the receiver, two wait in the queue. Stop the
            # process (SIGTERM), then let the receiver answer: the queue must be
            # flushed before the process exits, or two notices never arrive.
            stopper = threading.Thread(target=server.stop)
            stopper.start()
            time.sleep(0.5)  # not an assertion: lets SIGTERM land first
            receiver.release()
            stopper.join()
    finally:
        receiver.release()
    delivered = {event["data"]["training_job_id"] for event in receiver.unique_events.values()}
    assert delivered == {answer.json()["training_job_id"] for answer in answers}
