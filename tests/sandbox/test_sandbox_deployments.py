"""Serving in the sandbox, driven by truss's own ``BasetenApi`` and checked against the spec.

The deploy request is built by truss's own ``_build_inference_template_request``
(the function behind ``truss train deploy_checkpoints``), so the sandbox accepts
exactly what truss sends; the ``/v1/models…`` answers are validated against the
vendored ``baseten-models-openapi.yaml``.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox import Sandbox
from tests.sandbox.support import API_KEY, FakeClock, Http, JobFactory

SPEC = Path(__file__).resolve().parents[2] / "sandbox" / "spec" / "baseten-models-openapi.yaml"


@functools.cache
def _components() -> dict[str, Any]:
    import yaml

    spec = yaml.safe_load(SPEC.read_text())
    components: dict[str, Any] = spec["components"]
    return components


def conforms(instance: Any, schema_name: str) -> None:
    """Raise unless ``instance`` is a valid ``#/components/schemas/<schema_name>``."""
    from openapi_schema_validator import OAS31Validator

    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": _components()}
    OAS31Validator(schema).validate(instance)


@pytest.fixture
def graphql_api(sandbox: Sandbox) -> Iterator[Any]:
    """truss's ``BasetenApi`` whose app URL is the sandbox (GraphQL at ``/graphql/``)."""
    from truss.remote.baseten import api as baseten_api
    from truss.remote.baseten.auth import ApiKeyCredential, AuthService

    baseten_api.API_URL_MAPPING[sandbox.url] = sandbox.url
    try:
        yield baseten_api.BasetenApi(sandbox.url, AuthService(ApiKeyCredential(api_key=API_KEY)))
    finally:
        del baseten_api.API_URL_MAPPING[sandbox.url]


def _completed_job(sandbox: Sandbox, make_job: JobFactory) -> tuple[dict[str, Any], str]:
    job = make_job()
    checkpoint = sandbox.add_checkpoint(job["id"])
    sandbox.set_status(job["id"], "TRAINING_JOB_COMPLETED")
    return job, checkpoint["checkpoint_id"]


def _truss_request(
    graphql_api: Any, job_id: str, checkpoint: str, *, model_name: str = "my-model", **kw: Any
) -> dict[str, Any]:
    """The mutation's request exactly as truss's CLI builds it (its own function)."""
    from truss.base.truss_config import AcceleratorSpec
    from truss.cli.train.deploy_checkpoints.deploy_checkpoints import (
        _build_inference_template_request,
    )
    from truss.cli.train.types import DeployCheckpointsConfigComplete
    from truss_train.definitions import (
        CheckpointList,
        Compute,
        DeployCheckpointsRuntime,
        LoRACheckpoint,
        LoRADetails,
        SecretReference,
    )

    config = DeployCheckpointsConfigComplete(
        checkpoint_details=CheckpointList(
            checkpoints=[
                LoRACheckpoint(
                    training_job_id=job_id,
                    checkpoint_name=checkpoint,
                    lora_details=LoRADetails(rank=16),
                )
            ],
            base_model_id="Qwen/Qwen3-0.6B",
        ),
        model_name=model_name,
        runtime=DeployCheckpointsRuntime(
            environment_variables={"HF_TOKEN": SecretReference(name="hf_access_token")}
        ),
        compute=Compute(accelerator=AcceleratorSpec(accelerator="H100", count=1)),
    )
    remote = types.SimpleNamespace(api=graphql_api)
    request: dict[str, Any] = _build_inference_template_request(
        checkpoint_deploy_config=config, remote_provider=remote, dry_run=kw.get("dry_run", False)
    )
    return request


def test_instance_types_through_truss(graphql_api: Any) -> None:
    types_ = graphql_api.get_instance_types()
    h100 = [t for t in types_ if t.gpu_type == "H100"]
    assert sorted(t.gpu_count for t in h100) == [1, 2, 4, 8]
    assert all(t.node_count == 1 for t in types_)
    assert any(t.gpu_count == 0 for t in types_)


