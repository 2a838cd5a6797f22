"""The truss adapter for serving sends exactly what truss's own CLI builds.

``truss train deploy_checkpoints`` builds its mutation request in
``_build_inference_template_request`` and picks the instance type in
``_get_instance_type_id``; both are called here with truss's own objects against
the sandbox, and compared with what ``finetune_api.baseten.deploy`` produces.
"""

from __future__ import annotations

import io
import json
import tarfile
import types
from collections.abc import Iterator
from typing import Any

import pytest

from finetune_api.baseten import deploy as baseten_deploy
from finetune_api.core.settings import load_settings
from finetune_api.jobs.runtime_config import runtime_config_from_archive
from sandbox import Sandbox
from tests.conftest import API_KEY


@pytest.fixture
def truss_api(sandbox: Sandbox) -> Iterator[Any]:
    from truss.remote.baseten import api as baseten_api
    from truss.remote.baseten.auth import ApiKeyCredential, AuthService

    baseten_api.API_URL_MAPPING[sandbox.url] = sandbox.url
    try:
        yield baseten_api.BasetenApi(sandbox.url, AuthService(ApiKeyCredential(api_key=API_KEY)))
    finally:
        baseten_api.API_URL_MAPPING.pop(sandbox.url, None)


@pytest.mark.parametrize(("accelerator", "count"), [("H100", 1), ("A10G", 2), ("L4", 3)])
def test_request_and_instance_type_match_truss(
    sandbox: Sandbox, truss_api: Any, accelerator: str, count: int
) -> None:
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
                    training_job_id="job1234",
                    checkpoint_name="checkpoint-7",
                    lora_details=LoRADetails(rank=16),
                )
            ],
            base_model_id="openai/gpt-oss-20b",
        ),
        model_name="bot",
        runtime=DeployCheckpointsRuntime(
            environment_variables={"HF_TOKEN": SecretReference(name="hf_access_token")}
        ),
        compute=Compute(accelerator=AcceleratorSpec(accelerator=accelerator, count=count)),
    )
    theirs = _build_inference_template_request(
        checkpoint_deploy_config=config,
        remote_provider=types.SimpleNamespace(api=truss_api),
        dry_run=True,
    )
    settings = load_settings(
        {}, baseten_api_key=API_KEY, baseten_remote_url=sandbox.url, baseten_api_url=sandbox.url
    )
    choice = baseten_deploy.choose_instance_type(
        baseten_deploy.instance_types(settings, API_KEY), accelerator, count
    )
    assert choice is not None
    ours = baseten_deploy.inference_template_request(
        model_name="bot",
        training_job_id="job1234",
        checkpoint_id="checkpoint-7",
        instance_type_id=choice.id,
        hf_token_secret_name="hf_access_token",
        dry_run=True,
    )
    assert ours == theirs


def test_no_instance_type_for_too_many_gpus(sandbox: Sandbox) -> None:
    settings = load_settings(
        {}, baseten_api_key=API_KEY, baseten_remote_url=sandbox.url, baseten_api_url=sandbox.url
    )
    choices = baseten_deploy.instance_types(settings, API_KEY)
    assert baseten_deploy.choose_instance_type(choices, "H100", 9) is None
    assert baseten_deploy.choose_instance_type(choices, "B200", 1) is None


def _tar(files: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_runtime_config_is_read_from_the_pushed_archive() -> None:
    config = {"deploy": {"on_completion": True}}
    plain = _tar({"config.py": b"x", "runtime_config.json": json.dumps(config).encode()})
    assert runtime_config_from_archive(plain) == config
    nested = _tar({"./runtime_config.json": json.dumps(config).encode()}, "w:gz")
    assert runtime_config_from_archive(nested) == config
    assert runtime_config_from_archive(_tar({"config.py": b"x"})) is None
    assert runtime_config_from_archive(_tar({"runtime_config.json": b"[1]"})) is None
    assert runtime_config_from_archive(_tar({"runtime_config.json": b"{"})) is None
    assert runtime_config_from_archive(b"not a tar") is None
