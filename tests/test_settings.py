"""Settings: read once, typed; a bad variable is named clearly, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from finetune_api.core.errors import ConfigurationError
from finetune_api.core.settings import load_settings
from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from sandbox import Sandbox
from tests.conftest import function_env


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"max_nodes": "abc"}, "MAX_NODES"),
        ({"max_gpus_per_node": 0}, "MAX_GPUS_PER_NODE"),
        ({"baseten_api_url": "ftp://x"}, "BASETEN_API_URL"),
        ({"poll_lookback_seconds": -5}, "POLL_LOOKBACK_SECONDS"),
        ({"allowed_accelerators": " , "}, "ALLOWED_ACCELERATORS"),
        ({"poll_full_sweep_hours": 0}, "POLL_FULL_SWEEP_HOURS"),
        ({"poll_full_sweep_hours": "daily"}, "POLL_FULL_SWEEP_HOURS"),
    ],
)
def test_malformed_settings_are_named(overrides: dict[str, object], name: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(**overrides)
    assert name in caught.value.message


def test_webhook_url_needs_a_secret() -> None:
    with pytest.raises(ConfigurationError, match="WEBHOOK_SECRET"):
        load_settings(webhook_url="https://example.com/hooks")


def test_defaults_match_the_contract() -> None:
    settings = load_settings()
    assert settings.allowed_accelerators == ("H100", "H200", "A100", "A10G", "L4")
    assert (settings.max_gpus_per_node, settings.max_nodes) == (8, 1)
    assert settings.resolved_api_url == "https://api.baseten.co"
    assert settings.baseten_remote_url == "https://app.baseten.co"
    assert settings.hf_token_secret_name == "hf_access_token"
    assert (settings.poll_lookback_seconds, settings.pubsub_max_event_age_seconds) == (1800, 3600)
    assert settings.max_body_bytes == 65536
    assert load_settings(allowed_accelerators="L4, H100").allowed_accelerators == ("L4", "H100")


def test_poll_state_settings() -> None:
    settings = load_settings({})
    assert settings.poll_state_bucket is None and settings.poll_state_file is None
    assert (settings.poll_state_object, settings.poll_full_sweep_hours) == ("poll-state.json", 24)
    env = {
        "POLL_STATE_BUCKET": "my-bucket",
        "POLL_STATE_OBJECT": "dev/state.json",
        "POLL_STATE_FILE": "~/state.json",
        "POLL_FULL_SWEEP_HOURS": "6",
        "STORAGE_EMULATOR_HOST": "127.0.0.1:4443",
    }
    settings = load_settings(env)
    assert settings.poll_state_bucket == "my-bucket"
    assert settings.poll_state_object == "dev/state.json"
    assert settings.poll_state_file == Path.home() / "state.json"
    assert settings.poll_full_sweep_hours == 6
    assert settings.storage_emulator_host == "127.0.0.1:4443"


def test_bad_setting_in_a_running_function(
    sandbox: Sandbox, secret_manager: FakeSecretManager, tmp_path: Path
) -> None:
    env = function_env(sandbox, secret_manager, tmp_path, MAX_NODES="many")
    body = {"dataset_id": "a", "model_id": "b"}
    with FunctionServer("train_http", env) as server:
        assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
        responses = [requests.post(f"{server.url}/jobs", json=body, timeout=30) for _ in range(2)]
        output = server.output()
    for response in responses:
        assert response.status_code == 500
        error = response.json()["error"]
        assert error["type"] == "internal" and "MAX_NODES" in error["message"]
    assert "Traceback" not in output
    logged = [
        json.loads(line)
        for line in output.splitlines()
        if "MAX_NODES" in line and line.startswith("{")
    ]
    assert len([line for line in logged if line.get("logger") == "finetune_api.settings"]) == 1
    assert sandbox.stats()["requests"] == 0
