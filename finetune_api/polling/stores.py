"""Which store keeps the poll's state (and its retry claims): Cloud Storage
(``POLL_STATE_BUCKET``) or a local file.

The one place that knows both stores, so neither store module imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune_api.core.buckets import Bucket, Folder
from finetune_api.polling.claims import STALE_SECONDS, RetryClaims
from finetune_api.polling.state import LocalStateStore, StateStore


def default_state_file() -> Path:
    """Where the local store keeps the state when ``POLL_STATE_FILE`` is not set."""
    return Path.home() / ".cache" / "finetune-api" / "poll-state.json"


def store_from_settings(settings: Any) -> StateStore:
    """A Cloud Storage store when ``POLL_STATE_BUCKET`` is set, else the local file."""
    if settings.poll_state_bucket:
        from finetune_api.polling.gcs_store import GcsStateStore

        return GcsStateStore(
            settings.poll_state_bucket,
            settings.poll_state_object,
            emulator_host=settings.storage_emulator_host,
            project=settings.google_cloud_project,
        )
    return LocalStateStore(settings.poll_state_file or default_state_file())


def claims_from_settings(settings: Any) -> RetryClaims:
    """The retry claims beside the state: ``<object>.claims/`` in its bucket, or
    ``<file>.claims/`` beside the local file (so polls sharing a state share claims)."""
    # An abandoned claim must be taken over while its failure is still in the window.
    stale = min(STALE_SECONDS, settings.poll_lookback_seconds / 2)
    if settings.poll_state_bucket:
        bucket = Bucket(
            settings.poll_state_bucket,
            emulator_host=settings.storage_emulator_host,
            project=settings.google_cloud_project,
            deadline_seconds=10.0,
        )
        prefix = f"{settings.poll_state_object}.claims/"
        return RetryClaims(bucket, prefix=prefix, stale_seconds=stale)
    path = Path(settings.poll_state_file or default_state_file())
    return RetryClaims(Folder(path.with_name(f"{path.name}.claims")), stale_seconds=stale)
