"""The one exception type the sandbox raises to produce an error response."""

from __future__ import annotations

from typing import Any


class SandboxApiError(Exception):
    """An error answered as ``{"code": ..., "message": ..., **extra}`` with ``status``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}
        self.headers = headers or {}
        self._body = body

    def body(self) -> dict[str, Any]:
        """The answer: ``body`` when given (e.g. a 429's own shape), else code and message."""
        if self._body is not None:
            return dict(self._body)
        return {"code": self.code, "message": self.message, **self.extra}
