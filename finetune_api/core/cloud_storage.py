"""The one way this service builds a Cloud Storage client (the poll state, the files).

``STORAGE_EMULATOR_HOST`` points the real ``google-cloud-storage`` client at a
local server (fake-gcs-server in tests and ``make run``) with anonymous
credentials. The library is imported here, lazily: never at cold start.
"""

from __future__ import annotations

from typing import Any


def storage_client(emulator_host: str | None, project: str | None) -> Any:
    from google.cloud import storage  # type: ignore[attr-defined]

    if emulator_host:
        from google.auth.credentials import AnonymousCredentials

        host = emulator_host
        if not host.startswith(("http://", "https://")):
            host = f"http://{host}"
        return storage.Client(
            project=project or "local",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": host},
        )
    return storage.Client(project=project)


def describe(error: BaseException) -> str:
    """A short reason: the class and HTTP code, never a URL with tokens or a header."""
    code = getattr(error, "code", None)
    return f"{type(error).__name__}" + (f" (HTTP {code})" if isinstance(code, int) else "")
