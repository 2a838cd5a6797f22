"""Fine-tuned model names, ``/v1/models``, and which Baseten deployment a name reaches.

A model name is ``ft:<Baseten model name>:<Baseten model id>:<deployment id>`` (the
Baseten model name is the job's ``suffix`` when given, else its ``deploy.model_name``
or its job name): the last two parts say where to forward a chat, so no lookup
table is needed.
Only deployments this service created (their Baseten name is the marker
``ft.<project>.<job>.<checkpoint>``, see serving/deployments.py) are reachable;
any other name, malformed or not, is a 404.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

from finetune_api.core.errors import NotFoundError, ServiceError
from finetune_api.core.logs import get_logger, log
from finetune_api.serving.deployments import default_model_name, parse_marker

_logger = get_logger("models")
# (model, deployment, (project id, job id, checkpoint id)) of each serving deployment.
_Serving = list[tuple[dict[str, Any], dict[str, Any], tuple[str, str, str]]]
_ID = re.compile(r"^[A-Za-z0-9]{1,40}\Z")
# Statuses whose deployment answers (or wakes up to answer) a request.
SERVING = frozenset({"ACTIVE", "SCALED_TO_ZERO", "WAKING_UP", "UPDATING"})
CACHE_SECONDS = 30.0
#: ``/v1/models`` lists the deployments of at most this many models (the newest that
#: have any): one Baseten call each, made 8 at a time; a model without deployments
#: costs nothing. So one request makes at most 1 + MAX_MODELS_READ Baseten calls.
MAX_MODELS_READ = 100
_LIST_WORKERS = 8


def model_name(baseten_name: str, model_id: str, deployment_id: str) -> str:
    return f"ft:{baseten_name}:{model_id}:{deployment_id}"


def parse_model_name(name: Any) -> tuple[str, str] | None:
    """``(model_id, deployment_id)`` of a fine-tuned model name, else None."""
    if not isinstance(name, str) or not name.startswith("ft:") or len(name) > 512:
        return None
    parts = name.split(":")
    if len(parts) < 4:
        return None
    model_id, deployment_id = parts[-2], parts[-1]
    if not (_ID.match(model_id) and _ID.match(deployment_id)):
        return None
    return model_id, deployment_id


class ModelDirectory:
    """Which fine-tuned models exist and may be called; the answers cached briefly.

    A chat request checks its model (ours, serving) once per ``CACHE_SECONDS`` per
    instance, so the proxy's time to first byte is the forward alone.
    """

    def __init__(
        self,
        client: Any,
        scope_allows: Callable[[str, str], bool],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._allows = scope_allows
        self._clock = clock
        self._lock = threading.Lock()
        self._checked: dict[tuple[str, str], float] = {}
        self._flight: _Flight | None = None

    def find_for_job(
        self, project_id: str, job_id: str, raw_job: dict[str, Any], names: list[str | None]
    ) -> dict[str, Any] | None:
        """A serving deployment of the job (newest first), or None.

        Looked for under the model names it may have been deployed as: ``names`` (the
        job's ``deploy.model_name``, its ``suffix``), then the default (the job name).
        """
        found = []
        seen: set[str] = set()
        for name in [*names, default_model_name(raw_job)]:
            if not name or name in seen:
                continue
            seen.add(name)
            try:
                models = [m for m in self._client.list_models(name) if m.get("name") == name]
                for model in models:
                    for deployment in self._client.list_deployments(str(model["id"])):
                        source = parse_marker(deployment.get("name"))
                        if source is None or source[:2] != (project_id, job_id):
                            continue
                        if str(deployment.get("status")) in SERVING:
                            found.append(
                                {**deployment, "model_id": str(model["id"]), "model_name": name}
                            )
            except ServiceError:
                continue
            if found:
                break
        found.sort(key=lambda d: str(d.get("created_at") or ""), reverse=True)
        return found[0] if found else None

    def check(self, name: Any) -> tuple[str, str]:
        """``(model_id, deployment_id)`` of a model name one may chat with; else a 404."""
        parsed = parse_model_name(name)
        if parsed is None:
            raise NotFoundError("no such model (name a fine_tuned_model from a job)")
        now = self._clock()
        with self._lock:
            seen = self._checked.get(parsed)
            if seen is not None and now - seen < CACHE_SECONDS:
                return parsed
        model_id, deployment_id = parsed
        try:
            deployment = self._client.get_deployment(model_id, deployment_id)
        except NotFoundError:
            raise NotFoundError("no such model") from None
        source = parse_marker(deployment.get("name"))
        if source is None or not self._allows(source[0], source[1]):
            raise NotFoundError("no such model")
        if str(deployment.get("status")) not in SERVING:
            raise NotFoundError("this model is not active (deploy or reactivate it first)")
        with self._lock:
            if len(self._checked) > 1024:
                self._checked.clear()
            self._checked[parsed] = now
        return parsed

    def forget(self, model_id: str, deployment_id: str) -> None:
        with self._lock:
            self._checked.pop((model_id, deployment_id), None)

    def list(self) -> list[dict[str, Any]]:
        """Every serving deployment this service created, as OpenAI model objects.

        Bounded: the deployments of the newest :data:`MAX_MODELS_READ` models that
        have any are read (in parallel); requests arriving while a listing is being
        read wait for it and share its answer instead of reading again.
        """
        listed = []
        for model, deployment, source in self._serving():
            if not self._allows(source[0], source[1]):
                continue
            listed.append(
                {
                    "id": model_name(
                        str(model.get("name") or "model"), str(model["id"]), str(deployment["id"])
                    ),
                    "object": "model",
                    "created": _unix(deployment.get("created_at")),
                    "owned_by": "baseten",
                    "training_project_id": source[0],
                    "training_job_id": source[1],
                    "checkpoint_id": source[2],
                }
            )
        return listed

    def _serving(self) -> _Serving:
        """This service's serving deployments; one reading shared by concurrent callers."""
        with self._lock:
            flight = self._flight
            leader = flight is None
            if leader:
                flight = self._flight = _Flight()
        assert flight is not None
        if not leader:
            return flight.wait()
        try:
            flight.answer = self._read_serving()
        except BaseException as error:
            flight.error = error
            raise
        finally:
            with self._lock:
                self._flight = None
            flight.done.set()
        return flight.answer

    def _read_serving(self) -> _Serving:
        models = [m for m in self._client.list_models() if m.get("deployments_count") != 0]
        if len(models) > MAX_MODELS_READ:
            log(
                _logger,
                30,
                "more models with deployments than /v1/models reads; the oldest are left out",
                models=len(models),
                read=MAX_MODELS_READ,
            )
            models.sort(key=lambda m: str(m.get("created_at") or ""), reverse=True)
            models = models[:MAX_MODELS_READ]

        def deployments(model: dict[str, Any]) -> list[dict[str, Any]]:
            return list(self._client.list_deployments(str(model["id"])))

        if len(models) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(_LIST_WORKERS, len(models))) as pool:
                each = list(pool.map(deployments, models))
        else:
            each = [deployments(model) for model in models]
        found = []
        for model, items in zip(models, each, strict=True):
            for deployment in items:
                source = parse_marker(deployment.get("name"))
                if source is None or str(deployment.get("status")) not in SERVING:
                    continue
                found.append((model, deployment, source))
        return found


class _Flight:
    """One listing in progress; later callers wait for its answer."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.answer: _Serving = []
        self.error: BaseException | None = None

    def wait(self) -> _Serving:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.answer


def _unix(value: Any) -> int:
    from finetune_api.core.timestamps import parse_time

    moment = parse_time(value)
    return int(moment.timestamp()) if moment is not None else 0
