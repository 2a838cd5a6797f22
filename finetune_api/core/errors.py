"""The service's exception hierarchy: one class per CONTRACT error type.

Each error knows its HTTP status, its JSON body and whether a Pub/Sub delivery
that hit it should be retried; the HTTP layer and the Pub/Sub entry point map
errors in exactly one place each by reading these attributes.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    """Base of every error the service raises on purpose."""

    type: ClassVar[str] = "internal"
    status: ClassVar[int] = 500
    # True when a retry later may succeed without changing the request.
    transient: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.retry_after = retry_after

    @property
    def body(self) -> dict[str, Any]:
        """The CONTRACT error body: ``{"error": {"type", "message", "details"?}}``."""
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


class InvalidRequestError(ServiceError):
    type = "invalid_request"
    status = 400
    transient = False


class UnauthorizedError(ServiceError):
    type = "unauthorized"
    status = 401
    transient = False


class NotFoundError(ServiceError):
    type = "not_found"
    status = 404
    transient = False


class MethodNotAllowedError(ServiceError):
    type = "method_not_allowed"
    status = 405
    transient = False


class PayloadTooLargeError(ServiceError):
    type = "payload_too_large"
    status = 413
    transient = False


class UnsupportedMediaTypeError(ServiceError):
    type = "unsupported_media_type"
    status = 415
    transient = False


class ConflictError(ServiceError):
    """The resource is not in a state that allows the request (e.g. deploying an unfinished job)."""

    type = "conflict"
    status = 409
    transient = False


class UpstreamRejectedError(ServiceError):
    """Baseten refused the request as invalid; its message is passed on."""

    type = "upstream_rejected"
    status = 422
    transient = False


class UpstreamError(ServiceError):
    """Baseten answered 5xx, or refused our credentials (an operator must act)."""

    type = "upstream_error"
    status = 502


class UpstreamUnavailableError(ServiceError):
    """Baseten timed out, could not be reached, or rate-limited us."""

    type = "upstream_unavailable"
    status = 503

    def __init__(self, message: str, *, retry_after: int | None = None, **kwargs: Any) -> None:
        super().__init__(
            message, retry_after=retry_after if retry_after is not None else 5, **kwargs
        )


class UpstreamRateLimitedError(UpstreamUnavailableError):
    """Baseten answered 429 after our own retries: ``upstream_unavailable`` (503) on the
    service's own routes, a 429 on the OpenAI-compatible ``/v1/`` routes."""


class SecretUnavailableError(ServiceError):
    """Secret Manager could not give us a secret we need."""

    type = "secret_unavailable"
    status = 503

    def __init__(self, message: str, *, retry_after: int | None = None, **kwargs: Any) -> None:
        super().__init__(
            message, retry_after=retry_after if retry_after is not None else 10, **kwargs
        )


class QuotaExceededError(ServiceError):
    """A team's TEAM_LIMITS would be passed; the message names the limit and the use."""

    type = "quota_exceeded"
    status = 429
    transient = False


class ConfigurationError(ServiceError):
    """A setting is missing or malformed; the message names it."""

    type = "internal"
    status = 500


class InternalError(ServiceError):
    type = "internal"
    status = 500


__all__ = [
    "ConfigurationError",
    "ConflictError",
    "InternalError",
    "InvalidRequestError",
    "MethodNotAllowedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "QuotaExceededError",
    "SecretUnavailableError",
    "ServiceError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
    "UpstreamError",
    "UpstreamRateLimitedError",
    "UpstreamRejectedError",
    "UpstreamUnavailableError",
]
