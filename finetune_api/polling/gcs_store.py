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

import threading
from typing import Any

from finetune_api.core.cloud_storage import describe, storage_client
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
        self._emulator_host = emulator_host
        self._project = project
        self._deadline = deadline_seconds
        self._client: Any = None
        self._lock = threading.Lock()

    def _blob(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = storage_client(self._emulator_host, self._project)
            return self._client.bucket(self.bucket).blob(self.name)

    def _retry(self) -> Any:
        from google.cloud.storage.retry import DEFAULT_RETRY

        return DEFAULT_RETRY.with_timeout(self._deadline)

    def read(self) -> tuple[bytes | None, str | None]:
        from google.api_core import exceptions

        try:
            blob = self._blob()
            data: bytes = blob.download_as_bytes(
                timeout=self._deadline, retry=self._retry(), checksum="crc32c"
            )
        except exceptions.NotFound:
            return None, ABSENT
        except Exception as error:  # noqa: BLE001 - any failure of the store is an outage here
            raise StateUnavailable(describe(error)) from None
        return data, str(blob.generation)

    def save(self, data: bytes, token: str) -> str:
        from google.api_core import exceptions

        try:
            blob = self._blob()
            blob.upload_from_string(
                data,
                content_type="application/json",
                if_generation_match=int(token),
                timeout=self._deadline,
                retry=self._retry(),
            )
        except exceptions.PreconditionFailed:
            raise StateConflict(f"{self.description} was saved by someone else") from None
        except Exception as error:  # noqa: BLE001 - any other failure is an outage
            raise StateUnavailable(describe(error)) from None
        return str(blob.generation)


__all__ = ["GcsStateStore"]
