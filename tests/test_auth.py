"""API keys fail closed: a configured but blank or malformed list is an error, never "no auth"."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from finetune_api.core.errors import ConfigurationError
from finetune_api.core.settings import load_settings
from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from sandbox import Sandbox
from tests.conftest import function_env

BLANK_OR_MALFORMED = [
    "",
    " ",
    "\n",
    " \r\n\t ",
    ",",
    " , ,",
    "good-key-123456,,other-key-654321",
    "good-key-123456, ",
    "abc1234",
    "good-key-123456\n# rotated 2026-11-01",
    "good key 123456",
]


@pytest.mark.parametrize("value", BLANK_OR_MALFORMED)
def test_blank_or_malformed_api_keys_are_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigurationError, match="API_KEYS") as caught:
        load_settings({"API_KEYS": value})
    if value.strip():
        assert value.strip() not in caught.value.message


def test_a_blank_api_keys_secret_id_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="API_KEYS_SECRET_ID"):
        load_settings({"API_KEYS_SECRET_ID": "  "})


def test_keys_are_trimmed_around_commas_and_one_line_end_is_dropped() -> None:
    settings = load_settings({"API_KEYS": "first-key-123456, second-key-654321\n"})
    assert settings.api_keys is not None
    assert settings.api_keys.get_secret_value() == "first-key-123456,second-key-654321"


def _closed(server: FunctionServer, sandbox: Sandbox) -> None:
    """Every route but /healthz answers 500 internal; Baseten is never called."""
    for method, route in [
        ("GET", "/jobs"),
        ("GET", "/jobs/p1/j1"),
        ("POST", "/jobs/p1/j1/stop"),
        ("GET", "/openapi.json"),
    ]:
        response = requests.request(method, f"{server.url}{route}", timeout=30)
        assert response.status_code == 500, (route, response.text)
        error = response.json()["error"]
        assert error["type"] == "internal" and "API_KEYS" in error["message"]
    response = requests.post(
        f"{server.url}/jobs", json={"dataset_id": "d", "model_id": "m"}, timeout=30
    )
    assert response.status_code == 500
    assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
    assert sandbox.stats()["requests"] == 0 and sandbox.jobs() == []


@pytest.mark.parametrize("value", [" \n", ","])
def test_blank_api_keys_close_every_route(
    sandbox: Sandbox, secret_manager: FakeSecretManager, tmp_path: Path, value: str
) -> None:
    env = function_env(sandbox, secret_manager, tmp_path, API_KEYS=value)
    with FunctionServer("train_http", env) as server:
        _closed(server, sandbox)


def test_blank_api_keys_secret_version_closes_every_route(
    sandbox: Sandbox, secret_manager: FakeSecretManager, tmp_path: Path
) -> None:
    secret_manager.add("test-project", "blank-api-keys", "\n")
    env = function_env(sandbox, secret_manager, tmp_path, API_KEYS_SECRET_ID="blank-api-keys")
    with FunctionServer("train_http", env) as server:
        _closed(server, sandbox)
