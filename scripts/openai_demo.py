"""The same story told through the unmodified ``openai`` SDK: point ``base_url`` at ``/v1``.

``python -m scripts.openai_demo http://127.0.0.1:8080 [API_KEY]`` against a running
``train_http`` (``make serve``); ``make run`` calls :func:`story` at its end, while the
demo's model is still deployed.
"""

from __future__ import annotations

import json
import sys
import time

from openai import OpenAI

DATA = "".join(
    json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    + "\n"
    for q, a in [("Hi", "Hello!"), ("2+2?", "4"), ("Capital of France?", "Paris")] * 4
).encode()


def story(train_url: str, api_key: str = "unused", *, say: object = print) -> bool:
    out = say if callable(say) else print
    client = OpenAI(base_url=f"{train_url}/v1", api_key=api_key, max_retries=1)
    out(f"\n# The same through the OpenAI SDK: OpenAI(base_url='{train_url}/v1')")

    # Chat with the model the newest job trained (when it is deployed).
    newest = next(iter(client.fine_tuning.jobs.list(limit=1)), None)
    if newest is not None:
        job = client.fine_tuning.jobs.retrieve(newest.id)
        out(
            f"client.fine_tuning.jobs.retrieve('{job.id}') -> {job.status}, "
            f"model {job.fine_tuned_model}"
        )
        if job.fine_tuned_model:
            stream = client.chat.completions.create(
                model=job.fine_tuned_model,
                messages=[{"role": "user", "content": "Say hello through the proxy."}],
                stream=True,
            )
            words = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            out(f"client.chat.completions.create(stream=True) -> {words}")

    # Upload your own data, start a job on it, read its events, cancel it.
    file = client.files.create(file=("demo.jsonl", DATA), purpose="fine-tune")
    file = client.files.wait_for_processing(file.id, poll_interval=0.2)
    out(f"client.files.create(...) -> {file.id} {file.status}")
    job = client.fine_tuning.jobs.create(
        model="Qwen/Qwen3-0.6B",
        training_file=file.id,
        suffix="sdk-demo",
        metadata={"source": "openai_demo"},
        hyperparameters={"n_epochs": 1},
    )
    out(f"client.fine_tuning.jobs.create(...) -> {job.id} {job.status}")
    time.sleep(0.5)
    mine = [j.id for j in client.fine_tuning.jobs.list(metadata={"source": "openai_demo"})]
    out(f"client.fine_tuning.jobs.list(metadata={{'source': 'openai_demo'}}) -> {len(mine)} job(s)")
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    out(f"client.fine_tuning.jobs.cancel('{job.id}') -> {cancelled.status}")
    events = client.fine_tuning.jobs.list_events(job.id, limit=3)
    for event in events.data:
        out(f"  event: {event.message}")
    return cancelled.status == "cancelled" and job.id in mine


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
    key = sys.argv[2] if len(sys.argv) > 2 else "unused"
    sys.exit(0 if story(url, key) else 1)
