"""The poll state in one Cloud Storage object (client from core.cloud_storage).

Reads return the object's generation; every write carries
``ifGenerationMatch`` with the generation read (``0`` when there was none), so
of two writers that read the same version only the first succeeds and the
other gets ``412``, which becomes :class:`StateConflict`. Every call has a
short overall deadline: an outage must delay a poll by seconds, not the
client's default two minutes of retries.

``STORAGE_EMULATOR_HOST`` (a setting) points the real client at a local
emulator with anonymous credentials; tests use fake-gcs-server that way.
"""

from __future__ import annotations

from finetune_api.core.buckets import Bucket, BucketError, PreconditionFailed
from finetune_api.polling.state import ABSENT, StateConflict, StateUnavailable

#: Cloud Storage allows about one write per second to one object.
MIN_WRITE_INTERVAL_SECONDS = 1.0
DEFAULT_DEADLINE_SECONDS = 10.0


class GcsStateStore:
    """``gs://BUCKET/OBJECT``; the client is built on first use (off the cold start)."""

    def __init__(
        self,
        bucket: str,
        name: str,
        *,
        emulator_host: str | None = None,
        project: str | None = None,
        deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
        min_write_interval: float = MIN_WRITE_INTERVAL_SECONDS,
    ) -> None:
        self.bucket = bucket
        self.name = name
        self.description = f"gs://{bucket}/{name}"
        self.min_write_interval = min_write_interval
        self.objects = Bucket(
            bucket, emulator_host=emulator_host, project=project, deadline_seconds=deadline_seconds
        )

    def read(self) -> tuple[bytes | None, str | None]:
        try:
            found = self.objects.read(self.name, checksum="crc32c")
        except BucketError as error:  # any failure of the store is an outage here
            raise StateUnavailable(str(error)) from None
        return (None, ABSENT) if found is None else found

    def save(self, data: bytes, token: str) -> str:
        try:
            return self.objects.replace(self.name, data, token)
        except PreconditionFailed:
            raise StateConflict(f"{self.description} was saved by someone else") from None
        except BucketError as error:  # any other failure is an outage
            raise StateUnavailable(str(error)) from None


__all__ = ["GcsStateStore"]
