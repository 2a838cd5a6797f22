"""Every setting the service reads, from the environment, once, into one typed object.

The variables are listed in ../shared/CONTRACT.md; the few extras (tuning knobs
with safe defaults) are documented in docs/settings.md.

This is a small typed reader rather than pydantic-settings on purpose: the
functions import it on every cold start, and pydantic-settings (with pydantic)
costs ~130 ms of imports there — more than half of an empty function's start —
for two dozen flat variables. Validation of requests still uses pydantic, which
is imported only when a request needs it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_api.core import secret_values
from finetune_api.core.errors import ConfigurationError
from finetune_api.core.logs import get_logger, register_secret

DEFAULT_TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "training_template"
DEFAULT_ALLOWED_ACCELERATORS = ("H100", "H200", "A100", "A10G", "L4")
# What truss maps the app URL to; anything else goes to production unless
# BASETEN_API_URL says otherwise.
# The start of a project name (schemas.NAME), one character short of a whole one.
PROJECT_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]\Z")
KNOWN_API_URLS = {
    "https://app.baseten.co": "https://api.baseten.co",
    "https://app.staging.baseten.co": "https://api.staging.baseten.co",
}


class Secret:
    """A secret value that never shows itself in a repr, a log or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be text")
    return value.strip()


def _optional_text(value: Any) -> str | None:
    return _text(value) or None


def _secret(field_name: str) -> Callable[[Any], Secret]:
    """A secret setting's parser: set means set, so a blank value is an error, never "unset"."""

    def parse(value: Any) -> Secret:
        text = value.get_secret_value() if isinstance(value, Secret) else value
        if not isinstance(text, str):
            raise ValueError("must be text")
        value = secret_values.check(field_name, text)
        if field_name == "api_keys":
            from finetune_api.core.teams import key_table

            key_table(value)  # team:key entries: a bad team, an empty key, a key in two teams
        return Secret(value)

    return parse


def _reference(value: Any) -> str:
    """A ``*_SECRET_ID`` whose emptiness must not silently turn a protection off."""
    text = _text(value)
    if not text:
        raise ValueError("is set but empty")
    return text


def _prefix(value: Any) -> str | None:
    text = _text(value)
    if not text:
        return None
    if not PROJECT_PREFIX.fullmatch(text):
        raise ValueError("must be 1-63 of A-Z a-z 0-9 . _ -, starting with a letter or digit")
    return text


def _team(value: Any) -> str | None:
    from finetune_api.core.teams import check_team_name

    text = _text(value)
    return check_team_name(text) if text else None


def _team_list(value: Any) -> tuple[str, ...]:
    from finetune_api.core.teams import check_no_overlap, check_team_name

    names = tuple(check_team_name(part.strip()) for part in _text(value).split(",") if part.strip())
    check_no_overlap(names)
    return names


def _team_limits(value: Any) -> dict[str, dict[str, int]] | None:
    from finetune_api.core.teams import parse_limits

    return parse_limits(value)


def _url(value: Any) -> str | None:
    text = _text(value)
    if not text:
        return None
    if not text.startswith(("http://", "https://")):
        raise ValueError("must be an http(s) URL")
    return text.rstrip("/")


def _commas(value: Any) -> tuple[str, ...]:
    parts = value if isinstance(value, list | tuple) else _text(value).split(",")
    items = tuple(str(part).strip() for part in parts if str(part).strip())
    if not items:
        raise ValueError("must name at least one value")
    return items


def _bucket_list(value: Any) -> tuple[str, ...]:
    """A comma list of Cloud Storage bucket names; empty is allowed (and means: none)."""
    parts = value if isinstance(value, list | tuple) else _text(value).split(",")
    items = tuple(str(part).strip() for part in parts if str(part).strip())
    for item in items:
        if not BUCKET_NAME.fullmatch(item):
            raise ValueError(f"{item!r} is not a Cloud Storage bucket name")
    return items


