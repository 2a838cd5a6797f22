"""`make run`: the whole flow on loopback, against the local Baseten sandbox.

Starts an S3-compatible server (moto), the Baseten sandbox, a webhook receiver
that verifies signatures, and the `train_http` and `poll_jobs` functions under
real functions-framework processes; submits the recipe's example job over
HTTP, polls until the job finishes, and shows every event and checkpoint.
No Baseten account is needed and nothing costs money. Everything started here
is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from moto.server import ThreadedMotoServer
from standardwebhooks import Webhook

from sandbox import Sandbox

ROOT = Path(__file__).resolve().parent.parent
REQUEST = {
    "dataset_id": "HuggingFaceH4/Multilingual-Thinking",
    "model_id": "openai/gpt-oss-20b",
    "hyperparameters": {"num_epochs": 2, "lora_rank": 32, "learning_rate": 0.0001},
    "compute": {"accelerator": "H100", "gpu_count": 1},
}
STEP_SECONDS = 2.0


def say(text: str) -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def webhook_receiver(secret: str) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    lock = threading.Lock()
    verifier = Webhook(secret)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                event = verifier.verify(body, dict(self.headers.items()))
            except Exception:  # noqa: BLE001 - any verification failure is a 400
                self.send_response(400)
                self.end_headers()
                say("  webhook REJECTED: bad signature")
                return
            # Delivery is at-least-once (each poll re-reports its window):
            # a receiver dedupes on webhook-id, as this one does.
            webhook_id = self.headers.get("webhook-id", "")
            with lock:
                if webhook_id not in seen_ids:
                    seen_ids.add(webhook_id)
                    received.append(event)
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks", received
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def function(target: str, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("functions-framework")),
            "--source",
            str(ROOT / "main.py"),
            "--target",
            target,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{url}/healthz", timeout=1)
                break
            except requests.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{target} did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def show(title: str, body: Any) -> None:
    say(f"{title}\n{json.dumps(body, indent=2)}")


def main() -> int:
    api_key = "sandbox-" + secrets.token_hex(12)
    webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    with ExitStack() as stack:
        s3_port = free_port()
        s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
        s3.start()
        stack.callback(s3.stop)
        sandbox = Sandbox(
            api_key=api_key, s3_endpoint=f"http://127.0.0.1:{s3_port}", step_seconds=STEP_SECONDS
        )
        sandbox.start()
        stack.callback(sandbox.stop)
        hook_url, received = stack.enter_context(webhook_receiver(webhook_secret))
        env = {
            "BASETEN_API_KEY": api_key,
            "BASETEN_REMOTE_URL": sandbox.url,
            "BASETEN_API_URL": sandbox.url,
            "WEBHOOK_URL": hook_url,
            "WEBHOOK_SECRET": webhook_secret,
            "POLL_LOOKBACK_SECONDS": "600",
        }
        say(f"Local Baseten sandbox on {sandbox.url} (jobs advance every {STEP_SECONDS:g} s)")
        train = stack.enter_context(function("train_http", env))
        poll = stack.enter_context(function("poll_jobs", env))
        say(f"train_http on {train}, poll_jobs on {poll}\n")

        say(
            "$ curl -X POST "
            + train
            + "/jobs -H 'Content-Type: application/json' -d '"
            + json.dumps(REQUEST)
            + "'"
        )
        started = time.monotonic()
        response = requests.post(f"{train}/jobs", json=REQUEST, timeout=60)
        show(f"→ {response.status_code} in {time.monotonic() - started:.2f} s", response.json())
        if response.status_code != 201:
            return 1
        job = response.json()
        path = f"{train}/jobs/{job['training_project_id']}/{job['training_job_id']}"

        seen = 0
        status = job["status"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(STEP_SECONDS / 2)
            report = requests.post(poll, json={}, timeout=60).json()
            current = requests.get(path, timeout=30).json()
            if current["status"] != status:
                status = current["status"]
                count = len(current["checkpoints"])
                say(f"job {current['training_job_id']}: {status} ({count} checkpoint(s))")
            for event in received[seen:]:
                extra = event["data"].get("checkpoint", {}).get("checkpoint_id", "")
                say(f"  webhook {event['id']} (verified): {event['type']} {extra}".rstrip())
            seen = len(received)
            if status in {"completed", "failed", "stopped", "deploy_failed"}:
                break
        show("\nLast poll report:", report)
        final = requests.get(path, timeout=30).json()
        show(f"$ curl {path}", final)
        say(
            f"\nDone: job {status}; {seen} signed webhook(s) verified "
            "(duplicates dropped by webhook-id). Everything started here is stopped now."
        )
        return 0 if status == "completed" else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        say("\ninterrupted; stopping everything")
        sys.exit(130)
