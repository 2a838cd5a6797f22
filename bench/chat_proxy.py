"""Time to first byte of a streamed chat: through ``/v1/chat/completions`` vs the deployment.

A completed job's checkpoint is deployed through ``train_http`` (the sandbox's
GraphQL mutation) and forced ACTIVE. The sandbox then answers chat completions
with ``first_token_ms`` before the first server-sent event (a model's time to
first token) and ``token_ms`` between events. We time, from the request's start
to the first body byte, ``stream: true`` requests sent alternately

* straight to the sandbox's deployment URL with the Baseten key (the baseline:
  what a caller holding the Baseten key would see), and
* to ``train_http``'s ``/v1/chat/completions`` with the service's key and the
  fine-tuned model's name (the proxy: auth, the model check, the forward).

Goal: median proxy TTFB <= 1.2 times the direct one. The same is measured with
``first_token_ms`` 0 to show the proxy's own overhead in milliseconds.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import requests

from bench.harness import (
    Baseten,
    baseten,
    expect,
    first_answer,
    launch,
    median,
    ms,
    service_env,
    workdir,
)

API_KEY = "bench-chat-proxy-" + uuid.uuid4().hex
SERVICE_KEY = "bench-service-key-0001"
BODY = {"messages": [{"role": "user", "content": "tell me about fine-tuning"}], "stream": True}


def _ttfb(url: str, body: dict[str, Any], headers: dict[str, str]) -> float:
    started = time.perf_counter()
    with requests.post(url, json=body, headers=headers, stream=True, timeout=60) as response:
        expect(response, 200, url)
        first = next(response.iter_content(chunk_size=1))
        elapsed = time.perf_counter() - started
        assert first
        for _ in response.iter_content(chunk_size=65536):
            pass
    return elapsed


def _deploy(bt: Baseten, url: str) -> tuple[str, str]:
    seeded = bt.control(
        "POST", "seed", {"status": "TRAINING_JOB_COMPLETED", "checkpoints_per_job": 1}
    )
    project_id, job_id = seeded["projects"][0]["id"], seeded["job_ids"][0]
    response = requests.post(
        f"{url}/jobs/{project_id}/{job_id}/deployments",
        json={"model_name": "bench-chat"},
        headers={"X-Api-Key": SERVICE_KEY},
        timeout=120,
    )
    expect(response, 202, "deploy")
    deployment = response.json()
    bt.control("POST", f"deployments/{deployment['deployment_id']}/status", {"status": "ACTIVE"})
    return deployment["model_id"], deployment["deployment_id"]


def _measure(
    bt: Baseten, url: str, model_id: str, deployment_id: str, first_token_ms: float, rounds: int
) -> dict[str, Any]:
    bt.control("POST", "deployments/config", {"first_token_ms": first_token_ms, "token_ms": 2})
    direct_url = f"{bt.url}/model-{model_id}/deployment/{deployment_id}/sync/v1/chat/completions"
    direct_headers = {"Authorization": f"Api-Key {bt.api_key}"}
    proxy_url = f"{url}/v1/chat/completions"
    proxy_headers = {"Authorization": f"Bearer {SERVICE_KEY}"}
    model = f"ft:bench-chat:{model_id}:{deployment_id}"
    direct: list[float] = []
    proxy: list[float] = []
    for index in range(rounds + 2):
        d = _ttfb(direct_url, BODY, direct_headers)
        p = _ttfb(proxy_url, {**BODY, "model": model}, proxy_headers)
        if index >= 2:  # the first two warm the connection pools and the model check
            direct.append(d)
            proxy.append(p)
    return {
        "first_token_ms": first_token_ms,
        "direct_median_ms": ms(median(direct)),
        "proxy_median_ms": ms(median(proxy)),
        "ratio": round(median(proxy) / median(direct), 3),
        "overhead_ms": ms(median(proxy) - median(direct)),
    }


def run(rounds: int = 30, first_token_ms: float = 100.0) -> dict[str, Any]:
    with baseten(API_KEY) as bt, workdir("chat-proxy") as tmp:
        env = service_env(
            bt,
            tmp,
            BASETEN_REMOTE_URL=bt.url,
            BASETEN_INFERENCE_URL=bt.url + "/model-{model_id}",
            API_KEYS=SERVICE_KEY,
            FILES_DIR=str(tmp / "files"),
        )
        function = launch("train_http", env)
        try:
            expect(first_answer(function, "GET", "/healthz")[1], 200, "train_http /healthz")
            model_id, deployment_id = _deploy(bt, function.url)
            paced = _measure(bt, function.url, model_id, deployment_id, first_token_ms, rounds)
            bare = _measure(bt, function.url, model_id, deployment_id, 0.0, rounds)
        finally:
            function.stop()
    return {"rounds": rounds, "paced": paced, "bare": bare}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
