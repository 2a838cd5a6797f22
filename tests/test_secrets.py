"""Secret access through the real Google client against a local Secret Manager."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from finetune_api.core.errors import ConfigurationError, SecretUnavailableError
from finetune_api.core.secrets import SecretStore, secret_version_name
from finetune_api.core.settings import load_settings
from loopback.fake_secret_manager import FakeSecretManager

KEY = "bt-secret-key-0123456789"


@pytest.fixture(scope="module")
def fake_sm() -> Iterator[FakeSecretManager]:
    server = FakeSecretManager().start()
    yield server
    server.stop()


@pytest.fixture
def sm(fake_sm: FakeSecretManager) -> FakeSecretManager:
    fake_sm.reset()
    fake_sm.add("proj", "baseten", KEY)
    return fake_sm


def store(sm: FakeSecretManager, **settings: object) -> SecretStore:
    values: dict[str, object] = {
        "secretmanager_emulator_host": sm.host,
        "google_cloud_project": "proj",
        "baseten_api_key_secret_id": "baseten",
        "secret_timeout_seconds": 1.5,
    }
    values.update(settings)
    return SecretStore(load_settings(**values))


def test_reads_latest_version_through_the_real_client(sm: FakeSecretManager) -> None:
    assert store(sm).get("baseten_api_key") == KEY
    assert sm.requests == ["/v1/projects/proj/secrets/baseten/versions/latest:access"]


@pytest.mark.parametrize(
    "reference",
    [
        "baseten",
        "baseten/versions/1",
        "projects/proj/secrets/baseten",
        "projects/proj/secrets/baseten/versions/1",
    ],
)
def test_every_reference_form_resolves(sm: FakeSecretManager, reference: str) -> None:
    assert store(sm, baseten_api_key_secret_id=reference).get("baseten_api_key") == KEY


def test_direct_value_wins_and_contacts_nothing(sm: FakeSecretManager) -> None:
    assert (
        store(sm, baseten_api_key="direct-value-123").get("baseten_api_key") == "direct-value-123"
    )
    assert sm.requests == []


def test_cached_within_ttl_and_rotation_picked_up_after(sm: FakeSecretManager) -> None:
    secrets = store(sm, secret_cache_ttl_seconds=0.3)
    assert secrets.get("baseten_api_key") == KEY
    sm.add("proj", "baseten", "rotated-key-987654")
    assert secrets.get("baseten_api_key") == KEY
    assert len(sm.requests) == 1
    time.sleep(0.35)
    assert secrets.get("baseten_api_key") == "rotated-key-987654"


@pytest.mark.parametrize(
    ("failure", "words"),
    [
        (404, "does not exist"),
        (403, "denied"),
        (500, "kept failing"),
        (503, "kept failing"),
        ("bad_crc", "CRC32C"),
    ],
)
def test_failures_become_secret_unavailable(
    sm: FakeSecretManager, failure: int | str, words: str
) -> None:
    sm.failures["baseten"] = failure
    started = time.monotonic()
    with pytest.raises(SecretUnavailableError) as caught:
        store(sm).get("baseten_api_key")
    elapsed = time.monotonic() - started
    assert words in caught.value.message
    assert caught.value.status == 503 and caught.value.retry_after
    assert KEY not in str(caught.value)
    # A bounded retry budget: seconds, not the client's default ~34 s.
    assert elapsed < 5


def test_unreachable_secret_manager_is_unavailable_quickly() -> None:
    secrets = SecretStore(
        load_settings(
            secretmanager_emulator_host="127.0.0.1:9",
            google_cloud_project="proj",
            baseten_api_key_secret_id="baseten",
            secret_timeout_seconds=1.0,
        )
    )
    with pytest.raises(SecretUnavailableError):
        secrets.get("baseten_api_key")


def test_stale_value_survives_a_refresh_failure(sm: FakeSecretManager) -> None:
    secrets = store(sm, secret_cache_ttl_seconds=0.1)
    assert secrets.get("baseten_api_key") == KEY
    time.sleep(0.15)
    sm.failures["baseten"] = 503
    assert secrets.get("baseten_api_key") == KEY


def test_missing_setting_is_named() -> None:
    with pytest.raises(ConfigurationError, match="BASETEN_API_KEY or BASETEN_API_KEY_SECRET_ID"):
        SecretStore(load_settings()).get("baseten_api_key")


def test_optional_secret_absent_is_none() -> None:
    assert SecretStore(load_settings()).get("api_keys", required=False) is None


@pytest.mark.parametrize(
    "bad", ["projects/p", "a/b", "projects/p/secrets/s/versions", "a/versions/"]
)
def test_malformed_reference_is_a_configuration_error(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="BASETEN_API_KEY_SECRET_ID"):
        secret_version_name(bad, "proj", "BASETEN_API_KEY")


def test_short_reference_needs_a_project() -> None:
    with pytest.raises(ConfigurationError, match="GOOGLE_CLOUD_PROJECT"):
        secret_version_name("baseten", None, "BASETEN_API_KEY")
