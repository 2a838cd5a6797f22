"""Secret access: a direct value wins, else Secret Manager, cached per instance.

The real ``google-cloud-secret-manager`` client is used everywhere; with
``SECRETMANAGER_EMULATOR_HOST`` set it talks REST with anonymous credentials to
a local endpoint (tests, ``make run``). Reads have a short retry budget so an
outage answers ``secret_unavailable`` in seconds instead of the client's ~34 s.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from finetune_api.core import secret_values
from finetune_api.core.errors import ConfigurationError, SecretUnavailableError
from finetune_api.core.logs import get_logger, log, register_secret
from finetune_api.core.settings import Settings
from finetune_api.core.teams import key_table

_logger = get_logger("secrets")

# Past its TTL a cached value is refreshed; if the refresh fails we keep using
# the old value for this long rather than failing requests during a blip.
STALE_GRACE_SECONDS = 3600.0


@dataclass(frozen=True)
class _Cached:
    value: str
    fetched_at: float


def secret_version_name(reference: str, project: str | None, setting: str) -> str:
    """Expand ``S``, ``S/versions/V`` or a full resource name to a version name."""
    reference = reference.strip()
    if reference.startswith("projects/"):
        parts = reference.split("/")
        # projects/P/secrets/S[/versions/V] or projects/P/locations/L/secrets/S[/versions/V]
        if len(parts) in (4, 6) and parts[-2] == "secrets":
            return f"{reference}/versions/latest"
        if len(parts) in (6, 8) and parts[-2] == "versions" and parts[-4] == "secrets":
            return reference
        raise ConfigurationError(
            f"{setting}_SECRET_ID is not a valid Secret Manager reference "
            "(projects/P/secrets/S[/versions/V], S or S/versions/V)"
        )
    if not project:
        raise ConfigurationError(
            f"{setting}_SECRET_ID is a short secret id; set GOOGLE_CLOUD_PROJECT "
            "or give the full projects/P/secrets/S/versions/V name"
        )
    parts = reference.split("/")
    if len(parts) == 1 and parts[0]:
        return f"projects/{project}/secrets/{parts[0]}/versions/latest"
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return f"projects/{project}/secrets/{reference}"
    raise ConfigurationError(f"{setting}_SECRET_ID is not a valid Secret Manager reference")


class SecretStore:
    """Resolves the secret settings (``baseten_api_key``, ``api_keys``, ``webhook_secret``)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: Any = None
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()
        self._client_lock = threading.Lock()

    def get(self, field: str, *, required: bool = True) -> str | None:
        """The value of secret setting ``field``, or None when neither form is set."""
        setting = field.upper()
        direct = getattr(self._settings, field)
        if direct is not None:
            value: str = direct.get_secret_value()
            return value
        reference = getattr(self._settings, f"{field}_secret_id")
        if not reference:
            if required:
                raise ConfigurationError(f"{setting} or {setting}_SECRET_ID must be set")
            return None
        name = secret_version_name(reference, self._settings.google_cloud_project, setting)
        return self._read_cached(name, setting)

    def _read_cached(self, name: str, setting: str) -> str:
        ttl = self._settings.secret_cache_ttl_seconds
        now = time.monotonic()
        cached = self._cache.get(name)
        if cached and now - cached.fetched_at < ttl:
            return cached.value
        # One reader refreshes at a time; the others wait and reuse its result.
        with self._lock:
            cached = self._cache.get(name)
            if cached and time.monotonic() - cached.fetched_at < ttl:
                return cached.value
            try:
                value = self._access(name, setting)
            except SecretUnavailableError:
                if cached and time.monotonic() - cached.fetched_at < ttl + STALE_GRACE_SECONDS:
                    log(
                        _logger,
                        30,
                        "secret refresh failed; using the cached value",
                        setting=setting,
                    )
                    return cached.value
                raise
            # Each API key is a secret of its own; a log line may quote one alone.
            for part in value.split(",") if setting == "API_KEYS" else (value,):
                register_secret(part)
                if setting == "API_KEYS" and ":" in part:
                    register_secret(part.partition(":")[2])  # a team:key entry's key
            self._cache[name] = _Cached(value, time.monotonic())
            return value

    def _access(self, name: str, setting: str) -> str:
        from google.api_core import exceptions as google_exceptions
        from google.api_core import retry as google_retry

        budget = self._settings.secret_timeout_seconds
        retry = google_retry.Retry(
            predicate=google_retry.if_exception_type(
                google_exceptions.ServiceUnavailable,
                google_exceptions.TooManyRequests,
                google_exceptions.InternalServerError,
            ),
            initial=0.2,
            maximum=1.0,
            multiplier=2.0,
            timeout=budget,
        )
        where = f"{setting}_SECRET_ID"
        try:
            response = self._get_client().access_secret_version(
                request={"name": name}, retry=retry, timeout=budget
            )
        except google_exceptions.NotFound:
            raise SecretUnavailableError(
                f"Secret Manager: {where} names a secret or version that does not exist"
            ) from None
        except (
            google_exceptions.PermissionDenied,
            google_exceptions.Forbidden,
            google_exceptions.Unauthenticated,
            google_exceptions.Unauthorized,
        ):
            raise SecretUnavailableError(f"Secret Manager denied access to {where}") from None
        except google_exceptions.RetryError as error:
            cause = type(error.cause).__name__ if error.cause is not None else "timeout"
            raise SecretUnavailableError(
                f"Secret Manager kept failing for {where} for {budget:g} s ({cause})"
            ) from None
        except google_exceptions.GoogleAPIError as error:
            raise SecretUnavailableError(
                f"Secret Manager failed reading {where}: {type(error).__name__}"
            ) from None
        except Exception as error:  # noqa: BLE001 - transport failures of any kind
            raise SecretUnavailableError(
                f"Secret Manager unreachable for {where}: {type(error).__name__}"
            ) from None
        payload = response.payload
        data: bytes = payload.data
        # Google's own advice: verify the checksum the server computed.
        if "data_crc32c" in payload:
            import google_crc32c

            if int(payload.data_crc32c) != google_crc32c.value(data):
                raise SecretUnavailableError(
                    f"Secret Manager returned a corrupted payload for {where} (CRC32C mismatch)"
                )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigurationError(f"{where} holds a value that is not UTF-8 text") from None
        try:
            value = secret_values.check(setting.lower(), text)
            if setting == "API_KEYS":
                key_table(value)  # team:key entries: a bad team, an empty key, a key in two teams
            return value
        except ValueError as error:
            raise ConfigurationError(f"{where}: the secret's value {error}") from None

    def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        with self._client_lock:
            if self._client is None:
                from google.cloud import secretmanager

                host = self._settings.secretmanager_emulator_host
                if host:
                    from google.auth.credentials import AnonymousCredentials

                    endpoint = host if host.startswith("http") else f"http://{host}"
                    self._client = secretmanager.SecretManagerServiceClient(
                        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                        transport="rest",
                        client_options={"api_endpoint": endpoint},
                    )
                else:
                    self._client = secretmanager.SecretManagerServiceClient(transport="rest")
            return self._client
