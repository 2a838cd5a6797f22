"""The sandbox's side of the S3 server that plays Baseten's upload bucket.

The sandbox hands clients credentials for ``s3_endpoint`` (normally a moto
server on 127.0.0.1) and, when a job is created, checks that every artifact
the body names was really uploaded there.
"""

from __future__ import annotations

import threading
from typing import Any

from sandbox.errors import SandboxApiError

ACCESS_KEY_ID = "sandbox-access-key-id"
SECRET_ACCESS_KEY = "sandbox-secret-access-key"
SESSION_TOKEN = "sandbox-session-token"
REGION = "us-east-1"


class S3Gateway:
    """Creates the bucket on first use and answers "does this object exist?".

    boto3 is imported lazily, so a sandbox without S3 never pays for it.
    """

    def __init__(self, endpoint: str | None, bucket: str) -> None:
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self.bucket = bucket
        self._lock = threading.Lock()
        self._client: Any = None
        self._bucket_ready = False

    def credentials(self) -> dict[str, str]:
        """The ``creds`` object of the blob-credentials response."""
        if self.endpoint is None:
            raise SandboxApiError(
                503, "UNAVAILABLE", "the sandbox was started without an S3 endpoint"
            )
        return {
            "aws_access_key_id": ACCESS_KEY_ID,
            "aws_secret_access_key": SECRET_ACCESS_KEY,
            "aws_session_token": SESSION_TOKEN,
            "endpoint_url": self.endpoint,
            "region_name": REGION,
        }

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3.session

                # A private session: boto3's default session is not thread-safe, and
                # explicit settings keep truss's AWS_* juggling from affecting us.
                session = boto3.session.Session(
                    aws_access_key_id=ACCESS_KEY_ID,
                    aws_secret_access_key=SECRET_ACCESS_KEY,
                    aws_session_token=SESSION_TOKEN,
                    region_name=REGION,
                )
                self._client = session.client("s3", endpoint_url=self.endpoint)
            return self._client

    def ensure_bucket(self) -> None:
        """Create the bucket once; a bucket that already exists is fine."""
        if self.endpoint is None or self._bucket_ready:
            return
        client = self._get_client()
        try:
            client.create_bucket(Bucket=self.bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except client.exceptions.BucketAlreadyExists:
            pass
        except Exception as exc:
            raise SandboxApiError(
                503, "UNAVAILABLE", f"sandbox could not reach S3: {type(exc).__name__}"
            ) from exc
        self._bucket_ready = True

    def forget_bucket(self) -> None:
        """After a reset the bucket is re-created on next use (the S3 server may be new)."""
        self._bucket_ready = False

    def object_exists(self, bucket: str, key: str) -> bool:
        """Whether ``bucket/key`` exists. Without an S3 endpoint, always True."""
        if self.endpoint is None:
            return True
        client = self._get_client()
        try:
            client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (403, 404):
                return False
            raise SandboxApiError(
                503, "UNAVAILABLE", f"sandbox could not reach S3: {type(exc).__name__}"
            ) from exc
        return True

    def put_object(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` of the sandbox's bucket (Baseten's own storage)."""
        self.ensure_bucket()
        try:
            self._get_client().put_object(Bucket=self.bucket, Key=key, Body=data)
        except Exception as exc:
            raise SandboxApiError(
                503, "UNAVAILABLE", f"sandbox could not reach S3: {type(exc).__name__}"
            ) from exc

    def list_objects(self, prefix: str) -> list[dict[str, Any]]:
        """``[{"Key", "Size", "LastModified"}]`` under ``prefix`` of the sandbox's bucket."""
        if self.endpoint is None:
            raise SandboxApiError(
                503, "UNAVAILABLE", "the sandbox was started without an S3 endpoint"
            )
        self.ensure_bucket()
        found: list[dict[str, Any]] = []
        try:
            pages = self._get_client().get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
                found.extend(page.get("Contents") or [])
        except Exception as exc:
            raise SandboxApiError(
                503, "UNAVAILABLE", f"sandbox could not reach S3: {type(exc).__name__}"
            ) from exc
        return found

    def presigned_get(self, bucket: str, key: str, expires_in: int = 3600) -> str:
        """A presigned GET URL for ``bucket/key`` (what Baseten's download answers hold)."""
        if self.endpoint is None:
            raise SandboxApiError(
                503, "UNAVAILABLE", "the sandbox was started without an S3 endpoint"
            )
        url: str = self._get_client().generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_in
        )
        return url
