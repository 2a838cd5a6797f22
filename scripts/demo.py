"""`make run`: the whole flow on loopback, against the local Baseten sandbox.

Starts an S3-compatible server (moto), the Baseten sandbox, a webhook receiver
that verifies signatures, and the `train_http` and `poll_jobs` functions under
real functions-framework processes (the same loopback helpers the tests use);
uploads the bundled support chats (``examples/support_chats.jsonl``) and shows
the check, asks for a dry run's estimate (tokens counted with the model's
tokenizer, served by a local Hugging Face Hub stand-in), then submits a job
that trains on that file over HTTP, polls until the job finishes, and
shows every event and checkpoint, a live progress bar (step/total, loss, ETA)
from the job's own log lines, and writes the loss curve as SVG (``demo-output/``
in the current folder, or ``DEMO_OUTPUT_DIR``); the job holds out a tenth of the chats
(``validation_split``), so it then prints the base model beside the tuned one
(``GET /jobs/{p}/{j}/evaluation``: eval loss and token accuracy, and one held-out
prompt answered by each); then deploys the final
checkpoint as a model, waits for it to go active, asks it one question through
its OpenAI-style chat-completions endpoint, prints the answer, tells the same
story through the unmodified ``openai`` SDK (``scripts/openai_demo.py``: chat with
the fine-tuned model, upload a file, start, list, cancel a job) and deactivates
the deployment. A last dry run shows GPU hours grounded in the throughput the
finished job measured.
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
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests

# The same loopback helpers the test suite uses.
from loopback.functions import FunctionServer
from loopback.hf_hub import HfHub, tiny_tokenizer_json
from loopback.servers import LocalS3, start_sandbox
from loopback.webhook_receiver import WebhookReceiver

DATA_FILE = Path(__file__).resolve().parent.parent / "examples" / "support_chats.jsonl"
REQUEST = {
    # "training_file": the id of the File uploaded first (see main()).
    "model_id": "openai/gpt-oss-20b",
    # Two epochs over the sandbox's two running steps: a checkpoint at each epoch's end.
    "hyperparameters": {
        "num_epochs": 2,
        "lora_rank": 32,
        "learning_rate": 0.0001,
        "validation_split": 0.1,
    },
    "compute": {"accelerator": "H100", "gpu_count": 1},
}
STEP_SECONDS = 2.0
QUESTION = "In one sentence: what did you learn from your fine-tuning data?"
BAR_WIDTH = 30
# How much of each sample text the demo prints (the route answers up to 2,000 characters).
SAMPLE_PREVIEW_CHARS = 240


def progress_bar(progress: dict[str, Any]) -> str:
    """``[#########.....]  25/50 steps  loss 1.234  ETA 4 s`` from a Job's ``progress``."""
    total = progress.get("total_steps") or 0
    done = round(BAR_WIDTH * (progress.get("percent") or 0) / 100)
    bar = "#" * done + "." * (BAR_WIDTH - done)
    loss = progress.get("latest_loss")
    eta = progress.get("eta_seconds")
    parts = [f"[{bar}] {progress['step']:>4}/{total} steps"]
    if loss is not None:
        parts.append(f"loss {loss:.3f}")
    if eta is not None:
        parts.append(f"ETA {eta:.0f} s")
    return "  ".join(parts)


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else None


def _cell(value: Any, percent: bool = False, signed: bool = False) -> str:
    number = _number(value)
    if number is None:
        return "—"
    if percent:
        return f"{number * 100:+.1f} pts" if signed else f"{number * 100:.1f}%"
    return f"{number:+.4f}" if signed else f"{number:.4f}"


def _preview(text: Any) -> str:
    if not isinstance(text, str):
        return "—"
    flat = " ".join(text.split())
    return flat if len(flat) <= SAMPLE_PREVIEW_CHARS else flat[: SAMPLE_PREVIEW_CHARS - 1] + "…"


def evaluation_report(answer: Any) -> list[str]:
    """The base-versus-tuned table and the first sample pair of ``GET .../evaluation``'s
    answer (``{"base", "tuned", "change", "samples"}``); anything missing shows as —."""
    answer = answer if isinstance(answer, Mapping) else {}

    def member(name: str) -> Mapping[str, Any]:
        value = answer.get(name)
        return value if isinstance(value, Mapping) else {}

    base, tuned, change = member("base"), member("tuned"), member("change")
    lines = [f"  {'':<16}{'base':>10}{'tuned':>10}{'change':>12}"]
    for key, label, percent in (
        ("eval_loss", "eval loss", False),
        ("eval_mean_token_accuracy", "token accuracy", True),
    ):
        lines.append(
            f"  {label:<16}{_cell(base.get(key), percent):>10}{_cell(tuned.get(key), percent):>10}"
            f"{_cell(change.get(key), percent, signed=True):>12}"
        )
    samples = answer.get("samples")
    samples = [s for s in samples if isinstance(s, Mapping)] if isinstance(samples, list) else []
    if samples:
        first = samples[0]
        lines.append(f"  sample 1 of {len(samples)} (held out, answered greedily by each model):")
        for key in ("prompt", "reference", "base", "tuned"):
            lines.append(f"    {key + ':':<11}{_preview(first.get(key))}")
    else:
        lines.append("  no samples")
    return lines


def show_evaluation(path: str) -> None:
    """Did it get better? The job's base-versus-tuned table and one sample pair."""
    say(f"\n$ curl {path}/evaluation")
    try:
        response = requests.get(f"{path}/evaluation", timeout=60)
        answer = response.json() if response.status_code == 200 else None
    except (requests.RequestException, ValueError) as exc:
        say(f"→ the evaluation could not be read: {type(exc).__name__}")
        return
    if answer is None:
        say(f"→ {response.status_code}: this service has no evaluation to show")
        return
    say("→ 200: the base model beside the tuned one, on the held-out chats")
    for line in evaluation_report(answer):
        say(line)


def say(text: str) -> None:
    print(text, flush=True)


class Bar:
    """One progress line, redrawn in place on a terminal (one line per change otherwise)."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.last = ""

    def show(self, text: str) -> None:
        if text == self.last:
            return
        self.last = text
        if self.tty:
            print(f"\r  {text}", end="", flush=True)
        else:
            say(f"  {text}")

    def end(self) -> None:
        if self.tty and self.last:
            print(flush=True)
        self.last = ""


def show(title: str, body: Any) -> None:
    say(f"{title}\n{json.dumps(body, indent=2)}")


def demo_tokenizer() -> bytes:
    """A small word-level tokenizer.json built from the bundled chats (for the Hub stand-in)."""
    texts = []
    for line in DATA_FILE.read_text(encoding="utf-8").splitlines():
        # An assistant turn that calls a tool may have no content.
        texts += [m.get("content") or "" for m in json.loads(line)["messages"]]
    return tiny_tokenizer_json([*texts, "system user assistant"])


def upload_and_estimate(train: str) -> dict[str, Any] | None:
    """Upload the bundled file, show its check and a dry run's estimate; the File, or None."""
    say(f"$ curl -X POST {train}/files -F purpose=fine-tune -F file=@{DATA_FILE.name}")
    with DATA_FILE.open("rb") as data:
        response = requests.post(
            f"{train}/files",
            files={"file": (DATA_FILE.name, data, "application/jsonl")},
            data={"purpose": "fine-tune"},
            timeout=60,
        )
    show(f"→ {response.status_code}", response.json())
    if response.status_code != 201 or response.json()["status"] != "processed":
        return None
    upload: dict[str, Any] = response.json()
    if not dry_run(train, upload["id"]):
        return None
    return upload


def dry_run(train: str, file_id: str) -> dict[str, Any] | None:
    body = {**REQUEST, "training_file": file_id, "dry_run": True}
    say(f"\n$ curl -X POST {train}/jobs -d '{json.dumps(body)}'")
    response = requests.post(f"{train}/jobs", json=body, timeout=60)
    if response.status_code != 200:
        show(f"→ {response.status_code}", response.json())
        return None
    estimate: dict[str, Any] = response.json()["estimate"]
    show(f"→ {response.status_code} (nothing created); estimate:", estimate)
    return estimate


def main() -> int:
    api_key = "sandbox-" + secrets.token_hex(12)
    webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    with ExitStack() as stack:
        s3 = stack.enter_context(LocalS3())
        sandbox = start_sandbox(api_key, s3.url, step_seconds=STEP_SECONDS)
        stack.callback(sandbox.stop)
        receiver = stack.enter_context(WebhookReceiver(webhook_secret))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="finetune-demo-")))
        files = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="finetune-files-")))
        # Stands in for huggingface.co: the dry run fetches the model's tokenizer.json here.
        hub = stack.enter_context(
            HfHub({REQUEST["model_id"]: {"tokenizer.json": demo_tokenizer()}})
        )
        env = {
            "BASETEN_API_KEY": api_key,
            "BASETEN_REMOTE_URL": sandbox.url,
            "BASETEN_API_URL": sandbox.url,
            # Where deployed models answer (Baseten: https://model-{id}.api.baseten.co).
            "BASETEN_INFERENCE_URL": sandbox.url + "/model-{model_id}",
            "WEBHOOK_URL": receiver.url,
            "WEBHOOK_SECRET": webhook_secret,
            "POLL_LOOKBACK_SECONDS": "600",
            # The poll's state, in a local file: no cloud needed (GCP: a bucket).
            "POLL_STATE_FILE": str(tmp / "poll-state.json"),
            "TMPDIR": str(tmp),
            # Uploaded files and the job index, in a local folder (GCP: FILES_BUCKET).
            "FILES_DIR": str(files / "store"),
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(files / "hf-home"),
        }
        say(f"Local Baseten sandbox on {sandbox.url} (jobs advance every {STEP_SECONDS:g} s)")
        train = stack.enter_context(FunctionServer("train_http", env)).url
        poll = stack.enter_context(FunctionServer("poll_jobs", env)).url
        say(f"train_http on {train}, poll_jobs on {poll}")
        say(
            f"Hugging Face Hub stand-in on {hub.url} (HF_ENDPOINT): it serves a small "
            f"tokenizer.json for {REQUEST['model_id']}, built from the bundled chats\n"
        )
        upload = upload_and_estimate(train)
        if upload is None:
            return 1
        # Cloud Scheduler's first tick: an empty poll (the poll function warms up here, so
        # the next poll, right after the submit, still sees the job in its first state).
        requests.post(poll, json={}, timeout=60)
        request = {**REQUEST, "training_file": upload["id"]}
        say(
            "\n$ curl -X POST "
            + train
            + "/jobs -H 'Content-Type: application/json' -d '"
            + json.dumps(request)
            + "'"
        )
        started = time.monotonic()
        response = requests.post(f"{train}/jobs", json=request, timeout=60)
        show(f"→ {response.status_code} in {time.monotonic() - started:.2f} s", response.json())
        if response.status_code != 201:
            return 1
        job = response.json()
        path = f"{train}/jobs/{job['training_project_id']}/{job['training_job_id']}"

        seen = 0
        status = job["status"]
        finished = False
        bar = Bar()
        deadline = time.monotonic() + 60
        while not finished and time.monotonic() < deadline:
            time.sleep(STEP_SECONDS / 4)
            current = requests.get(path, timeout=30).json()
            if current["status"] != status:
                status = current["status"]
                count = len(current["checkpoints"])
                bar.end()
                say(f"job {current['training_job_id']}: {status} ({count} checkpoint(s))")
            if current.get("progress"):
                bar.show(progress_bar(current["progress"]))
            finished = status in {"completed", "failed", "stopped", "deploy_failed"}
            # What Cloud Scheduler does every few minutes; the last poll sees the end.
            report = requests.post(poll, json={}, timeout=60).json()
            # The poll remembers what it delivered, so each notice arrives once;
            # a receiver still keeps only the first delivery of each webhook-id.
            received = list(receiver.unique_events.values())
            if received[seen:]:
                bar.end()
            for event in received[seen:]:
                extra = event["data"].get("checkpoint", {}).get("checkpoint_id", "")
                say(f"  webhook {event['id']} (verified): {event['type']} {extra}".rstrip())
                if event["data"].get("summary"):
                    say(f"    summary: {json.dumps(event['data']['summary'])}")
            seen = len(received)
        bar.end()
        show("\nLast poll report:", report)
        final = requests.get(path, timeout=30).json()
        show(f"$ curl {path}", final)
        metrics = requests.get(f"{path}/metrics", params={"points": 20}, timeout=60).json()
        if metrics.get("training"):
            show(f"$ curl {path}/metrics  (summary)", metrics["training"]["summary"])
        show_evaluation(path)
        chart = requests.get(f"{path}/metrics", params={"format": "svg"}, timeout=60)
        if chart.status_code == 200:
            out_dir = Path(os.environ.get("DEMO_OUTPUT_DIR") or "demo-output")
            out_dir.mkdir(parents=True, exist_ok=True)
            chart_path = out_dir / f"loss-curve-{job['training_job_id']}.svg"
            chart_path.write_text(chart.text, encoding="utf-8")
            say(f"\nLoss curve (SVG): {chart_path.resolve()}")
        say(
            f"\nDone: job {status}; {seen} signed webhook(s) verified "
            "(duplicates dropped by webhook-id)."
        )
        if receiver.rejections:
            say(f"rejected webhooks: {receiver.rejections}")
            return 1
        if status != "completed":
            return 1
        say("\nThe same dry run again: the finished job measured this model's throughput.")
        if dry_run(train, upload["id"]) is None:
            return 1
        served = serve_and_ask(path, poll, api_key, receiver, seen)
        if receiver.rejections:
            say(f"rejected webhooks: {receiver.rejections}")
            return 1
        say("\nEverything started here is stopped now.")
        return 0 if served else 1


