"""Fidelity: drive the sandbox with truss's own ``BasetenApi``, as stripe-mock is with stripe's."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path
from typing import Any

import pytest
import requests

from loopback.servers import LocalS3
from sandbox import Sandbox
from tests.sandbox.support import API_KEY

JOB_FIELDS = {
    "id",
    "name",
    "created_at",
    "updated_at",
    "current_status",
    "error_message",
    "instance_type",
    "training_project_id",
    "training_project",
}
RFC3339_MICROS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
BASETEN_ID = re.compile(r"[a-z0-9]{7}")


def _training_job(model_id: str = "Qwen/Qwen3-0.6B", **runtime: Any) -> Any:
    from truss_train import definitions

    env: dict[str, Any] = {
        "MODEL_ID": model_id,
        "HF_TOKEN": definitions.SecretReference(name="hf_access_token"),
    }
    env.update(runtime.pop("env", {}))
    return definitions.TrainingJob(
        image=definitions.Image(base_image="pytorch/pytorch:2.7.0"),
        compute=definitions.Compute(accelerator="H100:2"),
        runtime=definitions.Runtime(
            start_commands=["python train.py"], environment_variables=env, **runtime
        ),
    )


def _project(name: str) -> Any:
    from truss_train import definitions

    return definitions.TrainingProject(name=name, job=_training_job())


def _submit(truss_api: Any, tmp_path: Path, project_name: str = "fidelity", **kw: Any) -> Any:
    """What ``push`` does, step by step, with truss's functions: upsert, archive, upload, create."""
    from truss.remote.baseten.custom_types import TrussUserEnv
    from truss_train.deployment import prepare_push

    (tmp_path / "train.py").write_text("print('training')\n")
    project = truss_api.upsert_training_project(_project(project_name))
    user_env = TrussUserEnv.collect_with_git_info(tmp_path)
    prepared = prepare_push(truss_api, tmp_path, _training_job(**kw), truss_user_env=user_env)
    return project, truss_api.create_training_job(project_id=project["id"], job=prepared)


def test_upsert_training_project_is_idempotent_by_name(truss_api: Any) -> None:
    first = truss_api.upsert_training_project(_project("alpha"))
    again = truss_api.upsert_training_project(_project("alpha"))
    other = truss_api.upsert_training_project(_project("beta"))

    assert first["id"] == again["id"] != other["id"]
    assert BASETEN_ID.fullmatch(first["id"])
    assert first["name"] == "alpha"
    assert RFC3339_MICROS.fullmatch(first["created_at"])
    assert first["latest_job"] is None
    listed = truss_api.list_training_projects()
    assert [p["name"] for p in listed] == ["alpha", "beta"]


def test_upsert_under_a_team_records_the_team(truss_api: Any) -> None:
    project = truss_api.upsert_training_project(_project("teamed"), team_id="team42")
    assert project["team_id"] == "team42"


def test_blob_credentials_are_usable_by_truss_upload(
    truss_api: Any, local_s3: LocalS3, tmp_path: Path
) -> None:
    from truss.remote.baseten import custom_types
    from truss.remote.baseten.utils import transfer

    first = truss_api.get_blob_credentials(custom_types.BlobType.TRAIN)
    second = truss_api.get_blob_credentials(custom_types.BlobType.TRAIN)
    assert first["s3_key"] != second["s3_key"]
    assert set(first["creds"]) == {
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "endpoint_url",
        "region_name",
    }
    assert first["creds"]["endpoint_url"] == local_s3.url

    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"hello sandbox")
    transfer.multipart_upload_boto3(
        str(payload), first["s3_bucket"], first["s3_key"], first["creds"]
    )
    body = local_s3.client().get_object(Bucket=first["s3_bucket"], Key=first["s3_key"])["Body"]
    assert body.read() == b"hello sandbox"


def test_create_job_returns_baseten_job_and_records_truss_body(
    truss_api: Any, sandbox: Sandbox, local_s3: LocalS3, tmp_path: Path
) -> None:
    project, job = _submit(truss_api, tmp_path)

    assert set(job) >= JOB_FIELDS
    assert BASETEN_ID.fullmatch(job["id"])
    assert job["current_status"] == "TRAINING_JOB_CREATED"
    assert job["error_message"] is None
    assert job["training_project_id"] == project["id"]
    assert job["training_project"] == {"id": project["id"], "name": "fidelity"}
    assert job["instance_type"]["gpu_type"] == "H100"
    assert job["instance_type"]["gpu_count"] == 2
    assert RFC3339_MICROS.fullmatch(job["created_at"])
    assert job["updated_at"] == job["created_at"]

    [recorded] = sandbox.jobs()
    request = recorded["request"]
    assert recorded["job"]["id"] == job["id"]
    assert request["runtime"]["environment_variables"]["HF_TOKEN"] == {"name": "hf_access_token"}
    assert request["compute"]["accelerator"] == {"accelerator": "H100", "count": 2}
    assert request["truss_user_env"]["truss_client_version"]
    [artifact] = request["runtime"]["artifacts"]
    obj = local_s3.client().get_object(Bucket=artifact["s3_bucket"], Key=artifact["s3_key"])
    archive = tmp_path / "archive.tar"
    archive.write_bytes(obj["Body"].read())
    with tarfile.open(archive) as tar:
        assert "train.py" in tar.getnames()


