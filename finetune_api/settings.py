"""Every setting the service reads, from the environment, once, into one typed object.

The variables are listed in ../shared/CONTRACT.md; the few extras (tuning knobs
with safe defaults) are documented in the README.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ConfigurationError
from .logs import register_secret

DEFAULT_TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "training_template"
DEFAULT_ALLOWED_ACCELERATORS = ("H100", "H200", "A100", "A10G", "L4")
# What truss maps the app URL to; anything else goes to production unless
# BASETEN_API_URL says otherwise.
KNOWN_API_URLS = {
    "https://app.baseten.co": "https://api.baseten.co",
    "https://app.staging.baseten.co": "https://api.staging.baseten.co",
}

CommaList = Annotated[tuple[str, ...], NoDecode]


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    baseten_api_key: SecretStr | None = None
    baseten_api_key_secret_id: str | None = None
    baseten_remote_url: str = "https://app.baseten.co"
    baseten_api_url: str | None = None
    baseten_team_id: str | None = None
    google_cloud_project: str | None = None
    secretmanager_emulator_host: str | None = None
    training_template_dir: Path = DEFAULT_TEMPLATE_DIR
    hf_token_secret_name: str = Field(default="hf_access_token", min_length=1)
    allowed_accelerators: CommaList = DEFAULT_ALLOWED_ACCELERATORS
    max_gpus_per_node: int = Field(default=8, ge=1, le=64)
    max_nodes: int = Field(default=1, ge=1, le=64)
    api_keys: SecretStr | None = None
    api_keys_secret_id: str | None = None
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_secret_secret_id: str | None = None
    poll_lookback_seconds: int = Field(default=1800, ge=1)
    pubsub_max_event_age_seconds: int = Field(default=3600, ge=1)
    max_body_bytes: int = Field(default=65536, ge=1)

    # Extras, not in the CONTRACT table (documented in the README).
    baseten_timeout_seconds: float = Field(default=30.0, gt=0)
    # Baseten allows 100/s per key; starts bunch a little, so stay at or under 90.
    baseten_max_requests_per_second: float = Field(default=20.0, gt=0, le=90)
    baseten_max_retries: int = Field(default=3, ge=0, le=10)
    secret_cache_ttl_seconds: float = Field(default=300.0, ge=0)
    secret_timeout_seconds: float = Field(default=5.0, gt=0)
    poll_concurrency: int = Field(default=16, ge=1, le=64)
    webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    webhook_max_attempts: int = Field(default=3, ge=1, le=10)

    @field_validator("allowed_accelerators", mode="before")
    @classmethod
    def _parse_accelerators(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("baseten_remote_url", "baseten_api_url", "webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> Settings:
        if self.webhook_url and not (self.webhook_secret or self.webhook_secret_secret_id):
            raise ValueError(
                "WEBHOOK_URL is set but neither WEBHOOK_SECRET nor WEBHOOK_SECRET_SECRET_ID is"
            )
        if not self.allowed_accelerators:
            raise ValueError("ALLOWED_ACCELERATORS must name at least one accelerator")
        for secret in (self.baseten_api_key, self.api_keys, self.webhook_secret):
            if secret is not None:
                register_secret(secret.get_secret_value())
        return self

    @property
    def resolved_api_url(self) -> str:
        """The REST base for Baseten calls."""
        if self.baseten_api_url:
            return self.baseten_api_url
        return KNOWN_API_URLS.get(self.baseten_remote_url, "https://api.baseten.co")


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        name = "_".join(str(part) for part in item["loc"]).upper() or "settings"
        problems.append(f"{name}: {item['msg']}")
    return "invalid setting(s): " + "; ".join(problems)


def load_settings(**overrides: Any) -> Settings:
    """Read the environment; a bad variable becomes a ConfigurationError naming it."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigurationError(_describe(error)) from None


_cached: Settings | None = None
_cached_error: ConfigurationError | None = None
_lock = threading.Lock()


def get_settings() -> Settings:
    """The process-wide settings, read on first use (errors are remembered too)."""
    global _cached, _cached_error
    if _cached is not None:
        return _cached
    with _lock:
        if _cached is None and _cached_error is None:
            try:
                _cached = load_settings()
            except ConfigurationError as error:
                _cached_error = error
                from .logs import get_logger

                get_logger("settings").error(error.message)
        if _cached_error is not None:
            raise _cached_error
        assert _cached is not None
        return _cached


def reset() -> None:
    """Forget the cached settings (see runtime.reset)."""
    global _cached, _cached_error
    with _lock:
        _cached = None
        _cached_error = None