def test_truss_built_mutation_creates_a_building_deployment(
    sandbox: Sandbox, make_job: JobFactory, graphql_api: Any, http: Http
) -> None:
    job, checkpoint = _completed_job(sandbox, make_job)
    request = _truss_request(graphql_api, job["id"], checkpoint)
    assert request["instance_type_id"] == "H100:1"  # truss chose the smallest H100 type
    result = graphql_api.create_model_version_from_inference_template(request)
    version = result["model_version"]
    assert set(version) == {"id", "name", "model_id"}
    assert '"hf_access_token"' in result["truss_config"]

    models = http.api("GET", "v1/models", params={"name": "my-model"}).json()
    conforms(models, "ModelsV1")
    [model] = models["models"]
    assert model["id"] == version["model_id"] and model["deployments_count"] == 1
    deployment = http.api("GET", f"v1/models/{model['id']}/deployments/{version['id']}").json()
    conforms(deployment, "DeploymentV1")
    assert deployment["status"] == "BUILDING"
    assert deployment["autoscaling_settings"] is None  # not finished deploying
    listed = http.api("GET", f"v1/models/{model['id']}/deployments").json()
    conforms(listed, "DeploymentsV1")
    conforms(http.api("GET", f"v1/models/{model['id']}").json(), "ModelV1")
    # A second version under the same model name joins the same model.
    graphql_api.create_model_version_from_inference_template(request)
    assert len(http.api("GET", "v1/models").json()["models"]) == 1


def test_dry_run_creates_nothing(
    sandbox: Sandbox, make_job: JobFactory, graphql_api: Any, http: Http
) -> None:
    job, checkpoint = _completed_job(sandbox, make_job)
    request = _truss_request(graphql_api, job["id"], checkpoint, dry_run=True)
    result = graphql_api.create_model_version_from_inference_template(request)
    assert result["model_version"] is None and result["truss_config"]
    assert http.api("GET", "v1/models").json() == {"models": []}


def test_bad_requests_answer_graphql_errors(
    sandbox: Sandbox, make_job: JobFactory, graphql_api: Any, http: Http
) -> None:
    from truss.remote.baseten.error import ApiError

    job, checkpoint = _completed_job(sandbox, make_job)
    request = _truss_request(graphql_api, job["id"], "checkpoint-404")
    with pytest.raises(ApiError, match="checkpoint-404") as missing:
        graphql_api.create_model_version_from_inference_template(request)
    assert missing.value.graphql_error_code == "RESOURCE_NOT_FOUND"
    bad = _truss_request(graphql_api, job["id"], checkpoint)
    bad["metadata"]["extra"] = 1
    with pytest.raises(ApiError, match=r"metadata\.extra: unknown field"):
        graphql_api.create_model_version_from_inference_template(bad)
    bad = _truss_request(graphql_api, job["id"], checkpoint, model_name="bad name!")
    with pytest.raises(ApiError, match="oracle_name"):
        graphql_api.create_model_version_from_inference_template(bad)
    assert http.api("GET", "v1/models").json() == {"models": []}


def test_faults_reach_the_graphql_path(
    sandbox: Sandbox, make_job: JobFactory, graphql_api: Any
) -> None:
    from truss.remote.baseten.error import ApiError

    job, checkpoint = _completed_job(sandbox, make_job)
    request = _truss_request(graphql_api, job["id"], checkpoint)
    sandbox.add_fault(
        path="^graphql/$",
        status=200,
        count=1,
        body={"data": None, "errors": [{"message": "try later", "extensions": {"code": "X"}}]},
    )
    with pytest.raises(ApiError, match="try later"):
        graphql_api.create_model_version_from_inference_template(request)
    sandbox.add_fault(path="^graphql/$", status=503, count=1)
    with pytest.raises(requests.HTTPError):
        graphql_api.create_model_version_from_inference_template(request)
    assert sandbox.state.deployments.mutations == 0


@pytest.fixture
def deployed(
    sandbox: Sandbox, make_job: JobFactory, graphql_api: Any
) -> Callable[[], dict[str, str]]:
    def _deploy() -> dict[str, str]:
        job, checkpoint = _completed_job(sandbox, make_job)
        result = graphql_api.create_model_version_from_inference_template(
            _truss_request(graphql_api, job["id"], checkpoint)
        )
        version: dict[str, str] = result["model_version"]
        return version

    return _deploy