def test_get_list_and_search_jobs(truss_api: Any, sandbox: Sandbox, tmp_path: Path) -> None:
    project, first = _submit(truss_api, tmp_path)
    _, second = _submit(truss_api, tmp_path)
    sandbox.set_status(first["id"], "TRAINING_JOB_RUNNING")

    got = truss_api.get_training_job(project["id"], first["id"])
    assert got["training_job"]["current_status"] == "TRAINING_JOB_RUNNING"
    assert got["training_project"]["id"] == project["id"]

    listed = truss_api.list_training_jobs(project["id"])
    assert listed["training_project"]["id"] == project["id"]
    assert {j["id"] for j in listed["training_jobs"]} == {first["id"], second["id"]}

    newest_first = truss_api.search_training_jobs(project_id=project["id"])
    assert [j["id"] for j in newest_first] == [second["id"], first["id"]]
    oldest_first = truss_api.search_training_jobs(
        project_id=project["id"], order_by=[{"field": "created_at", "order": "asc"}]
    )
    assert [j["id"] for j in oldest_first] == [first["id"], second["id"]]
    running = truss_api.search_training_jobs(statuses=["TRAINING_JOB_RUNNING"])
    assert [j["id"] for j in running] == [first["id"]]
    by_id = truss_api.search_training_jobs(job_id=second["id"])
    assert [j["id"] for j in by_id] == [second["id"]]

    projects = truss_api.list_training_projects()
    assert projects[0]["latest_job"]["id"] == second["id"]


def test_stop_job_then_stopping_again_is_a_client_error(
    truss_api: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project, job = _submit(truss_api, tmp_path)

    stopped = truss_api.stop_training_job(project["id"], job["id"])
    assert stopped["id"] == job["id"]
    assert stopped["current_status"] == "TRAINING_JOB_STOPPED"

    with pytest.raises(requests.HTTPError) as caught:
        truss_api.stop_training_job(project["id"], job["id"])
    assert caught.value.response.status_code == 400
    # truss prints the server's message for 4xx answers.
    assert "already TRAINING_JOB_STOPPED" in capsys.readouterr().out


def test_checkpoints_carry_base_model_and_lora_config(
    truss_api: Any, sandbox: Sandbox, tmp_path: Path
) -> None:
    runtime_config = '{"hyperparameters": {"lora_rank": 8, "lora_alpha": 16}}'
    project, job = _submit(truss_api, tmp_path, env={"RUNTIME_CONFIG": runtime_config})
    empty = truss_api.list_training_job_checkpoints(project["id"], job["id"])
    assert empty["checkpoints"] == []
    assert empty["training_job"]["id"] == job["id"]
    assert empty["training_job"]["checkpoint_sync_status"] is None

    sandbox.advance(job["id"], steps=4)  # deploying, running, checkpoint, completed

    [mid, final] = truss_api.list_training_job_checkpoints(project["id"], job["id"])["checkpoints"]
    assert mid["training_job_id"] == job["id"]
    assert mid["checkpoint_id"] != final["checkpoint_id"]
    assert final["checkpoint_type"] == "lora"
    assert final["base_model"] == "Qwen/Qwen3-0.6B"
    assert final["lora_adapter_config"]["r"] == 8
    assert final["lora_adapter_config"]["lora_alpha"] == 16
    assert final["size_bytes"] > 0
    assert RFC3339_MICROS.fullmatch(final["created_at"])
    assert (mid["sync_status"], final["sync_status"]) == ("COMPLETE", "COMPLETE")
    status = truss_api.get_training_job(project["id"], job["id"])["training_job"]
    assert status["current_status"] == "TRAINING_JOB_COMPLETED"


def test_wrong_key_is_401_from_truss_and_key_is_not_echoed(
    truss_app_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from truss.remote.baseten.api import BasetenApi
    from truss.remote.baseten.auth import ApiKeyCredential, AuthService

    wrong = "sk-wrong-key-123"
    api = BasetenApi(truss_app_url, AuthService(ApiKeyCredential(api_key=wrong)))
    with pytest.raises(requests.HTTPError) as caught:
        api.list_training_projects()
    response = caught.value.response
    assert response.status_code == 401
    assert response.json()["code"] == "UNAUTHENTICATED"
    assert wrong not in response.text
    assert "Client error" in capsys.readouterr().out


def test_bearer_scheme_as_truss_sends_for_env_remotes(truss_app_url: str) -> None:
    from truss.remote.baseten.api import BasetenApi
    from truss.remote.baseten.auth import ApiKeyCredential, AuthService

    auth = AuthService(ApiKeyCredential(api_key=API_KEY, use_bearer=True))
    assert auth.fetch_auth_header() == {"Authorization": f"Bearer {API_KEY}"}
    assert BasetenApi(truss_app_url, auth).list_training_projects() == []


def test_server_fault_surfaces_as_http_error_in_truss(truss_api: Any, sandbox: Sandbox) -> None:
    sandbox.add_fault(path=r"^v1/training_projects$", status=503, count=1)
    with pytest.raises(requests.HTTPError) as caught:
        truss_api.upsert_training_project(_project("flaky"))
    assert caught.value.response.status_code == 503
    # count=1: truss does not retry, but a second call goes through.
    assert truss_api.upsert_training_project(_project("flaky"))["name"] == "flaky"
