"""Secrets never reach a log line: scrubbed before serialising, in every written form."""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path

import pytest
import requests

from finetune_api.core import logs
from finetune_api.core.errors import ConfigurationError
from finetune_api.core.secrets import SecretStore
from finetune_api.core.settings import load_settings
from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from sandbox import Sandbox
from tests.conftest import GCP_PROJECT, function_env
from tests.poll_fixtures import LogLines, service_logs_fixture  # noqa: F401 - fixture


def _forms(value: str) -> list[str]:
    """How a value may be written: as is, by repr(), and JSON-escaped."""
    written = [value, repr(value)[1:-1]]
    return written + [json.dumps(form)[1:-1] for form in written]


def test_a_secret_is_scrubbed_in_every_form(service_logs: LogLines) -> None:
    # Quotes and backslashes are escaped by JSON, so scrubbing the JSON text missed them.
    secret = f'bt-{secrets.token_hex(8)}\\"x'
    logs.register_secret(secret)
    logger = logs.get_logger("test")
    try:
        raise ValueError(f"Invalid header value: {secret!r}")
    except ValueError:
        logger.exception("push failed: %s", secret, extra={"fields": {"nested": {"k": [secret]}}})
    logs.log(logger, logging.ERROR, "as an object", error=ValueError(secret))
    text = service_logs.text
    assert text.count(logs.REDACTED) >= 4
    for form in _forms(secret):
        assert form not in text, form
    assert all(isinstance(record, dict) for record in service_logs.records())


def test_each_api_key_is_a_secret_of_its_own(service_logs: LogLines) -> None:
    first, second = f"first-{secrets.token_hex(8)}", f"second-{secrets.token_hex(8)}"
    load_settings({"API_KEYS": f"{first},{second}"})
    logs.log(logs.get_logger("test"), logging.INFO, f"saw {second}")
    assert second not in service_logs.text and logs.REDACTED in service_logs.text


@pytest.mark.parametrize(
    "value",
    ["bt-abc123456\n# rotated 2026-11-01", " bt-abc123456", "bt-abc\t123456", "bt-abc123456  "],
)
def test_a_secret_with_control_characters_or_spaces_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigurationError, match="BASETEN_API_KEY") as caught:
        load_settings({"BASETEN_API_KEY": value})
    assert "bt-abc" not in caught.value.message


def test_one_trailing_line_end_is_not_part_of_a_secret() -> None:
    settings = load_settings({"BASETEN_API_KEY": "bt-abc123456\n", "WEBHOOK_SECRET": "whsec_x\r\n"})
    assert settings.baseten_api_key is not None and settings.webhook_secret is not None
    assert settings.baseten_api_key.get_secret_value() == "bt-abc123456"
    assert settings.webhook_secret.get_secret_value() == "whsec_x"


def test_a_secret_manager_value_with_a_comment_line_is_refused_by_name(
    secret_manager: FakeSecretManager,
) -> None:
    secret_manager.add(GCP_PROJECT, "pasted-key", "bt-pasted-123456\n# rotated 2026-11-01\n")
    store = SecretStore(
        load_settings(
            {
                "BASETEN_API_KEY_SECRET_ID": "pasted-key",
                "GOOGLE_CLOUD_PROJECT": GCP_PROJECT,
                "SECRETMANAGER_EMULATOR_HOST": secret_manager.host,
            }
        )
    )
    with pytest.raises(ConfigurationError, match="BASETEN_API_KEY_SECRET_ID") as caught:
        store.get("baseten_api_key")
    assert "bt-pasted" not in caught.value.message


def test_a_pasted_key_with_a_comment_line_never_reaches_the_log(
    sandbox: Sandbox, secret_manager: FakeSecretManager, tmp_path: Path
) -> None:
    """Issue 12: the key reached a log line, JSON-escaped, past the scrubber."""
    key = f"bt-{secrets.token_hex(12)}"
    pasted = f"{key}\n# rotated 2026-11-01"
    secret_manager.add(GCP_PROJECT, "pasted-key-e2e", pasted)
    env = function_env(
        sandbox, secret_manager, tmp_path, BASETEN_API_KEY_SECRET_ID="pasted-key-e2e"
    )
    with FunctionServer("train_http", env) as server:
        response = requests.post(
            f"{server.url}/jobs", json={"dataset_id": "d", "model_id": "m"}, timeout=60
        )
        output = server.output()
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["type"] == "internal" and "BASETEN_API_KEY_SECRET_ID" in error["message"]
    for form in [*_forms(pasted), key]:
        assert form not in output and form not in response.text
    assert sandbox.jobs() == []
