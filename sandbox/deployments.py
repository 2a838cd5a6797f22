"""Serving in the sandbox: models, deployments, the GraphQL deploy path and inference.

What a client of Baseten sees when it deploys a training checkpoint:

* ``POST /graphql/`` with the two operations truss 0.18.36 sends for
  ``truss train deploy_checkpoints``: the ``listed_instances`` query behind
  ``BasetenApi.get_instance_types()`` and the
  ``create_model_version_from_inference_template`` mutation. Answers follow
  GraphQL: HTTP 200 with ``data``, or with ``errors`` (``message`` and
  ``extensions.code``) when the request is invalid.
* The ``/v1/models…`` reads and the few writes (rename, deactivate, delete) of
  the published models API, shaped per ``baseten-models-openapi.yaml``.
* ``GET /v1/training_projects/{p}/jobs/{j}/download``: presigned S3 URLs of the
  archives the job was pushed with.
* A deployment clock: ``BUILDING`` → ``DEPLOYING`` → ``ACTIVE`` one step every
  ``deploy_step_seconds`` (``BUILD_FAILED`` instead when ``fail_new_deployments``
  is set), forced through ``POST /_sandbox/deployments/{id}/status``.
* For an ACTIVE deployment, an OpenAI-style chat-completions endpoint at
  ``/model-{model_id}/deployment/{deployment_id}/sync/v1/chat/completions``
  (the path part of Baseten's ``https://model-{id}.api.baseten.co/...``),
  answering deterministically.

Everything shares the training state's lock and clock (:class:`TrainingSide`,
which :class:`sandbox.state.SandboxState` satisfies; this module never imports it).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from werkzeug.routing import Rule

from sandbox.errors import SandboxApiError
from sandbox.times import rfc3339


class TrainingSide(Protocol):
    """What deployments read of the training state: its lock, clock, config, jobs and S3."""

    _lock: threading.RLock
    _jobs: dict[str, Any]
    config: Any
    s3: Any

    def now_us(self) -> int: ...

    def _new_id(self, taken: dict[str, Any]) -> str: ...

    def _job_or_404(self, project_id: str, job_id: str) -> Any: ...


BUILDING = "BUILDING"
DEPLOYING = "DEPLOYING"
ACTIVE = "ACTIVE"
BUILD_FAILED = "BUILD_FAILED"
INACTIVE = "INACTIVE"
_PATH = (BUILDING, DEPLOYING, ACTIVE)
STATUSES = frozenset(
    {
        "BUILDING",
        "DEPLOYING",
        "DEPLOY_FAILED",
        "LOADING_MODEL",
        "ACTIVE",
        "UNHEALTHY",
        "BUILD_FAILED",
        "BUILD_STOPPED",
        "DEACTIVATING",
        "INACTIVE",
        "FAILED",
        "UPDATING",
        "SCALED_TO_ZERO",
        "WAKING_UP",
    }
)
_US = 1_000_000
# Deployment names: "Only alphanumeric characters, hyphens, underscores, and periods".
_DEPLOYMENT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,255}\Z")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")

API_RULES = [
    Rule("/graphql/", methods=["POST"], endpoint="graphql"),
    Rule("/v1/models", methods=["GET"], endpoint="list_models"),
    Rule("/v1/models/<model_id>", methods=["GET"], endpoint="get_model"),
    Rule("/v1/models/<model_id>/deployments", methods=["GET"], endpoint="list_deployments"),
    Rule(
        "/v1/models/<model_id>/deployments/<deployment_id>",
        methods=["GET"],
        endpoint="get_deployment",
    ),
    Rule(
        "/v1/models/<model_id>/deployments/<deployment_id>",
        methods=["PATCH"],
        endpoint="update_deployment",
    ),
    Rule(
        "/v1/models/<model_id>/deployments/<deployment_id>",
        methods=["DELETE"],
        endpoint="delete_deployment",
    ),
    Rule(
        "/v1/models/<model_id>/deployments/<deployment_id>/deactivate",
        methods=["POST"],
        endpoint="deactivate_deployment",
    ),
    Rule(
        "/v1/models/<model_id>/deployments/<deployment_id>/activate",
        methods=["POST"],
        endpoint="activate_deployment",
    ),
    Rule(
        "/v1/training_projects/<project_id>/jobs/<job_id>/download",
        methods=["GET"],
        endpoint="download_job",
    ),
    Rule(
        "/model-<model_id>/deployment/<deployment_id>/sync/v1/chat/completions",
        methods=["POST"],
        endpoint="chat_completions",
    ),
]
CONTROL_RULES = [
    Rule("/_sandbox/deployments", methods=["GET"], endpoint="all_deployments"),
    Rule("/_sandbox/deployments/config", methods=["POST"], endpoint="configure_deployments"),
    Rule("/_sandbox/models/seed", methods=["POST"], endpoint="seed_models"),
    Rule(
        "/_sandbox/deployments/<deployment_id>/status",
        methods=["POST"],
        endpoint="force_deployment_status",
    ),
]

# Instance types as the listed_instances query answers them (camelCase aliases).
INSTANCE_TYPES: list[dict[str, Any]] = [
    {
        "id": "cpu-4x16",
        "name": "1x4",
        "millicpuLimit": 4000,
        "memoryLimit": 16384,
        "gpuCount": 0,
        "gpuType": None,
        "gpuMemory": None,
        "default": True,
        "displayName": "4 vCPU, 16 GiB",
        "nodeCount": 1,
        "price": 0.00058,
        "limitedCapacity": False,
    },
    *[
        {
            "id": f"{gpu}:{count}",
            "name": f"{gpu}:{count}x{8 * count}",
            "millicpuLimit": 8000 * count,
            "memoryLimit": 65536 * count,
            "gpuCount": count,
            "gpuType": gpu,
            "gpuMemory": memory,
            "default": False,
            "displayName": f"{count}x {gpu}",
            "nodeCount": 1,
            "price": round(price * count, 5),
            "limitedCapacity": False,
        }
        for gpu, memory, price in (
            ("L4", 24576, 0.01415),
            ("A10G", 24576, 0.02012),
            ("A100", 81920, 0.06667),
            ("H100", 81920, 0.10833),
            ("H200", 143360, 0.12500),
        )
        for count in (1, 2, 4, 8)
    ],
]
_INSTANCES_BY_ID = {item["id"]: item for item in INSTANCE_TYPES}


@dataclass
class Model:
    id: str
    name: str
    created_us: int
    deployment_ids: list[str] = field(default_factory=list)


@dataclass
class Deployment:
    id: str
    model_id: str
    name: str
    created_us: int
    status: str
    anchor_us: int
    instance_type: dict[str, Any]
    request: dict[str, Any]
    fail_message: str | None = None


def _graphql_error(message: str, code: str = "VALIDATION_ERROR") -> dict[str, Any]:
    return {"data": None, "errors": [{"message": message, "extensions": {"code": code}}]}


class _Invalid(Exception):
    pass


def _check_keys(value: Any, where: str, required: set[str], optional: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"{where}: expected an object")
    unknown = sorted(value.keys() - required - optional)
    if unknown:
        raise _Invalid(f"{where}.{unknown[0]}: unknown field")
    missing = sorted(required - value.keys())
    if missing:
        raise _Invalid(f"{where}.{missing[0]}: required")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid(f"{where}: expected a non-empty string")
    return value


def validate_inference_template_request(request: Any) -> dict[str, Any]:
    """The ``CreateModelVersionFromInferenceTemplateRequest`` truss builds, checked strictly."""
    _check_keys(
        request,
        "request",
        {"metadata", "weights_sources", "inference_stack", "instance_type_id", "dry_run"},
        set(),
    )
    metadata = _check_keys(request["metadata"], "request.metadata", {"oracle_name"}, set())
    name = _string(metadata["oracle_name"], "request.metadata.oracle_name")
    if not _MODEL_NAME.match(name):
        raise _Invalid(
            "request.metadata.oracle_name: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter "
            "or digit"
        )
    sources = request["weights_sources"]
    if not isinstance(sources, list) or not sources:
        raise _Invalid("request.weights_sources: expected a non-empty list")
    for index, source in enumerate(sources):
        where = f"request.weights_sources[{index}]"
        _check_keys(
            source, where, {"weight_source_type", "b10_training_checkpoint_weights_source"}, set()
        )
        if source["weight_source_type"] != "B10_CHECKPOINTING":
            raise _Invalid(f"{where}.weight_source_type: only B10_CHECKPOINTING is served here")
        inner = _check_keys(
            source["b10_training_checkpoint_weights_source"],
            f"{where}.b10_training_checkpoint_weights_source",
            {"checkpoint"},
            set(),
        )
        checkpoint = _check_keys(
            inner["checkpoint"],
            f"{where}.b10_training_checkpoint_weights_source.checkpoint",
            {"training_job_id", "checkpoint_name"},
            set(),
        )
        _string(checkpoint["training_job_id"], f"{where}...checkpoint.training_job_id")
        _string(checkpoint["checkpoint_name"], f"{where}...checkpoint.checkpoint_name")
    stack = _check_keys(
        request["inference_stack"],
        "request.inference_stack",
        {"stack_type", "environment_variables"},
        set(),
    )
    if stack["stack_type"] != "VLLM":
        raise _Invalid("request.inference_stack.stack_type: expected VLLM")
    variables = stack["environment_variables"]
    if not isinstance(variables, list):
        raise _Invalid("request.inference_stack.environment_variables: expected a list")
    for index, variable in enumerate(variables):
        where = f"request.inference_stack.environment_variables[{index}]"
        _check_keys(variable, where, {"name", "value", "is_secret_reference"}, set())
        if not isinstance(variable["name"], str) or not _ENV_NAME.match(variable["name"]):
            raise _Invalid(f"{where}.name: expected an environment variable name")
        if not isinstance(variable["value"], str):
            raise _Invalid(f"{where}.value: expected a string")
        if not isinstance(variable["is_secret_reference"], bool):
            raise _Invalid(f"{where}.is_secret_reference: expected a boolean")
    if not isinstance(request["instance_type_id"], str):
        raise _Invalid("request.instance_type_id: expected a string")
    if request["instance_type_id"] not in _INSTANCES_BY_ID:
        raise _Invalid(
            f"request.instance_type_id: unknown instance type {request['instance_type_id']!r}"
        )
    if not isinstance(request["dry_run"], bool):
        raise _Invalid("request.dry_run: expected a boolean")
    return dict(request)


def _normalized(query: str) -> str:
    return " ".join(query.split())


class DeploymentStore:
    """Models and deployments of one sandbox; every method takes the state's lock."""

    def __init__(self, state: TrainingSide) -> None:
        self.state = state
        self._models: dict[str, Model] = {}
        self._models_by_name: dict[str, str] = {}
        self._deployments: dict[str, Deployment] = {}
        # The deployment clock ticks with the job clock unless configured apart.
        self.deploy_step_seconds: float | None = state.config.step_seconds
        self.fail_new_deployments: str | None = None
        # Inference pacing (for time-to-first-byte measurements): before the first
        # streamed chunk (and before a whole answer), and between streamed chunks.
        self.first_token_ms = 0.0
        self.token_ms = 0.0
        self.mutations = 0

    def reset(self) -> None:
        with self.state._lock:
            self._models.clear()
            self._models_by_name.clear()
            self._deployments.clear()
            self.deploy_step_seconds = self.state.config.step_seconds
            self.fail_new_deployments = None
            self.first_token_ms = 0.0
            self.token_ms = 0.0
            self.mutations = 0

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        """``deploy_step_seconds`` (null = only forced moves) and ``fail_new_deployments``."""
        with self.state._lock:
            if "deploy_step_seconds" in changes:
                value = changes["deploy_step_seconds"]
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, int | float) or value < 0
                ):
                    raise SandboxApiError(
                        400, "VALIDATION_ERROR", "deploy_step_seconds: expected null or >= 0"
                    )
                now = self.state.now_us()
                self._advance_all(now)
                for deployment in self._deployments.values():
                    deployment.anchor_us = now
                self.deploy_step_seconds = value
            if "fail_new_deployments" in changes:
                message = changes["fail_new_deployments"]
                if message is not None and (not isinstance(message, str) or not message):
                    raise SandboxApiError(
                        400, "VALIDATION_ERROR", "fail_new_deployments: expected null or a message"
                    )
                self.fail_new_deployments = message
            for name in ("first_token_ms", "token_ms"):
                if name in changes:
                    value = changes[name]
                    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                        raise SandboxApiError(400, "VALIDATION_ERROR", f"{name}: expected >= 0")
                    setattr(self, name, float(value))
            return {
                "deploy_step_seconds": self.deploy_step_seconds,
                "fail_new_deployments": self.fail_new_deployments,
                "first_token_ms": self.first_token_ms,
                "token_ms": self.token_ms,
            }

    # ------------------------------------------------------------------ clock

    def _advance(self, deployment: Deployment, now: int) -> None:
        step = self.deploy_step_seconds
        if not step:
            return
        step_us = max(1, round(step * _US))
        while deployment.anchor_us + step_us <= now:
            at = deployment.anchor_us + step_us
            if deployment.status == BUILDING and deployment.fail_message is not None:
                deployment.status = BUILD_FAILED
            elif deployment.status in _PATH[:-1]:
                deployment.status = _PATH[_PATH.index(deployment.status) + 1]
            else:
                return
            deployment.anchor_us = at

    def _advance_all(self, now: int) -> None:
        for deployment in self._deployments.values():
            self._advance(deployment, now)

    # -------------------------------------------------------------- rendering

    def _deployment_json(self, deployment: Deployment) -> dict[str, Any]:

        model = self._models[deployment.model_id]
        active = deployment.status == ACTIVE
        return {
            "id": deployment.id,
            "created_at": rfc3339(deployment.created_us),
            "name": deployment.name,
            "model_id": model.id,
            "is_production": False,
            "is_development": False,
            "status": deployment.status,
            "active_replica_count": 1 if active else 0,
            # Null until the deployment has finished deploying (per the spec).
            "autoscaling_settings": {
                "min_replica": 0,
                "max_replica": 1,
                "autoscaling_window": 60,
                "scale_down_delay": 900,
                "concurrency_target": 1,
                "target_utilization_percentage": 70,
            }
            if active or deployment.status == INACTIVE
            else None,
            "instance_type_name": deployment.instance_type["name"],
            "environment": None,
            "labels": None,
            "region": None,
            "request_backpressure_settings": {"policy": None},
        }

    def _model_json(self, model: Model) -> dict[str, Any]:

        latest = self._deployments[model.deployment_ids[-1]] if model.deployment_ids else None
        return {
            "id": model.id,
            "created_at": rfc3339(model.created_us),
            "name": model.name,
            "deployments_count": len(model.deployment_ids),
            "production_deployment_id": None,
            "development_deployment_id": None,
            "instance_type_name": latest.instance_type["name"] if latest else "",
            "team_name": "Sandbox team",
        }

    def _model_or_404(self, model_id: str) -> Model:
        model = self._models.get(model_id)
        if model is None:
            raise SandboxApiError(404, "NOT_FOUND", f"model {model_id!r} was not found")
        return model

    def _deployment_or_404(self, model_id: str, deployment_id: str) -> Deployment:
        self._model_or_404(model_id)
        deployment = self._deployments.get(deployment_id)
        if deployment is None or deployment.model_id != model_id:
            raise SandboxApiError(
                404,
                "NOT_FOUND",
                f"deployment {deployment_id!r} of model {model_id!r} was not found",
            )
        return deployment

    # ---------------------------------------------------------------- GraphQL

    def graphql(self, body: Any) -> dict[str, Any]:
        """Answer one GraphQL request (always HTTP 200, errors inside)."""
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return _graphql_error("expected a JSON object with a 'query' string")
        query = _normalized(body["query"])
        variables = body.get("variables") or {}
        if "listed_instances" in query and query.startswith("query Instances"):
            return {"data": {"listedInstances": [dict(item) for item in INSTANCE_TYPES]}}
        if (
            query.startswith("mutation ($request: CreateModelVersionFromInferenceTemplateRequest!)")
            and "create_model_version_from_inference_template(request: $request)" in query
        ):
            if not isinstance(variables, dict) or "request" not in variables:
                return _graphql_error("variable $request of required type was not provided")
            try:
                request = validate_inference_template_request(variables["request"])
                result = self._create(request)
            except _Invalid as error:
                return _graphql_error(str(error))
            except SandboxApiError as error:
                return _graphql_error(error.message, error.code)
            return {"data": {"create_model_version_from_inference_template": result}}
        return _graphql_error(
            "the sandbox serves only the operations truss sends to deploy training checkpoints",
            "UNSUPPORTED_OPERATION",
        )

    def _create(self, request: dict[str, Any]) -> dict[str, Any]:
        state = self.state
        with state._lock:
            for source in request["weights_sources"]:
                checkpoint = source["b10_training_checkpoint_weights_source"]["checkpoint"]
                job = state._jobs.get(checkpoint["training_job_id"])
                if job is None:
                    raise SandboxApiError(
                        404,
                        "RESOURCE_NOT_FOUND",
                        f"training job {checkpoint['training_job_id']!r} was not found",
                    )
                if not any(
                    item["checkpoint_id"] == checkpoint["checkpoint_name"]
                    for item in job.checkpoints
                ):
                    raise SandboxApiError(
                        404,
                        "RESOURCE_NOT_FOUND",
                        f"checkpoint {checkpoint['checkpoint_name']!r} was not found in "
                        f"training job {job.id!r}",
                    )
            name = request["metadata"]["oracle_name"]
            instance = _INSTANCES_BY_ID[request["instance_type_id"]]
            truss_config = json.dumps(
                {
                    "model_name": name,
                    "resources": {
                        "accelerator": f"{instance['gpuType']}:{instance['gpuCount']}"
                        if instance["gpuType"]
                        else None,
                        "instance_type": instance["name"],
                    },
                    "secrets": {
                        v["value"]: None
                        for v in request["inference_stack"]["environment_variables"]
                        if v["is_secret_reference"]
                    },
                    "environment_variables": {
                        v["name"]: v["value"]
                        for v in request["inference_stack"]["environment_variables"]
                        if not v["is_secret_reference"]
                    },
                    "training_checkpoints": {
                        "artifact_references": [
                            {
                                "training_job_id": s["b10_training_checkpoint_weights_source"][
                                    "checkpoint"
                                ]["training_job_id"],
                                "paths": [
                                    "rank-0/"
                                    + s["b10_training_checkpoint_weights_source"]["checkpoint"][
                                        "checkpoint_name"
                                    ]
                                    + "/"
                                ],
                            }
                            for s in request["weights_sources"]
                        ]
                    },
                }
            )
            if request["dry_run"]:
                return {"model_version": None, "truss_config": truss_config}
            self.mutations += 1
            now = state.now_us()
            model_id = self._models_by_name.get(name)
            if model_id is None:
                model = Model(id=state._new_id(self._models), name=name, created_us=now)
                self._models[model.id] = model
                self._models_by_name[name] = model.id
            else:
                model = self._models[model_id]
            deployment = Deployment(
                id=state._new_id(self._deployments),
                model_id=model.id,
                name=f"deployment-{len(model.deployment_ids) + 1}",
                created_us=now,
                status=BUILDING,
                anchor_us=now,
                instance_type={"id": instance["id"], "name": instance["name"]},
                request=request,
                fail_message=self.fail_new_deployments,
            )
            self._deployments[deployment.id] = deployment
            model.deployment_ids.append(deployment.id)
            return {
                "model_version": {
                    "id": deployment.id,
                    "name": deployment.name,
                    "model_id": model.id,
                },
                "truss_config": truss_config,
            }

    # ------------------------------------------------------------------- REST

    def list_models(self, name: str | None) -> dict[str, Any]:
        with self.state._lock:
            models = list(self._models.values())
            if name is not None:
                models = [model for model in models if model.name == name]
            return {"models": [self._model_json(model) for model in models]}

    def get_model(self, model_id: str) -> dict[str, Any]:
        with self.state._lock:
            return self._model_json(self._model_or_404(model_id))

    def list_deployments(self, model_id: str, name: str | None) -> dict[str, Any]:
        with self.state._lock:
            self._advance_all(self.state.now_us())
            model = self._model_or_404(model_id)
            deployments = [self._deployments[d] for d in model.deployment_ids]
            if name is not None:
                deployments = [d for d in deployments if d.name == name]
            return {"deployments": [self._deployment_json(d) for d in deployments]}

    def get_deployment(self, model_id: str, deployment_id: str) -> dict[str, Any]:
        with self.state._lock:
            self._advance_all(self.state.now_us())
            return self._deployment_json(self._deployment_or_404(model_id, deployment_id))

    def update_deployment(self, model_id: str, deployment_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise SandboxApiError(400, "VALIDATION_ERROR", "body: expected a JSON object")
        unknown = sorted(body.keys() - {"name"})
        if unknown:
            raise SandboxApiError(400, "VALIDATION_ERROR", f"body.{unknown[0]}: unknown field")
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or not _DEPLOYMENT_NAME.match(name)):
            raise SandboxApiError(
                400,
                "VALIDATION_ERROR",
                "body.name: 1-255 of alphanumeric characters, hyphens, underscores and periods",
            )
        with self.state._lock:
            self._advance_all(self.state.now_us())
            deployment = self._deployment_or_404(model_id, deployment_id)
            if name is not None:
                model = self._models[model_id]
                # Names are unique among a model's deployments.
                for other_id in model.deployment_ids:
                    other = self._deployments[other_id]
                    if other.id != deployment.id and other.name == name:
                        raise SandboxApiError(
                            409,
                            "CONFLICT",
                            f"a deployment named {name!r} already exists for this model",
                        )
                deployment.name = name
            return self._deployment_json(deployment)

    def delete_deployment(self, model_id: str, deployment_id: str) -> dict[str, Any]:
        with self.state._lock:
            deployment = self._deployment_or_404(model_id, deployment_id)
            del self._deployments[deployment.id]
            self._models[model_id].deployment_ids.remove(deployment.id)
            return {"id": deployment.id, "deleted": True, "model_id": model_id}

    def deactivate(self, model_id: str, deployment_id: str) -> dict[str, Any]:
        with self.state._lock:
            self._advance_all(self.state.now_us())
            deployment = self._deployment_or_404(model_id, deployment_id)
            deployment.status = INACTIVE
            deployment.anchor_us = self.state.now_us()
            return {"success": True}

    def activate(self, model_id: str, deployment_id: str) -> dict[str, Any]:
        """An inactive deployment comes back up (through DEPLOYING, on the clock)."""
        with self.state._lock:
            self._advance_all(self.state.now_us())
            deployment = self._deployment_or_404(model_id, deployment_id)
            if deployment.status == INACTIVE:
                deployment.status = DEPLOYING
                deployment.anchor_us = self.state.now_us()
            return {"success": True}

    def download(self, project_id: str, job_id: str) -> dict[str, Any]:
        state = self.state
        with state._lock:
            job = state._job_or_404(project_id, job_id)
            artifacts = list(job.request.get("runtime", {}).get("artifacts") or [])
        urls = [state.s3.presigned_get(a["s3_bucket"], a["s3_key"]) for a in artifacts]
        return {"artifact_presigned_urls": urls}

    # -------------------------------------------------------------- inference

    def chat(self, model_id: str, deployment_id: str, body: Any) -> dict[str, Any] | EventStream:
        """A ``chat.completion``; with ``stream: true``, ``chat.completion.chunk`` events
        (one per word, then ``[DONE]``), paced by ``first_token_ms`` and ``token_ms``."""
        answer = self._chat(model_id, deployment_id, body)
        first, gap = self.first_token_ms / 1000, self.token_ms / 1000
        if body.get("stream") is not True:
            time.sleep(first)
            return answer
        return EventStream(_chunks(answer, first, gap))

    def _chat(self, model_id: str, deployment_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise SandboxApiError(400, "VALIDATION_ERROR", "body.messages: expected a list")
        question = ""
        for message in body["messages"]:
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise SandboxApiError(
                    400, "VALIDATION_ERROR", "body.messages[]: expected {role, content}"
                )
            if message.get("role") == "user":
                question = message["content"]
        with self.state._lock:
            self._advance_all(self.state.now_us())
            deployment = self._deployment_or_404(model_id, deployment_id)
            if deployment.status != ACTIVE:
                raise SandboxApiError(
                    400,
                    "MODEL_NOT_READY",
                    f"deployment {deployment_id!r} is {deployment.status}, not ACTIVE",
                )
            model = self._models[model_id]
            checkpoint = deployment.request["weights_sources"][0][
                "b10_training_checkpoint_weights_source"
            ]["checkpoint"]
            created = self.state.now_us() // _US
        answer = (
            f"Hello from {model.name} (LoRA {checkpoint['checkpoint_name']} of training job "
            f"{checkpoint['training_job_id']}). You said: {question}"
        )
        words = len(question.split())
        return {
            "id": f"chatcmpl-{deployment_id}-{words}",
            "object": "chat.completion",
            "created": created,
            "model": str(body.get("model") or model.name),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": words,
                "completion_tokens": len(answer.split()),
                "total_tokens": words + len(answer.split()),
            },
        }

    # ---------------------------------------------------------------- control

    def seed_models(self, body: Any) -> dict[str, Any]:
        """``{"count": n, "deployments": 0 | 1}``: n models of someone else's (named
        ``seed-model-<i>``), each with that many inactive deployments: a busy workspace."""
        body = body or {}
        count, per_model = body.get("count", 1), body.get("deployments", 1)
        for value in (count, per_model):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000:
                raise SandboxApiError(400, "VALIDATION_ERROR", "count, deployments: 0-10000")
        with self.state._lock:
            state = self.state
            made = []
            for _ in range(count):
                now = state.now_us()
                model = Model(
                    id=state._new_id(self._models),
                    name=f"seed-model-{len(self._models)}",
                    created_us=now,
                )
                self._models[model.id] = model
                self._models_by_name[model.name] = model.id
                for number in range(per_model):
                    deployment = Deployment(
                        id=state._new_id(self._deployments),
                        model_id=model.id,
                        name=f"deployment-{number + 1}",
                        created_us=now,
                        status="INACTIVE",
                        anchor_us=now,
                        instance_type={
                            "id": INSTANCE_TYPES[0]["id"],
                            "name": INSTANCE_TYPES[0]["name"],
                        },
                        request={},
                    )
                    self._deployments[deployment.id] = deployment
                    model.deployment_ids.append(deployment.id)
                made.append(model.id)
            return {"model_ids": made}

    def force_status(self, deployment_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("status") not in STATUSES:
            raise SandboxApiError(
                400, "VALIDATION_ERROR", "body.status: expected a DeploymentStatusV1 value"
            )
        with self.state._lock:
            deployment = self._deployments.get(deployment_id)
            if deployment is None:
                raise SandboxApiError(404, "NOT_FOUND", f"deployment {deployment_id!r} not found")
            deployment.status = body["status"]
            deployment.anchor_us = self.state.now_us()
            return self._deployment_json(deployment)

    def all(self) -> dict[str, Any]:
        with self.state._lock:
            self._advance_all(self.state.now_us())
            return {
                "models": [self._model_json(m) for m in self._models.values()],
                "deployments": [
                    {**self._deployment_json(d), "request": d.request}
                    for d in self._deployments.values()
                ],
                "mutations": self.mutations,
            }


class EventStream:
    """A ``text/event-stream`` answer: the server sends each chunk as it is made."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks


def _chunks(answer: dict[str, Any], first: float, gap: float) -> Iterator[bytes]:
    base = {
        "id": answer["id"],
        "object": "chat.completion.chunk",
        "created": answer["created"],
        "model": answer["model"],
    }

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(chunk)}\n\n".encode()

    time.sleep(first)
    yield event({"role": "assistant", "content": ""})
    words = answer["choices"][0]["message"]["content"].split(" ")
    for index, word in enumerate(words):
        if gap:
            time.sleep(gap)
        yield event({"content": word if index == 0 else f" {word}"})
    yield event({}, "stop")
    yield b"data: [DONE]\n\n"


def _name_query(request: Any) -> str | None:
    value = request.args.get("name")
    return str(value) if value is not None else None


def api_handlers(store: DeploymentStore, json_body: Any, reply: Any) -> dict[str, Any]:
    """The ``/v1/…``, ``/graphql/`` and inference handlers, for the server's table."""
    return {
        "graphql": lambda r, p: reply(200, store.graphql(json_body(r))),
        "list_models": lambda r, p: reply(200, store.list_models(_name_query(r))),
        "get_model": lambda r, p: reply(200, store.get_model(p["model_id"])),
        "list_deployments": lambda r, p: reply(
            200, store.list_deployments(p["model_id"], _name_query(r))
        ),
        "get_deployment": lambda r, p: reply(
            200, store.get_deployment(p["model_id"], p["deployment_id"])
        ),
        "update_deployment": lambda r, p: reply(
            200, store.update_deployment(p["model_id"], p["deployment_id"], json_body(r))
        ),
        "delete_deployment": lambda r, p: reply(
            200, store.delete_deployment(p["model_id"], p["deployment_id"])
        ),
        "deactivate_deployment": lambda r, p: reply(
            200, store.deactivate(p["model_id"], p["deployment_id"])
        ),
        "activate_deployment": lambda r, p: reply(
            200, store.activate(p["model_id"], p["deployment_id"])
        ),
        "download_job": lambda r, p: reply(200, store.download(p["project_id"], p["job_id"])),
        "chat_completions": lambda r, p: reply(
            200, store.chat(p["model_id"], p["deployment_id"], json_body(r))
        ),
    }


def control_handlers(store: DeploymentStore, json_body: Any, reply: Any) -> dict[str, Any]:
    return {
        "all_deployments": lambda r, p: reply(200, store.all()),
        "configure_deployments": lambda r, p: reply(200, store.configure(json_body(r) or {})),
        "seed_models": lambda r, p: reply(200, store.seed_models(json_body(r))),
        "force_deployment_status": lambda r, p: reply(
            200, store.force_status(p["deployment_id"], json_body(r))
        ),
    }