def _number(
    kind: type[int] | type[float], low: float | None, high: float | None, strict_low: bool
) -> Callable[[Any], Any]:
    def parse(value: Any) -> int | float:
        if isinstance(value, bool):
            raise ValueError(f"must be {'an integer' if kind is int else 'a number'}")
        try:
            number = kind(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise ValueError(f"must be {'an integer' if kind is int else 'a number'}") from None
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError("must be an integer")
        if isinstance(number, float) and not math.isfinite(number):
            raise ValueError("must be a finite number")
        if low is not None and (number <= low if strict_low else number < low):
            raise ValueError(f"must be {'greater than' if strict_low else 'at least'} {low:g}")
        if high is not None and number > high:
            raise ValueError(f"must be at most {high:g}")
        return number

    return parse


def _int(low: float | None = None, high: float | None = None) -> Callable[[Any], Any]:
    return _number(int, low, high, strict_low=False)


def _positive_float(high: float | None = None, *, allow_zero: bool = False) -> Callable[[Any], Any]:
    return _number(float, 0, high, strict_low=not allow_zero)


def _path(value: Any) -> Path:
    return value if isinstance(value, Path) else Path(_text(value))


def _optional_path(value: Any) -> Path | None:
    if isinstance(value, Path):
        return value
    text = _text(value)
    return Path(text).expanduser() if text else None


def _setting(default: Any, parse: Callable[[Any], Any]) -> Any:
    return field(default=default, metadata={"parse": parse})


@dataclass(frozen=True)
class Settings:
    baseten_api_key: Secret | None = _setting(None, _secret("baseten_api_key"))
    baseten_api_key_secret_id: str | None = _setting(None, _optional_text)
    baseten_remote_url: str = _setting("https://app.baseten.co", _url)
    baseten_api_url: str | None = _setting(None, _url)
    baseten_team_id: str | None = _setting(None, _optional_text)
    google_cloud_project: str | None = _setting(None, _optional_text)
    secretmanager_emulator_host: str | None = _setting(None, _optional_text)
    training_template_dir: Path = _setting(DEFAULT_TEMPLATE_DIR, _path)
    hf_token_secret_name: str = _setting("hf_access_token", _text)
    wandb_api_key_secret_name: str = _setting("wandb_api_key", _text)
    allowed_accelerators: tuple[str, ...] = _setting(DEFAULT_ALLOWED_ACCELERATORS, _commas)
    max_gpus_per_node: int = _setting(8, _int(1, 64))
    max_nodes: int = _setting(1, _int(1, 64))
    api_keys: Secret | None = _setting(None, _secret("api_keys"))
    api_keys_secret_id: str | None = _setting(None, _reference)
    webhook_url: str | None = _setting(None, _url)
    webhook_secret: Secret | None = _setting(None, _secret("webhook_secret"))
    webhook_secret_secret_id: str | None = _setting(None, _optional_text)
    # At most a year: a poll's window start must stay a real date.
    poll_lookback_seconds: int = _setting(1800, _int(1, 366 * 86400))
    pubsub_max_event_age_seconds: int = _setting(3600, _int(1))
    max_body_bytes: int = _setting(65536, _int(1))
    # Opt-in: read, list and stop only projects whose names start with this.
    project_name_prefix: str | None = _setting(None, _prefix)
    # Teams (issue 29): the team whose keys see every team's objects, and the
    # per-team ceilings (see core/teams.py and docs/settings.md).
    admin_team: str | None = _setting(None, _team)
    # The team names, for the functions that hold no API keys (poll_jobs,
    # train_pubsub): with API_KEYS the teams are its team:key entries (plus these).
    teams: tuple[str, ...] = _setting((), _team_list)
    team_limits: dict[str, dict[str, int]] | None = _setting(None, _team_limits)

    # Extras, not in the CONTRACT table (documented in docs/settings.md).
    baseten_timeout_seconds: float = _setting(30.0, _positive_float())
    # Baseten allows 100/s per key; starts bunch a little, so stay at or under 90.
    baseten_max_requests_per_second: float = _setting(20.0, _positive_float(90))
    baseten_max_retries: int = _setting(3, _int(0, 10))
    secret_cache_ttl_seconds: float = _setting(300.0, _positive_float(allow_zero=True))
    secret_timeout_seconds: float = _setting(5.0, _positive_float())
    poll_concurrency: int = _setting(16, _int(1, 64))
    webhook_timeout_seconds: float = _setting(5.0, _positive_float())
    webhook_max_attempts: int = _setting(3, _int(1, 10))
    # Serving (issue 14): where deployed models answer, how long poll_jobs watches
    # a new deployment, and how often a poll may retry a deploy on completion.
    baseten_inference_url: str | None = _setting(None, _url)
    deployment_watch_seconds: int = _setting(86400, _int(60))
    deploy_max_attempts: int = _setting(3, _int(1, 20))
    # The chat proxy's bounds on one answer (issue 27): its total time and size.
    chat_max_seconds: float = _setting(600.0, _positive_float(3600))
    chat_max_bytes: int = _setting(32 * 1024 * 1024, _int(1024))
    # Where the poll keeps its small state (see polling/state.py): a Cloud Storage
    # object when a bucket is named, else a local file (no cloud needed).
    poll_state_bucket: str | None = _setting(None, _optional_text)
    poll_state_object: str = _setting("poll-state.json", _text)
    poll_state_file: Path | None = _setting(None, _optional_path)
    poll_full_sweep_hours: float = _setting(24.0, _positive_float(24 * 30))
    storage_emulator_host: str | None = _setting(None, _optional_text)
    # Your own data (issue 20): where uploaded files live (a bucket, else a local
    # folder), how long they are kept, how big a multipart upload may be.
    files_bucket: str | None = _setting(None, _optional_text)
    files_retention_days: int = _setting(30, _int(1, 3650))
    max_upload_bytes: int = _setting(33554432, _int(1))
    files_dir: Path | None = _setting(None, _optional_path)
    # Longest line of a JSONL file, and how long the read URL a job gets is valid
    # (at most 7 days: the limit of a V4 signed URL).
    max_line_bytes: int = _setting(4 * 1024 * 1024, _int(1024, 64 * 1024 * 1024))
    data_url_ttl_seconds: int = _setting(7 * 86400, _int(60, 7 * 86400))
    # Safety of own data (issue 27): the only buckets a gs:// reference may name
    # (none by default; the service's own buckets never), the largest File, how long
    # a complete waits for its check before answering 202 "validating", the largest
    # tokenizer.json a dry run downloads and how long its count may take per batch.
    gcs_allowed_buckets: tuple[str, ...] = _setting((), _bucket_list)
    max_file_bytes: int = _setting(8 * 1024**3, _int(1))
    file_check_wait_seconds: float = _setting(20.0, _positive_float(3600, allow_zero=True))
    tokenizer_max_bytes: int = _setting(64 * 1024 * 1024, _int(1024, 1024**3))
    tokenizer_batch_seconds: float = _setting(20.0, _positive_float(600))

    @property
    def resolved_api_url(self) -> str:
        """The REST base for Baseten calls."""
        if self.baseten_api_url:
            return self.baseten_api_url
        return KNOWN_API_URLS.get(self.baseten_remote_url, "https://api.baseten.co")

    @property
    def inference_url(self) -> str:
        """Template of a model's invoke host with ``{model_id}``, as truss derives it.

        ``https://api.baseten.co`` → ``https://model-{model_id}.api.baseten.co``.
        """
        if self.baseten_inference_url:
            return self.baseten_inference_url
        scheme, _, host = self.resolved_api_url.partition("://")
        return f"{scheme}://model-{{model_id}}.{host}"

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (already typed values)."""
        return dataclasses.replace(self, **changes)


_FIELDS = {item.name: item for item in dataclasses.fields(Settings)}


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read the environment (names are the fields in upper case) plus ``overrides``.

    Every bad variable is reported at once, by name, in one ConfigurationError.
    """
    environ = os.environ if environ is None else environ
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        raise TypeError(f"unknown setting(s): {', '.join(unknown)}")
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, item in _FIELDS.items():
        if name in overrides:
            raw = overrides[name]
        else:
            raw = environ.get(name.upper())
            if raw is None:
                continue
        if raw is None:
            values[name] = None
            continue
        try:
            parsed = item.metadata["parse"](raw)
        except ValueError as error:
            problems.append(f"{name.upper()}: {error}")
            continue
        if parsed is None and item.default is not None:
            continue  # an empty value means "use the default"
        values[name] = parsed
    settings = Settings(**values)
    if settings.webhook_url and not (settings.webhook_secret or settings.webhook_secret_secret_id):
        problems.append(
            "WEBHOOK_URL is set but neither WEBHOOK_SECRET nor WEBHOOK_SECRET_SECRET_ID is"
        )
    if problems:
        raise ConfigurationError("invalid setting(s): " + "; ".join(problems))
    for secret in (settings.baseten_api_key, settings.webhook_secret):
        if secret is not None:
            register_secret(secret.get_secret_value())
    if settings.api_keys is not None:
        # Each key is a secret of its own; a log line may quote one alone.
        for entry in settings.api_keys.get_secret_value().split(","):
            register_secret(entry)
            register_secret(entry.partition(":")[2] or entry)
    return settings


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
