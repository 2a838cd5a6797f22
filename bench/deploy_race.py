"""Deploy idempotency under a cross-instance race: deployments left per checkpoint.

Two ``train_http`` processes (two instances) receive the same deploy request
(same job, same checkpoint, same model name, no key) at once, six times per
round, with every sandbox request slowed by ``latency_ms`` so that both
instances look for an existing deployment before either has named its own.
The baseline is the same burst sent the way ``truss train deploy_checkpoints``
sends it (the GraphQL mutation, no lookup): one deployment per request. We
count the deployments left per checkpoint (must be 1), the duplicates created
and deleted, whether every answer names the kept deployment, and the burst's
slowest answer.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from bench.harness import Baseten, baseten, expect, first_answer, launch, ms, service_env, workdir

API_KEY = "bench-deploy-race-" + uuid.uuid4().hex
BURST = 6
MUTATION = (
    "mutation ($request: CreateModelVersionFromInferenceTemplateRequest!) {"
    " create_model_version_from_inference_template(request: $request) {"
    " model_version { id name model_id } truss_config } }"
)


def _completed_job(bt: Baseten) -> tuple[str, str]:
    seeded = bt.control(
        "POST", "seed", {"status": "TRAINING_JOB_COMPLETED", "checkpoints_per_job": 1}
    )
    return seeded["projects"][0]["id"], seeded["job_ids"][0]


def _deployments(bt: Baseten) -> dict[str, Any]:
    state: dict[str, Any] = bt.control("GET", "deployments")
    return state


def _truss_style_burst(bt: Baseten, job_id: str) -> None:
    request = {
        "metadata": {"oracle_name": "baseline-bot"},
        "weights_sources": [
            {
                "weight_source_type": "B10_CHECKPOINTING",
                "b10_training_checkpoint_weights_source": {
                    "checkpoint": {"training_job_id": job_id, "checkpoint_name": "checkpoint-1"}
                },
            }
        ],
        "inference_stack": {"stack_type": "VLLM", "environment_variables": []},
        "instance_type_id": "H100:1",
        "dry_run": False,
    }

    def send(_: int) -> requests.Response:
        return requests.post(
            f"{bt.url}/graphql/",
            json={"query": MUTATION, "variables": {"request": request}},
            headers={"Authorization": f"Api-Key {bt.api_key}"},
            timeout=60,
        )

    with ThreadPoolExecutor(BURST) as pool:
        for response in pool.map(send, range(BURST)):
            expect(response, 200, "baseline mutation")


def run(rounds: int = 5, latency_ms: int = 40) -> dict[str, Any]:
    with baseten(API_KEY) as bt, workdir("deploy-race") as tmp:
        env = service_env(bt, tmp, BASETEN_REMOTE_URL=bt.url)
        functions = [launch("train_http", env) for _ in range(2)]
        try:
            for function in functions:
                expect(first_answer(function, "GET", "/healthz")[1], 200, "train_http /healthz")
            urls = [function.url for function in functions]
            bt.configure(latency_ms=latency_ms)
            _, baseline_job = _completed_job(bt)
            _truss_style_burst(bt, baseline_job)
            baseline = len(_deployments(bt)["deployments"])
            bt.reset()
            bt.configure(latency_ms=latency_ms)
            live_per_checkpoint: list[int] = []
            consistent = True
            slowest: list[float] = []
            for _ in range(rounds):
                project_id, job_id = _completed_job(bt)
                before = _deployments(bt)["mutations"]

                def send(index: int, project_id: str = project_id, job_id: str = job_id) -> Any:
                    started = time.perf_counter()
                    response = requests.post(
                        f"{urls[index % 2]}/jobs/{project_id}/{job_id}/deployments",
                        json={"model_name": f"race-{job_id}"},
                        timeout=120,
                    )
                    return response, time.perf_counter() - started

                with ThreadPoolExecutor(BURST) as pool:
                    answers = list(pool.map(send, range(BURST)))
                state = _deployments(bt)
                mine = [
                    d
                    for d in state["deployments"]
                    if d["name"].startswith(f"ft.{project_id}.{job_id}.")
                ]
                named = {response.json().get("deployment_id") for response, _ in answers}
                consistent &= all(response.status_code in (200, 202) for response, _ in answers)
                consistent &= len(named) == 1 and {d["id"] for d in mine} == named
                live_per_checkpoint.append(len(mine))
                slowest.append(max(seconds for _, seconds in answers))
                consistent &= state["mutations"] - before >= len(mine)
            total_mutations = _deployments(bt)["mutations"]
        finally:
            for function in functions:
                function.stop()
    return {
        "rounds": rounds,
        "burst": BURST,
        "latency_ms": latency_ms,
        "baseline_deployments_per_burst": baseline,
        "max_live_deployments_per_checkpoint": max(live_per_checkpoint),
        "deployments_created": total_mutations,
        "duplicates_deleted": total_mutations - sum(live_per_checkpoint),
        "slowest_answer_ms": ms(max(slowest)),
        "every_answer_names_the_kept_deployment": consistent,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