def serve_and_ask(
    job_path: str, poll: str, api_key: str, receiver: WebhookReceiver, seen: int
) -> bool:
    """Deploy the job's final checkpoint, wait for active, ask one question, deactivate."""
    say(f"\n$ curl -X POST {job_path}/deployments")
    response = requests.post(f"{job_path}/deployments", timeout=60)
    show(f"→ {response.status_code}", response.json())
    if response.status_code != 202:
        return False
    deployment = response.json()
    base = job_path.split("/jobs/", 1)[0]
    path = f"{base}/deployments/{deployment['model_id']}/{deployment['deployment_id']}"
    status = deployment["status"]
    deadline = time.monotonic() + 60
    while status != "active" and time.monotonic() < deadline:
        time.sleep(STEP_SECONDS / 2)
        current = requests.get(path, timeout=30).json()
        if current["status"] != status:
            status = current["status"]
            say(f"deployment {deployment['deployment_id']}: {status}")
        requests.post(poll, json={}, timeout=60)
        received = list(receiver.unique_events.values())
        for event in received[seen:]:
            say(f"  webhook {event['id']} (verified): {event['type']}")
        seen = len(received)
    if status != "active":
        say(f"the deployment did not become active (it is {status})")
        return False
    question = {
        "model": deployment["model_name"],
        "messages": [{"role": "user", "content": QUESTION}],
    }
    say(f"\n$ curl -X POST {deployment['predict_url']} -H 'Authorization: Api-Key …'")
    say(f"  ask: {QUESTION}")
    answer = requests.post(
        deployment["predict_url"],
        json=question,
        headers={"Authorization": f"Api-Key {api_key}"},
        timeout=60,
    )
    if answer.status_code != 200:
        say(f"→ {answer.status_code} {answer.text}")
        return False
    say(f"  answer: {answer.json()['choices'][0]['message']['content']}")
    # The same service through the unmodified OpenAI SDK (scripts/openai_demo.py).
    from scripts.openai_demo import story

    if not story(base, say=say):
        return False
    # A deployment costs money while it has replicas: stop paying when done.
    stopped = requests.post(f"{path}/deactivate", timeout=60).json()
    say(f"\n$ curl -X POST {path}/deactivate\n→ deployment {stopped['status']}")
    return stopped["status"] == "inactive"


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        say("\ninterrupted; stopping everything")
        sys.exit(130)
