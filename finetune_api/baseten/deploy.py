"""The truss adapter for serving: deploy a training checkpoint as a Baseten model.

``truss train deploy_checkpoints`` ends in two ``BasetenApi`` GraphQL calls,
and so does this module: ``get_instance_types()`` (the ``listed_instances``
query) to turn an accelerator and GPU count into an instance type id, then
``create_model_version_from_inference_template(request)`` (the mutation, which
is not part of Baseten's published REST spec). The CLI helpers around them are
never called: they print to the console and prompt when a value is missing.

The request is built here the way truss 0.18.36's
``truss/cli/train/deploy_checkpoints/deploy_checkpoints.py::_build_inference_template_request``
builds it (weights source ``B10_CHECKPOINTING`` with the job id and checkpoint
name, inference stack ``VLLM``, environment variables with
``is_secret_reference``, ``instance_type_id``, ``dry_run``), and the instance
type is chosen as its ``_get_instance_type_id`` does (the single-node GPU type
of that accelerator with the fewest GPUs that still has enough).

Seams (each patched once per process, next to the ones in ``baseten.push``):

* ``BasetenApi`` is built directly from the app URL and an ``AuthService``
  holding the key (``Api-Key`` scheme); no remote, keyring or ``~/.trussrc``;
* ``truss.remote.baseten.api.requests`` (used for GraphQL) is given a stand-in
  whose ``post`` goes through one pooled Session and caps truss's hard-coded
  120 s timeout at ``BASETEN_TIMEOUT_SECONDS``;
* truss logs a failed GraphQL response's body (Baseten's answer, never our
  request headers) on the ``truss.remote.baseten.api`` logger; that logger
  writes through our JSON handler (scrubbed like every line) instead of plain
  text on stderr.

Errors map through :func:`finetune_api.baseten.client.upstream_error`; a
GraphQL ``errors`` answer (truss raises ``ApiError``) is Baseten refusing the
request: ``upstream_rejected`` with its message, or ``not_found`` when its code
says the resource does not exist.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from finetune_api.core.errors import (
    InternalError,
    NotFoundError,
    ServiceError,
    UpstreamError,
    UpstreamRejectedError,
)
from finetune_api.core.logs import LOGGER_NAME, get_logger, log, scrub
from finetune_api.core.settings import Settings

_logger = get_logger("baseten_deploy")
_lock = threading.Lock()
_prepared = False


@dataclass(frozen=True)
class InstanceChoice:
    id: str
    name: str
    gpu_type: str | None
    gpu_count: int
    price: float | None


class _TimeoutCappedRequests:
    """Stands in for ``requests`` inside ``truss.remote.baseten.api``."""

    def __init__(self, pooled: Any) -> None:
        self._pooled = pooled
        self.timeout = 30.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pooled, name)

    def post(self, url: str, data: Any = None, json: Any = None, **kwargs: Any) -> Any:
        kwargs["timeout"] = (min(10.0, self.timeout), self.timeout)
        return self._pooled.post(url, data=data, json=json, **kwargs)


_requests_stand_in: _TimeoutCappedRequests | None = None


def _prepare(settings: Settings) -> None:
    global _prepared, _requests_stand_in
    from finetune_api.baseten.push import _PooledRequests, _prepare_truss

    _prepare_truss()
    if not _prepared:
        with _lock:
            if not _prepared:
                from truss.remote.baseten import api as truss_api

                _requests_stand_in = _TimeoutCappedRequests(_PooledRequests())
                truss_api.requests = _requests_stand_in  # type: ignore[assignment]
                ours = logging.getLogger(LOGGER_NAME)
                theirs = logging.getLogger(truss_api.__name__)
                theirs.handlers[:] = list(ours.handlers)
                theirs.propagate = False
                _prepared = True
    assert _requests_stand_in is not None
    _requests_stand_in.timeout = settings.baseten_timeout_seconds


def _api(settings: Settings, api_key: str) -> Any:
    _prepare(settings)
    from truss.remote.baseten import api as truss_api
    from truss.remote.baseten.auth import ApiKeyCredential, AuthService

    remote_url = settings.baseten_remote_url
    # An unknown app URL would make truss resolve the REST base to production.
    if truss_api.API_URL_MAPPING.get(remote_url) != settings.resolved_api_url:
        truss_api.API_URL_MAPPING[remote_url] = settings.resolved_api_url
    return truss_api.BasetenApi(remote_url, AuthService(ApiKeyCredential(api_key=api_key)))


def _map(error: Exception, what: str) -> ServiceError:
    from truss.remote.baseten.error import ApiError

    from finetune_api.baseten.client import requests_error

    if isinstance(error, ServiceError):
        return error
    if isinstance(error, ApiError):
        message = scrub(str(error))[:500]
        if error.graphql_error_code in ("RESOURCE_NOT_FOUND", "NOT_FOUND"):
            return NotFoundError(f"{what}: {message}")
        return UpstreamRejectedError(f"Baseten rejected the deployment: {message}")
    transport_error = requests_error(what, error)
    if transport_error is not None:
        return transport_error
    if isinstance(error, KeyError | TypeError | ValueError):
        return UpstreamError(f"Baseten answered the {what} in an unexpected shape")
    log(_logger, 40, "deployment call failed", error_type=type(error).__name__)
    return InternalError(f"the {what} failed ({type(error).__name__})")


def instance_types(settings: Settings, api_key: str) -> list[InstanceChoice]:
    """Single-node instance types (``BasetenApi.get_instance_types``)."""
    what = "instance type list"
    try:
        items = _api(settings, api_key).get_instance_types()
    except Exception as error:  # noqa: BLE001 - mapped, never leaked raw
        raise _map(error, what) from None
    return [
        InstanceChoice(
            id=item.id,
            name=item.name,
            gpu_type=item.gpu_type,
            gpu_count=item.gpu_count,
            price=item.price,
        )
        for item in items
        if item.node_count == 1
    ]


def choose_instance_type(
    choices: list[InstanceChoice], accelerator: str, gpu_count: int
) -> InstanceChoice | None:
    """The GPU type with the fewest GPUs (at least ``gpu_count``), as truss chooses it."""
    best: InstanceChoice | None = None
    for item in choices:
        if item.gpu_count <= 0 or item.gpu_type != accelerator or item.gpu_count < gpu_count:
            continue
        if best is None or item.gpu_count < best.gpu_count:
            best = item
    return best


def inference_template_request(
    *,
    model_name: str,
    training_job_id: str,
    checkpoint_id: str,
    instance_type_id: str,
    hf_token_secret_name: str | None,
    dry_run: bool,
) -> dict[str, Any]:
    """The mutation's ``$request`` exactly as truss 0.18.36 builds it."""
    environment_variables = []
    if hf_token_secret_name:
        environment_variables.append(
            {"name": "HF_TOKEN", "value": hf_token_secret_name, "is_secret_reference": True}
        )
    return {
        "metadata": {"oracle_name": model_name},
        "weights_sources": [
            {
                "weight_source_type": "B10_CHECKPOINTING",
                "b10_training_checkpoint_weights_source": {
                    "checkpoint": {
                        "training_job_id": training_job_id,
                        "checkpoint_name": checkpoint_id,
                    }
                },
            }
        ],
        "inference_stack": {"stack_type": "VLLM", "environment_variables": environment_variables},
        "instance_type_id": instance_type_id,
        "dry_run": dry_run,
    }


def create_from_checkpoint(
    settings: Settings, api_key: str, request: dict[str, Any]
) -> dict[str, Any]:
    """Run the mutation once (never retried: it is not idempotent).

    Returns ``{"model_version": {"id", "name", "model_id"} | None, "truss_config": str}``.
    """
    what = "deployment of a training checkpoint"
    try:
        result = _api(settings, api_key).create_model_version_from_inference_template(request)
    except Exception as error:  # noqa: BLE001 - mapped, never leaked raw
        raise _map(error, what) from None
    if not isinstance(result, dict):
        raise UpstreamError(f"Baseten answered the {what} without a result")
    return result


__all__ = [
    "InstanceChoice",
    "choose_instance_type",
    "create_from_checkpoint",
    "inference_template_request",
    "instance_types",
]
