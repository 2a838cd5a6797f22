"""A real ``truss_train.public_api.push()`` against the sandbox."""

from __future__ import annotations

import io
import tarfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
import requests

from loopback.servers import LocalS3
from sandbox import Sandbox
from tests.sandbox.support import API_KEY

CONFIG = textwrap.dedent(
    """
    from truss_train import definitions

    project = definitions.TrainingProject(
        name="push-e2e",
        job=definitions.TrainingJob(
            image=definitions.Image(base_image="pytorch/pytorch:2.7.0"),
            compute=definitions.Compute(accelerator="H100:1"),
            runtime=definitions.Runtime(
                start_commands=["python train.py"],
                environment_variables={
                    "MODEL_ID": "Qwen/Qwen3-0.6B",
                    "HF_TOKEN": definitions.SecretReference(name="hf_access_token"),
                },
            ),
        ),
    )
    """
)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.py").write_text(CONFIG)
    (tmp_path / "train.py").write_text("print('training')\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "runtime_config.json").write_text('{"seed": 1}')
    return tmp_path


def _env_remote(monkeypatch: pytest.MonkeyPatch, app_url: str, key: str) -> str:
    from truss.remote.remote_factory import API_KEY_ENV, ENV_REMOTE_NAME, REMOTE_URL_ENV

    monkeypatch.setenv(REMOTE_URL_ENV, app_url)
    monkeypatch.setenv(API_KEY_ENV, key)
    return str(ENV_REMOTE_NAME)


def test_push_creates_job_and_uploads_the_source_dir(
    sandbox: Sandbox,
    local_s3: LocalS3,
    truss_app_url: str,
    config_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from truss_train import public_api

    remote = _env_remote(monkeypatch, truss_app_url, API_KEY)
    result: dict[str, Any] = public_api.push(config_dir / "config.py", remote=remote)

    assert result["current_status"] == "TRAINING_JOB_CREATED"
    assert result["training_project"]["name"] == "push-e2e"
    assert "job_object" in result  # truss adds the pydantic job in Path mode
    [recorded] = sandbox.jobs()
    assert recorded["job"]["id"] == result["id"]
    assert recorded["project"]["name"] == "push-e2e"
    request = recorded["request"]
    assert request["runtime"]["start_commands"] == ["python train.py"]
    assert request["truss_user_env"]["git_info"] is None

    [artifact] = request["runtime"]["artifacts"]
    obj = local_s3.client().get_object(Bucket=artifact["s3_bucket"], Key=artifact["s3_key"])
    with tarfile.open(fileobj=io.BytesIO(obj["Body"].read())) as tar:
        names = set(tar.getnames())
        assert {"config.py", "train.py", "data/runtime_config.json"} <= names
        member = tar.extractfile("data/runtime_config.json")
        assert member is not None
        assert member.read() == b'{"seed": 1}'

    # Bearer, as truss sends for env-configured remotes, went through all three calls.
    assert sandbox.stats()["by_route"] == {
        "POST /v1/training_projects": 1,
        "GET /v1/blobs/credentials/<blob_type>": 1,
        "POST /v1/training_projects/<project_id>/jobs": 1,
    }


def test_push_with_wrong_key_fails_before_anything_is_created(
    sandbox: Sandbox, truss_app_url: str, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from truss_train import public_api

    remote = _env_remote(monkeypatch, truss_app_url, "sk-not-the-key")
    with pytest.raises(requests.HTTPError) as caught:
        public_api.push(config_dir / "config.py", remote=remote)
    assert caught.value.response.status_code == 401
    assert sandbox.jobs() == []


def test_push_when_job_creation_fails_leaves_no_job(
    sandbox: Sandbox, truss_app_url: str, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from truss_train import public_api

    sandbox.add_fault(method="POST", path=r"/jobs$", status=500)
    remote = _env_remote(monkeypatch, truss_app_url, API_KEY)
    with pytest.raises(requests.HTTPError) as caught:
        public_api.push(config_dir / "config.py", remote=remote)
    assert caught.value.response.status_code == 500
    assert sandbox.jobs() == []
    assert sandbox.stats()["by_status"] == {"200": 2, "500": 1}