def test_rename_is_unique_per_model_and_delete_and_deactivate(
    deployed: Callable[[], dict[str, str]], http: Http
) -> None:
    first, second = deployed(), deployed()
    model = first["model_id"]
    path = f"v1/models/{model}/deployments"
    renamed = http.api("PATCH", f"{path}/{first['id']}", {"name": "ft.p.j.checkpoint-1"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "ft.p.j.checkpoint-1"
    conforms(renamed.json(), "DeploymentV1")
    again = http.api("PATCH", f"{path}/{first['id']}", {"name": "ft.p.j.checkpoint-1"})
    assert again.status_code == 200  # renaming to its own name is harmless
    taken = http.api("PATCH", f"{path}/{second['id']}", {"name": "ft.p.j.checkpoint-1"})
    assert taken.status_code == 409
    bogus = http.api("PATCH", f"{path}/{second['id']}", {"bogus": 1}, probe=True)
    assert bogus.status_code == 400
    found = http.api("GET", path, params={"name": "ft.p.j.checkpoint-1"}).json()["deployments"]
    assert [d["id"] for d in found] == [first["id"]]
    deactivated = http.api("POST", f"{path}/{first['id']}/deactivate", {})
    assert deactivated.json() == {"success": True}
    conforms(deactivated.json(), "DeactivateResponseV1")
    assert http.api("GET", f"{path}/{first['id']}").json()["status"] == "INACTIVE"
    activated = http.api("POST", f"{path}/{first['id']}/activate", {})
    conforms(activated.json(), "ActivateResponseV1")
    assert http.api("GET", f"{path}/{first['id']}").json()["status"] == "DEPLOYING"
    tomb = http.api("DELETE", f"{path}/{second['id']}").json()
    conforms(tomb, "DeploymentTombstoneV1")
    assert http.api("GET", f"{path}/{second['id']}").status_code == 404


def test_clock_and_chat_completions(local_s3: Any, clock: FakeClock) -> None:
    from loopback.servers import running_sandbox

    with running_sandbox(API_KEY, local_s3.url, step_seconds=10, clock=clock) as private:
        from truss.remote.baseten import api as baseten_api
        from truss.remote.baseten.auth import ApiKeyCredential, AuthService

        baseten_api.API_URL_MAPPING[private.url] = private.url
        try:
            api = baseten_api.BasetenApi(
                private.url, AuthService(ApiKeyCredential(api_key=API_KEY))
            )
            http = Http(private.url, API_KEY)
            [job_id] = private.seed(status="TRAINING_JOB_COMPLETED")["job_ids"]
            checkpoint = private.add_checkpoint(job_id)["checkpoint_id"]
            version = api.create_model_version_from_inference_template(
                _truss_request(api, job_id, checkpoint)
            )["model_version"]
            path = f"v1/models/{version['model_id']}/deployments/{version['id']}"
            chat_path = (
                f"model-{version['model_id']}/deployment/{version['id']}/sync/v1/chat/completions"
            )
            question = {"messages": [{"role": "user", "content": "What is 2+2?"}]}
            seen = [http.api("GET", path).json()["status"]]
            early = http.api("POST", chat_path, question)
            assert early.status_code == 400 and "BUILDING" in early.json()["message"]
            for _ in range(3):
                # A little over a step: the sandbox's timestamps are strictly increasing.
                clock.advance(10.5)
                seen.append(http.api("GET", path).json()["status"])
            assert seen == ["BUILDING", "DEPLOYING", "ACTIVE", "ACTIVE"]
            active = http.api("GET", path).json()
            assert active["autoscaling_settings"]["min_replica"] == 0  # scales to zero
            answer = http.api("POST", chat_path, question)
            assert answer.status_code == 200
            first = answer.json()["choices"][0]["message"]
            assert first["role"] == "assistant" and "What is 2+2?" in first["content"]
            assert checkpoint in first["content"]
            assert http.api("POST", chat_path, question).json() == answer.json()  # deterministic
            unauthenticated = requests.post(f"{private.url}/{chat_path}", json=question, timeout=5)
            assert unauthenticated.status_code == 401

            # Failed on request: new deployments fail their build.
            private.state.deployments.configure({"fail_new_deployments": "OOM while building"})
            failing = api.create_model_version_from_inference_template(
                _truss_request(api, job_id, checkpoint)
            )["model_version"]
            clock.advance(10.5)
            failed_path = f"v1/models/{failing['model_id']}/deployments/{failing['id']}"
            assert http.api("GET", failed_path).json()["status"] == "BUILD_FAILED"
            forced = http.control(
                "POST", f"deployments/{failing['id']}/status", {"status": "ACTIVE"}
            )
            assert forced.json()["status"] == "ACTIVE"
        finally:
            del baseten_api.API_URL_MAPPING[private.url]


def test_download_answers_presigned_urls_of_the_pushed_archive(
    http: Http, make_job: JobFactory, local_s3: Any
) -> None:
    job = make_job()
    path = f"v1/training_projects/{job['training_project_id']}/jobs/{job['id']}/download"
    body = http.api("GET", path).json()
    [url] = body["artifact_presigned_urls"]
    fetched = requests.get(url, timeout=5)
    assert fetched.status_code == 200 and fetched.content == b"x"
    assert http.api("GET", path.replace(job["id"], "nope123")).status_code == 404
