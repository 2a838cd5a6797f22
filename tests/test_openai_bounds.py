"""The /v1 surface's bounds against a workspace and a deployment that misbehave (issue 27,
item 14): ``/v1/models`` in a workspace of many models, and the chat proxy facing a
stream that never ends, an answer too large and an endless error body.

The misbehaving deployment is a small server in this test (a stand-in for a model
server, reached through BASETEN_INFERENCE_URL); everything else is real: train_http
under functions-framework, the sandbox as Baseten, the unmodified ``openai`` SDK.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
import requests

from finetune_api.compat.models import MAX_MODELS_READ
from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from sandbox import Sandbox
from tests.conftest import function_env
from tests.test_openai_sdk import DATA, KEY, _serving_job, client

CHUNK = {
    "id": "c1",
    "object": "chat.completion.chunk",
    "created": 0,
    "model": "m",
    "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}],
}


class Misbehaving:
    """What the deployment does: ``mode`` is ``endless`` (a stream that never ends),
    ``large`` (a 200 JSON answer of 8 MiB) or ``error`` (a 500 whose body is 64 MiB)."""

    def __init__(self) -> None:
        self.mode = "endless"
        self.sent = 0
        self.closed = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.sent = 0
                outer.closed.clear()
                try:
                    if outer.mode == "endless":
                        self.send_response(200)
                        self.send_header("Content-Type", "text/event-stream")
                        self.end_headers()
                        while True:
                            self._write(b"data: " + json.dumps(CHUNK).encode() + b"\n\n")
                            time.sleep(0.02)
                    size = 8 << 20 if outer.mode == "large" else 64 << 20
                    self.send_response(200 if outer.mode == "large" else 500)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    for _ in range(size // 65536):
                        self._write(b" " * 65536)
                except OSError:
                    outer.closed.set()  # the proxy let go

            def _write(self, data: bytes) -> None:
                self.wfile.write(data)
                self.wfile.flush()
                outer.sent += len(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def world(
    sandbox_server: Sandbox,
    secret_manager: FakeSecretManager,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[FunctionServer, Sandbox, Misbehaving]]:
    sandbox_server.reset()
    model = Misbehaving()
    tmp = tmp_path_factory.mktemp("bounds-tmp")
    env = function_env(
        sandbox_server,
        secret_manager,
        tmp,
        API_KEYS=KEY,
        BASETEN_INFERENCE_URL=model.url + "/model-{model_id}",
        CHAT_MAX_SECONDS="2",
        CHAT_MAX_BYTES=str(1 << 20),
    )
    with FunctionServer("train_http", env, threads=8) as server:
        yield server, sandbox_server, model
    model.stop()


@pytest.fixture(scope="module")
def fine_tuned(world: tuple[FunctionServer, Sandbox, Misbehaving]) -> str:
    server, sandbox, _ = world
    # A busy workspace: many models of someone else's, some without deployments.
    requests.post(
        f"{sandbox.url}/_sandbox/models/seed", json={"count": 140, "deployments": 1}, timeout=30
    ).raise_for_status()
    requests.post(
        f"{sandbox.url}/_sandbox/models/seed", json={"count": 30, "deployments": 0}, timeout=30
    ).raise_for_status()
    training_file = client(server).files.create(file=("t.jsonl", DATA), purpose="fine-tune").id
    return _serving_job(server, sandbox, training_file)


def _deployment_reads(sandbox: Sandbox) -> int:
    return int(Counter(sandbox.stats()["by_route"])["GET /v1/models/<model_id>/deployments"])


def test_models_reads_a_bounded_number_of_models(
    world: tuple[FunctionServer, Sandbox, Misbehaving], fine_tuned: str
) -> None:
    server, sandbox, _ = world
    sdk = client(server)
    before = _deployment_reads(sandbox)
    listed = [m.id for m in sdk.models.list()]
    spent = _deployment_reads(sandbox) - before
    # 171 models, 141 with deployments: only the newest MAX_MODELS_READ are read, and
    # ours (the newest) is listed.
    assert spent == MAX_MODELS_READ
    assert listed == [fine_tuned]
    # Concurrent requests share a listing in progress rather than each reading again.
    before = _deployment_reads(sandbox)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: [m.id for m in sdk.models.list()], range(6)))
    assert all(answer == [fine_tuned] for answer in answers)
    assert _deployment_reads(sandbox) - before <= 6 * MAX_MODELS_READ


def _within(seconds: float, call: Any) -> Any:
    """``call()`` in a thread; fails (instead of hanging) when it outlasts ``seconds``."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            box["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def test_a_chat_stream_that_never_ends_is_cut_off(
    world: tuple[FunctionServer, Sandbox, Misbehaving], fine_tuned: str
) -> None:
    server, _, model = world
    model.mode = "endless"
    sdk = client(server)
    started = time.monotonic()

    def read_all() -> int:
        stream = sdk.chat.completions.create(
            model=fine_tuned, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        return sum(1 for _ in stream)

    with pytest.raises(openai.APIError, match="CHAT_MAX_SECONDS"):
        _within(30, read_all)
    assert time.monotonic() - started < 15
    assert model.closed.wait(10), "the proxy let go of the model's connection"


def test_a_whole_answer_past_the_size_bound_is_a_502(
    world: tuple[FunctionServer, Sandbox, Misbehaving], fine_tuned: str
) -> None:
    server, _, model = world
    model.mode = "large"
    answer = _within(
        60,
        lambda: requests.post(
            f"{server.url}/v1/chat/completions",
            json={"model": fine_tuned, "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=60,
        ),
    )
    assert answer.status_code == 502, answer.text[:300]
    assert "CHAT_MAX_BYTES" in answer.json()["error"]["message"]


def test_an_error_body_is_read_no_further_than_its_cap(
    world: tuple[FunctionServer, Sandbox, Misbehaving], fine_tuned: str
) -> None:
    server, _, model = world
    model.mode = "error"
    answer = _within(
        60,
        lambda: requests.post(
            f"{server.url}/v1/chat/completions",
            json={"model": fine_tuned, "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=60,
        ),
    )
    assert answer.status_code == 502 and "HTTP 500" in answer.json()["error"]["message"]
    assert model.closed.wait(10)
    # 64 MiB offered; what was taken is the cap plus what the sockets' buffers hold.
    assert model.sent < 16 << 20, model.sent
